"""Which driver errors mean "the transaction was rolled back whole, nothing written"
(``db.aborted``), and the jittered pauses between the tries of such a transaction. No
database: PyMySQL's own error objects."""

from __future__ import annotations

import pymysql
import sqlalchemy as sa
from driver_errors import DEADLOCK, LOCK_WAIT, LOST, NOT_READY

from downstream_node.ledger.db import aborted
from downstream_node.ledger.store import AppendFailed, Backoff


def test_only_errors_that_roll_the_whole_transaction_back_count_as_aborted() -> None:
    assert aborted(DEADLOCK) == 1213
    assert aborted(NOT_READY) == 1047
    wrapped = sa.exc.OperationalError("COMMIT", {}, DEADLOCK)
    assert aborted(wrapped) == 1213
    try:
        try:
            raise wrapped
        except sa.exc.OperationalError as exc:
            raise AppendFailed(exc, before_commit=True) from exc
    except AppendFailed as failed:
        assert aborted(failed) == 1213  # found through the cause
    assert aborted(LOCK_WAIT) is None  # only the statement was rolled back
    assert aborted(LOST) is None  # outcome unknown
    assert aborted(ValueError("1213")) is None
    assert aborted(pymysql.err.IntegrityError(1062, "Duplicate entry")) is None


def test_backoff_jitters_between_half_and_all_of_each_pause() -> None:
    top = Backoff(tries=6, first=0.005, most=0.05, random=lambda: 0.999999)
    assert [round(p, 4) for p in top.pauses()] == [0.005, 0.01, 0.02, 0.04, 0.05]
