"""Every fold decides every event type: it handles it or ignores it on purpose.

The live projector and the rebuild share one fold (``projections.fold.Fold``), the
auditors another (``audit.replay.Replay``), and the projection oracle a third. An event type
added to the registry without a decision in each fails here, naming the fold and the type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import projection_oracle as oracle
import pytest

from downstream_node.audit.redundancy import RedundancyReplay
from downstream_node.audit.replay import AUDITED, Replay
from downstream_node.domain import events as ev
from downstream_node.domain.errors import UnknownEvent
from downstream_node.domain.folds import EventFold, handles, ignoring, undecided
from downstream_node.projections.fold import HANDLED, Fold
from downstream_node.projections.rebuild import ITEMS

FOLDS: dict[str, Any] = {
    "live projector and rebuild (projections.fold.Fold)": Fold,
    "audit replay (audit.replay.Replay)": Replay,
    "redundancy audit (audit.redundancy.RedundancyReplay)": RedundancyReplay,
    "projection oracle (tests/projection_oracle.py)": oracle,
}


def handled(fold: Any) -> frozenset[str]:
    return fold.HANDLED if isinstance(fold, type) else frozenset(fold.HANDLERS)


@pytest.mark.parametrize("name", FOLDS)
def test_every_registered_event_type_is_handled_or_ignored_on_purpose(name: str) -> None:
    fold = FOLDS[name]
    missing = undecided(handled(fold), fold.IGNORED)
    assert not missing, f"{name} neither handles nor ignores {missing}: decide it there"
    assert not handled(fold) & fold.IGNORED


@pytest.fixture
def new_event_type() -> Iterator[type[ev.DomainEvent]]:
    @dataclasses.dataclass(frozen=True)
    class ReplicaAudited(ev.DomainEvent):
        SCHEMA: ClassVar[int] = 1
        contract_id: str

    ev.event(ReplicaAudited)
    try:
        yield ReplicaAudited
    finally:
        del ev.REGISTRY["ReplicaAudited"]


def test_an_event_type_registered_without_a_decision_is_named_for_every_fold(
    new_event_type: type[ev.DomainEvent],
) -> None:
    for name, fold in FOLDS.items():
        assert undecided(handled(fold), fold.IGNORED) == ["ReplicaAudited"], name


def test_the_handled_types_are_the_handler_table_and_what_the_readers_decode() -> None:
    assert HANDLED == Fold.HANDLED == frozenset(Fold.HANDLERS)

    # A handler added with the decorator alone is handled, live and in a rebuild.
    class Extended(Fold):
        IGNORED = frozenset()

        @handles(ev.HeartbeatConfigured)
        def _configured(self, p: dict[str, Any], item: Any) -> None:
            pass

    assert "HeartbeatConfigured" in Extended.HANDLED
    # The rebuild and the audit fetch payloads for exactly what their fold handles.
    assert f"'{sorted(Fold.HANDLED)[0]}'" in ITEMS._sql
    for kind in ev.REGISTRY:
        assert (f"'{kind}'" in ITEMS._sql) == (kind in Fold.HANDLED), kind
        assert (f"'{kind}'" in AUDITED._sql) == (kind in Replay.HANDLED), kind


def test_a_type_both_handled_and_ignored_is_refused_when_the_fold_is_defined() -> None:
    with pytest.raises(TypeError, match="both handles and ignores"):

        class Confused(EventFold):
            IGNORED = ignoring(ev.TokenCreated)

            @handles(ev.TokenCreated)
            def _created(self, p: dict[str, Any]) -> None:
                pass


def test_two_handlers_for_one_type_are_refused() -> None:
    with pytest.raises(TypeError, match="two handlers"):

        class Twice(EventFold):
            @handles(ev.TokenCreated)
            def _one(self, p: dict[str, Any]) -> None:
                pass

            @handles(ev.TokenCreated)
            def _other(self, p: dict[str, Any]) -> None:
                pass


def test_an_unknown_type_or_a_newer_schema_is_refused_by_one_check() -> None:
    assert ev.known("TokenCreated", 1) is ev.TokenCreated
    with pytest.raises(UnknownEvent, match="unknown event type 'TokenMinted'"):
        ev.known("TokenMinted", 1)
    with pytest.raises(UnknownEvent, match="schema 2 is newer"):
        ev.known("TokenCreated", 2)
