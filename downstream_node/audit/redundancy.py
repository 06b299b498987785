"""The redundancy audit's fold: how many replicas of each file were online, over time.

A replica is a contract, online as docs/audit.md defines it. Per file the count of replicas
online is a step function, settled lazily up to each event that touches the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..domain import events as ev
from ..domain.folds import EventFold, handles, ignoring
from ..ledger.reader import EventRange
from .replay import Buckets, Row

STATE_KIND = "redundancy"


@dataclass(slots=True)
class Replica:
    contract_id: str
    token_hash: str
    file_hash: str
    start: int
    reach: int  # the furthest expiration: online over [start, reach) until the contract ends


@dataclass(slots=True)
class FileStats:
    """One file's figures, final for every time before ``settled``."""

    file_hash: str
    target: int = 0
    observed_since: int | None = None  # its last FileAdded; None while removed
    settled: int = 0
    live: dict[str, Replica] = field(default_factory=dict)
    seconds_at: dict[int, int] = field(default_factory=dict)  # replicas online -> microseconds
    independent_us: int = 0  # integral of the addresses online (each counted once)
    below_us: int = 0  # against the target in force at the time (a re-added file may change it)
    holders: set[str] = field(default_factory=set)
    # For the charts: per bucket, replica-microseconds and observed microseconds.
    replica_by_bucket: dict[int, int] = field(default_factory=dict)
    observed_by_bucket: dict[int, int] = field(default_factory=dict)

    def copy(self) -> FileStats:
        return FileStats(
            self.file_hash,
            self.target,
            self.observed_since,
            self.settled,
            dict(self.live),
            dict(self.seconds_at),
            self.independent_us,
            self.below_us,
            set(self.holders),
            dict(self.replica_by_bucket),
            dict(self.observed_by_bucket),
        )

    def online_at(self, t: int) -> int:
        """Replicas online at the instant ``t`` (not before the last settle of this file)."""
        if self.observed_since is None:
            return 0
        return sum(1 for r in self.live.values() if r.start <= t < r.reach)


class RedundancyReplay(EventFold):
    """Folds events into per-file replica counts. Feed it with ``run`` in position order.

    Events after ``until`` are skipped: nothing that happens after an instant can change which
    replicas were online before it (a contract's reach only grows when an answer arrives
    before it), so the figures and the count at ``until`` are those of the events up to it.
    """

    # Nothing here moves a replica count: the node's and the log's keys, the crowdsale, an
    # encoding (the contract begins at its ContractAssigned), and answers that change no
    # expiration.
    IGNORED = ignoring(
        ev.HeartbeatConfigured,
        ev.LogKeyConfigured,
        ev.AddressWhitelisted,
        ev.ChunkEncoded,
        ev.AnswerFailed,
        ev.AnswerRejected,
    )

    def __init__(
        self,
        *,
        since: int | None = None,
        until: int | None = None,
        files: Iterable[str] | None = None,
        buckets: Buckets | None = None,
    ) -> None:
        self.since = since
        self.until = until
        self.only = frozenset(files) if files is not None else None
        self.buckets = buckets
        self.files: dict[str, FileStats] = {}
        self.addresses: dict[str, str] = {}  # token hash -> address
        self.by_token: dict[str, dict[str, Replica]] = {}  # live replicas per token
        self.replicas: dict[str, Replica] = {}  # live replicas by contract id
        self.position = 0
        self.events = 0
        self.first_time: int | None = None
        self.last_time: int | None = None
        self.unmatched = 0
        self._handlers: dict[str, Callable[[dict, int], None]] = self.bound_handlers()

    # -- feeding ----------------------------------------------------------------------------

    def run(
        self, rows: Iterable[Row], progress: Callable[[int], None] | None = None
    ) -> RedundancyReplay:
        handlers = self._handlers
        until = self.until
        step = 0
        for position, event_type, t, payload in rows:
            self.position = position
            self.events += 1
            self.last_time = t
            if self.first_time is None:
                self.first_time = t
            if payload is not None and (until is None or t <= until):
                handlers[event_type](payload, t)
            step += 1
            if progress is not None and step == 5000:
                progress(step)
                step = 0
        if progress is not None and step:
            progress(step)
        return self

    def _file(self, file_hash: str) -> FileStats | None:
        if self.only is not None and file_hash not in self.only:
            return None
        found = self.files.get(file_hash)
        if found is None:
            found = self.files[file_hash] = FileStats(file_hash)
        return found

    def settle(self, f: FileStats, t: int) -> None:
        """Add the figures of ``[f.settled, t)``, clipped to the window, and move ``settled``.

        Every live replica began at or before ``settled`` (the file is settled before one is
        added), so within the range the count only falls, at the replicas' reaches.
        """
        lo = f.settled if self.since is None else max(f.settled, self.since)
        hi = t if self.until is None else min(t, self.until)
        if t > f.settled:
            f.settled = t
        if f.observed_since is None or hi <= lo:
            return
        live = sorted(f.live.values(), key=lambda r: r.reach)
        addresses = self.addresses
        start = lo
        i = 0
        while start < hi:
            while i < len(live) and live[i].reach <= start:
                i += 1
            online = live[i:]
            end = min(hi, online[0].reach) if online else hi
            n = len(online)
            span = end - start
            f.seconds_at[n] = f.seconds_at.get(n, 0) + span
            # A token without a TokenCreated counts as an address of its own.
            independent = len({addresses.get(r.token_hash, r.token_hash) for r in online})
            f.independent_us += independent * span
            if n < f.target:
                f.below_us += span
            for r in online:
                f.holders.add(r.token_hash)
            if self.buckets is not None:
                self._spread(f, start, end, n)
            start = end

    def _spread(self, f: FileStats, start: int, end: int, n: int) -> None:
        assert self.buckets is not None
        part: dict[int, int] = {}
        self.buckets.spread(part, start, end)
        for k, us in part.items():
            f.observed_by_bucket[k] = f.observed_by_bucket.get(k, 0) + us
            f.replica_by_bucket[k] = f.replica_by_bucket.get(k, 0) + n * us

    def _end(self, replica: Replica, t: int) -> None:
        """Settle the replica's file up to ``t``, then forget the replica."""
        f = self.files[replica.file_hash]
        self.settle(f, t)
        f.live.pop(replica.contract_id, None)
        self.replicas.pop(replica.contract_id, None)
        held = self.by_token.get(replica.token_hash)
        if held is not None:
            held.pop(replica.contract_id, None)
            if not held:
                del self.by_token[replica.token_hash]

    # -- handlers ---------------------------------------------------------------------------

    @handles(ev.TokenCreated)
    def _token_created(self, p: dict, t: int) -> None:
        self.addresses[p["token_hash"]] = p["address"]

    @handles(ev.TokenDeleted)
    def _token_deleted(self, p: dict, t: int) -> None:
        for replica in list(self.by_token.get(p["token_hash"], {}).values()):
            self._end(replica, t)

    @handles(ev.FileAdded)
    def _file_added(self, p: dict, t: int) -> None:
        f = self._file(p["file_hash"])
        if f is None:
            return
        self.settle(f, t)
        f.target = p["redundancy"]
        if f.observed_since is None:
            f.observed_since = t

    @handles(ev.FileRemoved)
    def _file_removed(self, p: dict, t: int) -> None:
        f = self.files.get(p["file_hash"])
        if f is None:
            return
        for replica in list(f.live.values()):
            self._end(replica, t)
        self.settle(f, t)
        f.observed_since = None

    @handles(ev.ContractAssigned)
    def _assigned(self, p: dict, t: int) -> None:
        f = self._file(p["file_hash"])
        if f is None:
            return
        if f.observed_since is None:
            self.unmatched += 1  # a contract on a file not monitored: it counts nowhere
        self.settle(f, t)
        replica = Replica(p["contract_id"], p["token_hash"], f.file_hash, t, p["due"])
        f.live[replica.contract_id] = replica
        self.replicas[replica.contract_id] = replica
        self.by_token.setdefault(replica.token_hash, {})[replica.contract_id] = replica

    def _reach(self, contract_id: str, t: int, reach: int) -> None:
        replica = self.replicas.get(contract_id)
        if replica is None:
            return  # ended already, or on a file outside --file
        self.settle(self.files[replica.file_hash], t)  # the past keeps the old reach
        replica.reach = max(replica.reach, reach)

    @handles(ev.ChallengeIssued)
    def _challenge(self, p: dict, t: int) -> None:
        self._reach(p["contract_id"], t, p["due"])

    @handles(ev.AnswerPassed)
    def _passed(self, p: dict, t: int) -> None:
        self._reach(p["contract_id"], t, p["expiration"])

    @handles(ev.ContractExpired)
    def _expired(self, p: dict, t: int) -> None:
        replica = self.replicas.get(p["contract_id"])
        if replica is None:
            return
        # Offline since the expiration it passed, not since the node noticed.
        replica.reach = min(replica.reach, p["expired_at"])
        self._end(replica, t)

    @handles(ev.ContractEnded)
    def _ended(self, p: dict, t: int) -> None:
        replica = self.replicas.get(p["contract_id"])
        if replica is not None:
            self._end(replica, t)

    # -- reading ----------------------------------------------------------------------------

    def figures(self, now: int) -> dict[str, FileStats]:
        """Every file's figures as measured at ``now`` (the fold itself is left as it is)."""
        out = {}
        for file_hash, f in self.files.items():
            g = f.copy()
            self.settle(g, now)
            out[file_hash] = g
        return out

    # -- state, for incremental audits ------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything the fold holds, as JSON-ready data (see ``audit/state.py``)."""
        return {
            "position": self.position,
            "events": self.events,
            "first_time": self.first_time,
            "last_time": self.last_time,
            "unmatched": self.unmatched,
            "addresses": self.addresses,
            "files": [
                {
                    "file_hash": f.file_hash,
                    "target": f.target,
                    "observed_since": f.observed_since,
                    "settled": f.settled,
                    "live": [
                        [r.contract_id, r.token_hash, r.start, r.reach] for r in f.live.values()
                    ],
                    "seconds_at": sorted(f.seconds_at.items()),
                    "independent_us": f.independent_us,
                    "below_us": f.below_us,
                    "holders": sorted(f.holders),
                }
                for f in self.files.values()
            ],
        }

    def load_state(self, data: dict[str, Any]) -> None:
        self.position = int(data["position"])
        self.events = int(data["events"])
        self.first_time = data["first_time"]
        self.last_time = data["last_time"]
        self.unmatched = int(data["unmatched"])
        self.addresses = {str(k): str(v) for k, v in data["addresses"].items()}
        for item in data["files"]:
            f = FileStats(
                str(item["file_hash"]),
                int(item["target"]),
                item["observed_since"],
                int(item["settled"]),
                seconds_at={int(k): int(v) for k, v in item["seconds_at"]},
                independent_us=int(item["independent_us"]),
                below_us=int(item["below_us"]),
                holders={str(h) for h in item["holders"]},
            )
            self.files[f.file_hash] = f
            for cid, token, start, reach in item["live"]:
                r = Replica(str(cid), str(token), f.file_hash, int(start), int(reach))
                f.live[r.contract_id] = r
                self.replicas[r.contract_id] = r
                self.by_token.setdefault(r.token_hash, {})[r.contract_id] = r


# The payloads this audit reads: FileAdded's terms and the contracts' times, no proofs.
REDUNDANCY_EVENTS = EventRange(
    ("position", "event_type", "schema_version", "occurred_at", "payload"),
    payloads_of=RedundancyReplay.HANDLED,
)
