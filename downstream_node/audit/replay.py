"""The auditor's fold: stream events in position order into per-token and per-contract figures.

It reads only the ``events`` table (never a projection), keeps state per token and contract,
not per event, and mirrors the live projection's uptime rules so both agree to the microsecond.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy.engine import Engine

from ..domain import events as ev
from ..domain.errors import UnknownEvent
from ..domain.folds import EventFold, handles, ignoring
from ..domain.uptime import WindowedCoverage, overlap
from ..ledger.reader import EventRange
from .reputation import Reputation, ScoringParams

HOUR = 3600 * 1_000_000


class Row(NamedTuple):
    """One event as the auditor needs it: payload is ``None`` for irrelevant types."""

    position: int
    event_type: str
    occurred_at: int  # UTC microseconds
    payload: dict | None


def stream_events(
    engine: Engine,
    *,
    after: int = 0,
    until: int,
    page: int = 5000,
    source: EventRange | None = None,
) -> Iterator[Row]:
    """Events ``after < position <= until`` in order, fetched in pages by position.

    ``source`` names the payloads to decode (another fold's types); default: this replay's.

    Each page is its own short read transaction, so neither SQLite's WAL nor MySQL's undo log
    is held open by a long audit; paging by position keeps memory constant.
    """
    known: set[tuple[str, int]] = set()
    loads = json.loads
    for rows in (source or AUDITED).pages(engine, after, until, page):
        for position, event_type, schema_version, occurred_at, text in rows:
            if (event_type, schema_version) not in known:
                # Refuse what this auditor cannot read rather than report figures that miss it.
                try:
                    ev.known(event_type, schema_version)
                except UnknownEvent as exc:
                    raise UnknownEvent(f"{exc} at position {position}") from None
                known.add((event_type, schema_version))
            try:
                decoded = None if text is None else loads(text)
            except ValueError as exc:
                raise ValueError(f"unreadable payload at position {position}: {exc}") from None
            yield Row(position, event_type, occurred_at, decoded)


# -- figures ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ContractStats:
    contract_id: str
    token_hash: str
    file_hash: str
    started_at: int
    interval: int
    # As the projection keeps it: ``due`` while unanswered, ``due + interval`` once answered.
    expiration: int
    reach: int  # the furthest expiration: online over [started_at, min(reach, ended_at))
    ended_at: int | None = None
    end_reason: str | None = None
    challenges: int = 0
    passed: int = 0
    failed: int = 0
    rejected: int = 0
    missed: int = 0
    # The current challenge, for the online score: when it was issued, whether a valid proof
    # arrived (the protocol's ``answered``) and whether it was counted (any answer, or lapsed).
    challenge_at: int = 0
    answered: bool = False
    settled: bool = False


@dataclass(slots=True)
class TokenStats:
    token_hash: str
    address: str | None
    created_at: int | None
    coverage: WindowedCoverage
    reputation: Reputation
    deleted_at: int | None = None
    challenges: int = 0
    passed: int = 0
    failed: int = 0
    rejected: int = 0
    missed: int = 0
    contracts_assigned: int = 0  # every assignment, as the projection counts
    live: dict[str, ContractStats] = field(default_factory=dict)  # not ended


class BucketedCoverage(WindowedCoverage):
    """Also spreads every final segment over fixed time buckets, for the charts."""

    def __init__(self, since: int | None, until: int | None, buckets: Buckets) -> None:
        super().__init__(since=since, until=until)
        self.buckets = buckets
        self.online_by_bucket: dict[int, int] = {}

    def segment_closed(self, start: int, end: int) -> None:
        super().segment_closed(start, end)
        self.buckets.spread(self.online_by_bucket, start, end)


@dataclass(frozen=True)
class Buckets:
    """Fixed-width time buckets ``[origin + k*width, origin + (k+1)*width)`` inside a window."""

    origin: int
    width: int
    since: int | None
    until: int | None

    def index(self, t: int) -> int:
        return (t - self.origin) // self.width

    def start(self, k: int) -> int:
        return self.origin + k * self.width

    def spread(self, into: dict[int, int], start: int, end: int) -> None:
        """Add the measure of ``[start, end)`` (clipped to the window) bucket by bucket."""
        start = max(start, self.since) if self.since is not None else start
        end = min(end, self.until) if self.until is not None else end
        if end <= start:
            return
        k = self.index(start)
        while True:
            lo, hi = self.start(k), self.start(k + 1)
            part = min(end, hi) - max(start, lo)
            if part > 0:
                into[k] = into.get(k, 0) + part
            if hi >= end:
                return
            k += 1


NICE_WIDTHS_S = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400)


def choose_buckets(start: int, end: int, since: int | None, until: int | None) -> Buckets:
    """The smallest round width giving at most ~96 buckets over ``[start, end)``."""
    span = max(1, end - start)
    width = next(
        (w * 1_000_000 for w in NICE_WIDTHS_S if span / (w * 1_000_000) <= 96),
        NICE_WIDTHS_S[-1] * 1_000_000,
    )
    origin = start - start % width  # round to the width so buckets fall on round times
    return Buckets(origin, width, since, until)


@dataclass(slots=True)
class Series:
    """What the charts need: per-bucket answers (all tokens) and per-token online time."""

    buckets: Buckets
    passed: dict[int, int] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    missed: dict[int, int] = field(default_factory=dict)

    def count(self, into: dict[int, int], t: int) -> None:
        k = self.buckets.index(t)
        into[k] = into.get(k, 0) + 1


class Replay(EventFold):
    """Folds events into figures. Feed it with ``apply`` in position order, then read it.

    The window ``[since, until)`` clips time and selects which events count; ``until`` also
    bounds the reputation (it is the score as of then). ``tokens`` limits the audit to those
    token hashes. ``buckets`` turns on the per-bucket series used by the HTML report.
    """

    # No uptime or reputation figure moves with these: the node's key, the crowdsale list, a
    # file's terms, and an encoding (the contract and its first challenge begin at its
    # ContractAssigned, the next event of the same append).
    IGNORED = ignoring(
        ev.HeartbeatConfigured,
        ev.LogKeyConfigured,
        ev.AddressWhitelisted,
        ev.FileAdded,
        ev.ChunkEncoded,
    )

    def __init__(
        self,
        *,
        since: int | None = None,
        until: int | None = None,
        tokens: Iterable[str] | None = None,
        params: ScoringParams | None = None,
        buckets: Buckets | None = None,
    ) -> None:
        self.since = since
        self.until = until
        self.only = frozenset(tokens) if tokens is not None else None
        self.params = params or ScoringParams()
        self.series = Series(buckets) if buckets is not None else None
        self.tokens: dict[str, TokenStats] = {}
        self.contracts: dict[str, ContractStats] = {}
        self.live_by_file: dict[str, dict[str, ContractStats]] = {}
        self.position = 0
        self.events = 0
        self.last_time: int | None = None
        self.first_time: int | None = None
        self.unmatched = 0  # events about contracts or tokens this replay never saw begin
        self._handlers: dict[str, Callable[[dict, int], None]] = self.bound_handlers()

    # -- feeding ------------------------------------------------------------------------------

    def run(self, rows: Iterable[Row], progress: Callable[[int], None] | None = None) -> Replay:
        handlers = self._handlers
        step = 0
        for row in rows:
            # apply(), inlined: this loop runs once per event of the ledger.
            position, event_type, t, payload = row
            self.position = position
            self.events += 1
            self.last_time = t
            if self.first_time is None:
                self.first_time = t
            if payload is not None:
                handlers[event_type](payload, t)
            step += 1
            if progress is not None and step == 5000:
                progress(step)
                step = 0
        if progress is not None and step:
            progress(step)
        return self

    def apply(self, row: Row) -> None:
        self.run((row,))

    def _counts(self, t: int) -> bool:
        """Whether an event at ``t`` is inside the window."""
        return (self.since is None or t >= self.since) and (self.until is None or t < self.until)

    def _scores(self, t: int) -> bool:
        """Whether an event at ``t`` moves the reputation (everything before ``until``)."""
        return self.until is None or t < self.until

    # -- handlers (each mirrors projections/projector.py for uptime and counters) ----------------

    @handles(ev.TokenCreated)
    def _token_created(self, p: dict, t: int) -> None:
        token_hash = p["token_hash"]
        if self.only is not None and token_hash not in self.only:
            return
        self._token(token_hash, p.get("address"), t)

    def _token(
        self, token_hash: str, address: str | None = None, t: int | None = None
    ) -> TokenStats:
        found = self.tokens.get(token_hash)
        if found is None:
            if self.series is not None:
                coverage: WindowedCoverage = BucketedCoverage(
                    self.since, self.until, self.series.buckets
                )
            else:
                coverage = WindowedCoverage(since=self.since, until=self.until)
            found = self.tokens[token_hash] = TokenStats(
                token_hash, address, t, coverage, Reputation(self.params)
            )
        return found

    @handles(ev.TokenDeleted)
    def _token_deleted(self, p: dict, t: int) -> None:
        token = self.tokens.get(p["token_hash"])
        if token is None:
            return
        token.deleted_at = t
        for contract in list(token.live.values()):
            self._end(contract, t, "token_deleted")

    @handles(ev.FileRemoved)
    def _file_removed(self, p: dict, t: int) -> None:
        for contract in list(self.live_by_file.get(p["file_hash"], {}).values()):
            self._end(contract, t, "file_removed")

    @handles(ev.ContractAssigned)
    def _assigned(self, p: dict, t: int) -> None:
        token_hash = p["token_hash"]
        if self.only is not None and token_hash not in self.only:
            return
        token = self.tokens.get(token_hash)
        if token is None:
            self.unmatched += 1  # the projection would fail here; the auditor carries on
            token = self._token(token_hash)
        due = p["due"]
        contract = ContractStats(
            p["contract_id"], token_hash, p["file_hash"], t, p["interval"], due, due
        )
        self.contracts[contract.contract_id] = contract
        token.live[contract.contract_id] = contract
        self.live_by_file.setdefault(contract.file_hash, {})[contract.contract_id] = contract
        token.contracts_assigned += 1
        token.coverage.cover(t, due)
        self._issue(token, contract, t)

    def _issue(self, token: TokenStats, contract: ContractStats, t: int) -> None:
        if self._counts(t):
            token.challenges += 1
            contract.challenges += 1
        if contract.challenge_at and not contract.settled:
            # A new challenge comes only after the last was answered; if not, it went unanswered.
            self._settle(token, contract, answered=False)
        contract.challenge_at, contract.answered, contract.settled = t, False, False

    def _settle(self, token: TokenStats, contract: ContractStats, *, answered: bool) -> None:
        contract.settled = True
        if self._scores(contract.challenge_at):
            token.reputation.challenge_settled(contract.challenge_at, answered, self.params)

    def _contract(self, contract_id: str) -> tuple[TokenStats, ContractStats] | None:
        contract = self.contracts.get(contract_id)
        if contract is None:
            if self.only is None:
                self.unmatched += 1
            return None
        return self.tokens[contract.token_hash], contract

    @handles(ev.ChallengeIssued)
    def _challenge(self, p: dict, t: int) -> None:
        found = self._contract(p["contract_id"])
        if found is None:
            return
        token, contract = found
        contract.expiration = p["due"]
        contract.reach = max(contract.reach, contract.expiration)
        self._issue(token, contract, t)

    @handles(ev.AnswerPassed)
    def _passed(self, p: dict, t: int) -> None:
        found = self._contract(p["contract_id"])
        if found is None:
            return
        token, contract = found
        contract.expiration = p["expiration"]
        contract.reach = max(contract.reach, contract.expiration)
        token.coverage.cover(t, contract.expiration)
        contract.answered = True
        self._answer(token, contract, t, passed=True)

    @handles(ev.AnswerFailed)
    def _failed(self, p: dict, t: int) -> None:
        found = self._contract(p["contract_id"])
        if found is not None:
            self._answer(*found, t, passed=False)

    def _answer(self, token: TokenStats, contract: ContractStats, t: int, *, passed: bool) -> None:
        if self._counts(t):
            if passed:
                token.passed += 1
                contract.passed += 1
            else:
                token.failed += 1
                contract.failed += 1
        if self._scores(t):
            token.reputation.audit(passed, self.params)
        if not contract.settled:
            self._settle(token, contract, answered=True)  # online: it answered, right or wrong
        if self.series is not None and self._counts(t):
            self.series.count(self.series.passed if passed else self.series.failed, t)

    @handles(ev.AnswerRejected)
    def _rejected(self, p: dict, t: int) -> None:
        found = self._contract(p["contract_id"])
        if found is None:
            return
        token, contract = found
        if self._counts(t):
            token.rejected += 1
            contract.rejected += 1

    @handles(ev.ContractExpired)
    def _expired(self, p: dict, t: int) -> None:
        found = self._contract(p["contract_id"])
        if found is None:
            return
        token, contract = found
        at = p["expired_at"]
        was_live = contract.ended_at is None
        self._end(contract, at, "expired")
        # Counted even for a contract that had already ended, as the projection counts it. A
        # miss belongs to the time the challenge lapsed, not to when the node noticed.
        if self._counts(at):
            token.missed += 1
            contract.missed += 1
            if self.series is not None:
                self.series.count(self.series.missed, at)
        if self._scores(at):
            token.reputation.audit(False, self.params)
        if was_live:
            self._lapse(token, contract)

    @handles(ev.ContractEnded)
    def _ended(self, p: dict, t: int) -> None:
        found = self._contract(p["contract_id"])
        if found is not None:
            self._end(found[1], t, p["reason"])

    def _end(self, contract: ContractStats, at: int, reason: str) -> None:
        """End a contract at ``at`` and cut the token's coverage, as the projection does."""
        if contract.ended_at is not None:
            return
        contract.ended_at, contract.end_reason = at, reason
        token = self.tokens[contract.token_hash]
        token.live.pop(contract.contract_id, None)
        on_file = self.live_by_file.get(contract.file_hash)
        if on_file is not None:
            on_file.pop(contract.contract_id, None)
            if not on_file:
                del self.live_by_file[contract.file_hash]
        others = max((c.expiration for c in token.live.values()), default=0)
        token.coverage.cut(at, others)
        if reason != "expired" and contract.expiration <= at:
            # Ended after its deadline passed (a challenge still open when the contract ends
            # was not due yet, and is not counted).
            self._lapse(token, contract)

    def _lapse(self, token: TokenStats, contract: ContractStats) -> None:
        """The contract's deadline passed with no further answer: settle what went unanswered.

        Either its open challenge, or, when the last one passed, the next one: it was due one
        interval before the deadline and the farmer never came back for it.
        """
        if contract.answered:
            contract.challenge_at = contract.expiration - contract.interval * 1_000_000
            contract.answered = False
            self._settle(token, contract, answered=False)
        elif contract.challenge_at and not contract.settled:
            self._settle(token, contract, answered=False)

    # -- reading ------------------------------------------------------------------------------

    def held_in_window(self, contract: ContractStats) -> bool:
        """Held at some time in the window: assigned before its end, not ended before it."""
        if self.until is not None and contract.started_at >= self.until:
            return False
        return not (
            self.since is not None
            and contract.ended_at is not None
            and contract.ended_at <= self.since
        )

    def contract_online(self, contract: ContractStats, now: int) -> int:
        end = min(contract.reach, now)
        if contract.ended_at is not None:
            end = min(end, contract.ended_at)
        return overlap(contract.started_at, end, self.since, self.until)

    def contract_total(self, contract: ContractStats, now: int) -> int:
        end = now if contract.ended_at is None else min(now, contract.ended_at)
        return overlap(contract.started_at, end, self.since, self.until)

    def pending_windows(self, token: TokenStats, now: int) -> dict[int, tuple[int, int]]:
        """Unanswered challenges of live contracts whose deadline passed by ``now``.

        No event says so yet (the contract expires when the node next looks at it), but by
        ``now`` the challenge, or the next one the farmer never fetched, went unanswered.
        """
        size = self.params.online_window * 1_000_000
        pending: dict[int, tuple[int, int]] = {}
        for contract in token.live.values():
            if not contract.challenge_at or contract.expiration > now:
                continue
            if contract.answered:
                issued_at = contract.expiration - contract.interval * 1_000_000
            elif not contract.settled:
                issued_at = contract.challenge_at
            else:
                continue  # a wrong answer came: it was online, and that is counted
            if self._scores(issued_at):
                w = issued_at // size
                issued, answered = pending.get(w, (0, 0))
                pending[w] = (issued + 1, answered)
        return pending


# The payloads an audit reads: those of the types the replay handles. The others (ChunkEncoded
# with its large tag and state, HeartbeatConfigured, ...) are read for their position and time.
AUDITED = EventRange(
    ("position", "event_type", "schema_version", "occurred_at", "payload"),
    payloads_of=Replay.HANDLED,
)
