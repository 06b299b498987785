"""Pure decisions: which events a command produces, with no database and no clock."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal

import pytest

from downstream_node.domain import contracts as cn
from downstream_node.domain import events as ev
from downstream_node.domain import tokens as tk
from downstream_node.domain.errors import Refused

S = 1_000_000
ADDRESS = tk.make_address(b"\x07" * 20)


def contract(**changes) -> cn.ContractView:
    base = cn.ContractView(
        contract_id="c1",
        token_hash="t" * 64,
        file_hash="f" * 64,
        heartbeat="Merkle",
        seed="seed",
        tag={},
        state={"index": 1},
        challenge={"index": 0},
        challenge_index=0,
        interval=60,
        started_at=0,
        due=60 * S,
        answered=False,
        expiration=60 * S,
        version=0,
    )
    return replace(base, **changes)


def file_view(**changes) -> cn.FileView:
    base = cn.FileView(
        file_hash="f" * 64,
        size=100,
        redundancy=2,
        interval=60,
        seed="s",
        path=None,
        version=1,
        live_contracts=0,
    )
    return replace(base, **changes)


# -- addresses and tokens -----------------------------------------------------------------------


def test_base58check_addresses() -> None:
    assert tk.is_valid_address("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")  # genesis address
    assert not tk.is_valid_address("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb")  # bad checksum
    assert not tk.is_valid_address("1A1zP1eP5QGefi2DMPTfTL5SLmv7Divf0a")  # 0 not in Base58
    assert not tk.is_valid_address("")
    assert not tk.is_valid_address("1" * 200)
    assert tk.is_valid_address(ADDRESS)


def test_create_token_records_only_the_hash() -> None:
    token = tk.new_token()
    events = tk.decide_create_token(
        ADDRESS,
        token=token,
        ip="1.2.3.4",
        balance=Decimal(10000),
        tokens_for_ip=0,
        policy=tk.TokenPolicy(),
    )
    assert events == [ev.TokenCreated(tk.token_hash(token), ADDRESS, "1.2.3.4")]
    assert token not in repr(events)


@pytest.mark.parametrize(
    ("address", "balance", "per_ip", "status"),
    [
        ("not-an-address", Decimal(10**6), 0, "invalid_address"),
        (ADDRESS, None, 0, "invalid_address"),  # not whitelisted
        (ADDRESS, Decimal(9999), 0, "invalid_address"),  # below the minimum balance
        (ADDRESS, Decimal(10**6), 5, "too_many_tokens"),
    ],
)
def test_create_token_refusals(address, balance, per_ip, status) -> None:
    with pytest.raises(Refused) as refused:
        tk.decide_create_token(
            address,
            token=tk.new_token(),
            ip="1.2.3.4",
            balance=balance,
            tokens_for_ip=per_ip,
            policy=tk.TokenPolicy(),
        )
    assert refused.value.status == status


def test_whitelist_can_be_turned_off() -> None:
    events = tk.decide_create_token(
        ADDRESS,
        token=tk.new_token(),
        ip=None,
        balance=None,
        tokens_for_ip=0,
        policy=tk.TokenPolicy(require_whitelist=False),
    )
    assert isinstance(events[0], ev.TokenCreated)


def test_tokens_compare_by_hash_and_redact() -> None:
    token = tk.new_token()
    assert tk.same_token(token, tk.token_hash(token))
    assert not tk.same_token(tk.new_token(), tk.token_hash(token))
    assert token[8:] not in tk.redact(token)


# -- contract lifecycle -------------------------------------------------------------------------


def test_before_due_nothing_happens_after_due_the_next_challenge() -> None:
    c = contract(answered=True, expiration=120 * S)
    assert not cn.is_due(c, 59 * S) and not cn.is_expired(c, 59 * S)
    assert cn.is_due(c, 60 * S)
    issued = cn.decide_next_challenge(c, {"index": 1}, 1, {"index": 2})
    assert issued == [ev.ChallengeIssued("c1", {"index": 1}, 1, {"index": 2}, 120 * S)]


def test_unanswered_contract_expires_at_due() -> None:
    c = contract()
    assert cn.is_expired(c, 60 * S)
    assert not cn.is_due(c, 60 * S)
    assert cn.decide_expire(c) == [ev.ContractExpired("c1", 60 * S)]


def test_answer_in_time_extends_expiration_by_one_interval() -> None:
    c = contract()
    assert cn.check_answerable(c, 30 * S) == []
    passed = cn.decide_answer(c, {"p": 1}, valid=True)
    assert passed == [ev.AnswerPassed("c1", 0, {"p": 1}, 120 * S)]
    failed = cn.decide_answer(c, {"p": 1}, valid=False)
    assert failed == [ev.AnswerFailed("c1", 0, {"p": 1})]


def test_second_answer_is_refused_and_late_answer_is_recorded() -> None:
    with pytest.raises(Refused) as refused:
        cn.check_answerable(contract(answered=True, expiration=120 * S), 30 * S)
    assert refused.value.status == "already_answered"
    late = cn.check_answerable(contract(), 61 * S)
    assert late == [ev.AnswerRejected("c1", 0, "expired"), ev.ContractExpired("c1", 60 * S)]


def test_remove_needs_a_contract() -> None:
    with pytest.raises(Refused) as refused:
        cn.decide_remove(None)
    assert refused.value.status == "no_hash"
    assert cn.decide_remove(contract()) == [ev.ContractEnded("c1", "removed")]


def test_assignment_honours_redundancy_and_never_twice_per_token() -> None:
    kwargs = dict(
        contract_id="c9",
        token_hash="t" * 64,
        heartbeat="Merkle",
        tag={"t": 1},
        initial_state={"i": 0},
        challenge={"c": 0},
        challenge_index=0,
        state={"i": 1},
        now=5 * S,
    )
    events = cn.decide_assign(file_view(), already_held=False, **kwargs)
    assert [type(e) for e in events] == [ev.ChunkEncoded, ev.ContractAssigned]
    assert events[1].due == 65 * S
    for f, held in ((file_view(live_contracts=2), False), (file_view(), True)):
        with pytest.raises(Refused) as refused:
            cn.decide_assign(f, already_held=held, **kwargs)
        assert refused.value.status == "no_chunks"


def test_events_round_trip_through_their_payload() -> None:
    original = ev.ContractAssigned(
        "c1", "t" * 64, "f" * 64, {"seed": "x", "index": 0}, 0, {"index": 1}, 60, 123
    )
    new = original.to_new(dt.datetime.now(dt.UTC))
    assert new.event_type == "ContractAssigned" and new.schema_version == 1
    assert ev.REGISTRY["ContractAssigned"].from_payload(new.payload) == original
