"""Benchmark of the uptime audit: generate N synthetic but valid events, then time the replay.

The events go straight into the event store in large batches (no projection listener), in a
child process so that this process's peak RSS measures only the reading. The replay's speed and
memory are printed as one JSON document beside the limit, a raw streaming SELECT of the events
table with json.loads of every payload, measured in the same run.

    .venv/bin/python scripts/bench_audit.py [--events 1000000] [--db URL] [--page 5000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from downstream_node.audit.replay import Replay, stream_events
from downstream_node.audit.report import build_report
from downstream_node.domain import events as ev
from downstream_node.domain.clock import UTC, from_micros
from downstream_node.domain.tokens import make_address
from downstream_node.ledger.db import make_engine, read_transaction
from downstream_node.ledger.schema import events as events_table
from downstream_node.ledger.store import AppendRequest, EventStore
from downstream_node.ledger.verify import VerifyReport, verify_chain

S = 1_000_000
T0 = int(dt.datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * S
INTERVAL = 300  # seconds between challenges, the protocol's default
SLOTS = 4  # contracts each farmer holds at once
CHALLENGES = 256  # per encoding; then the contract ends out_of_challenges


# -- generation ---------------------------------------------------------------------------------


class Generator:
    """Farmers holding SLOTS contracts each, answering every INTERVAL; some fail or lapse."""

    def __init__(self, events: int, seed: int = 1) -> None:
        self.target = events
        self.rng = random.Random(seed)
        self.farmers = max(2, events // 5000)
        self.files = [f"{i:064x}" for i in range(1, self.farmers * 2 + 1)]
        self.count = 0
        self.sequence = 0

    def hexes(self, n: int) -> str:
        return self.rng.getrandbits(n * 4).to_bytes(n // 2, "big").hex()

    def b64ish(self) -> str:
        return self.hexes(44)[:43] + "="

    def challenge(self, index: int) -> dict[str, Any]:
        return {"index": index, "seed": self.hexes(64)}

    def proof(self, index: int) -> dict[str, Any]:
        # About the size of a real Merkle proof (~1 KiB): a leaf and a branch of hashes.
        return {
            "leaf": {"index": index, "blob": self.b64ish()},
            "branch": {"rows": [[self.b64ish(), self.b64ish()] for _ in range(8)]},
        }

    def requests(self) -> Iterator[AppendRequest]:
        """Append requests in time order until the target number of events is reached."""
        now = T0

        def request(stream: str, at: int, *domain: ev.DomainEvent) -> AppendRequest:
            when = from_micros(at)
            self.count += len(domain)
            return AppendRequest(stream, None, [e.to_new(when, {"actor": "bench"}) for e in domain])

        yield request(
            ev.NODE_STREAM,
            now,
            ev.HeartbeatConfigured(kind="Merkle", public="{}", key_fingerprint=self.hexes(64)),
        )
        tokens = [self.hexes(64) for _ in range(self.farmers)]
        addresses = [make_address(bytes([i % 256, i // 256]) * 10) for i in range(self.farmers)]
        for address in sorted(set(addresses)):
            yield request(ev.WHITELIST_STREAM, now, ev.AddressWhitelisted(address, "50000"))
        for file_hash in self.files:
            yield request(
                ev.file_stream(file_hash),
                now,
                ev.FileAdded(file_hash, 32 * 1024 * 1024, 3, INTERVAL, self.hexes(40), None),
            )
        for token, address in zip(tokens, addresses, strict=True):
            yield request(ev.token_stream(token), now, ev.TokenCreated(token, address, None))

        # slot -> [contract_id, file_hash, challenge_index, due] or None
        slots: list[list[Any] | None] = [None] * (self.farmers * SLOTS)
        while self.count < self.target:
            now += INTERVAL * S
            for n, held in enumerate(slots):
                if self.count >= self.target:
                    return
                at = now + n * 1000  # distinct, increasing times within a round
                token = tokens[n // SLOTS]
                if held is None:
                    cid = self.hexes(32)
                    file_hash = self.files[(n + self.sequence) % len(self.files)]
                    self.sequence += 1
                    due = at + INTERVAL * S
                    slots[n] = [cid, file_hash, 0, due]
                    yield request(
                        ev.file_stream(file_hash),
                        at,
                        ev.ChunkEncoded(
                            cid, file_hash, "Merkle", self.hexes(40), {"root": self.hexes(64)}, {}
                        ),
                        ev.ContractAssigned(
                            cid, token, file_hash, self.challenge(0), 0, {"i": 1}, INTERVAL, due
                        ),
                    )
                    continue
                cid, file_hash, index, due = held
                stream = ev.contract_stream(cid)
                roll = self.rng.random()
                if roll < 0.01:  # the farmer is away: the challenge lapses
                    slots[n] = None
                    yield request(stream, at, ev.ContractExpired(cid, due))
                elif index + 1 >= CHALLENGES:
                    slots[n] = None
                    yield request(stream, at, ev.ContractEnded(cid, "out_of_challenges"))
                else:
                    # Answer the current challenge (a wrong proof first, sometimes), then the
                    # next one is issued when it falls due.
                    answers: list[ev.DomainEvent] = []
                    if roll < 0.03:
                        answers.append(ev.AnswerFailed(cid, index, self.proof(index)))
                    answers.append(
                        ev.AnswerPassed(cid, index, self.proof(index), due + INTERVAL * S)
                    )
                    answers.append(
                        ev.ChallengeIssued(
                            cid,
                            self.challenge(index + 1),
                            index + 1,
                            {"i": index + 2},
                            due + INTERVAL * S,
                        )
                    )
                    held[2], held[3] = index + 1, due + INTERVAL * S
                    yield request(stream, at, *answers)


def generate(url: str, events: int, batch: int = 4000) -> dict[str, Any]:
    engine = make_engine(url)
    store = EventStore(engine)  # no listener: nothing but the events table is written
    store.create_schema()
    started = time.perf_counter()
    pending: list[AppendRequest] = []
    for req in Generator(events).requests():
        pending.append(req)
        if len(pending) >= batch:
            store.append_batch(pending)
            pending = []
    if pending:
        store.append_batch(pending)
    seconds = time.perf_counter() - started
    head = store.head().position
    engine.dispose()
    return {
        "events": head,
        "seconds": round(seconds, 2),
        "events_per_second": round(head / seconds),
    }


# -- measuring ----------------------------------------------------------------------------------


def max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def raw_scan(engine: sa.Engine, until: int, page: int) -> int:
    """The limit: keyset-paged SELECT of every event row and json.loads of every payload."""
    e = events_table.c
    after, seen = 0, 0
    with read_transaction(engine) as conn:
        while after < until:
            rows = conn.execute(
                sa.select(e.position, e.event_type, e.occurred_at, e.payload)
                .where(e.position > after, e.position <= until)
                .order_by(e.position)
                .limit(page)
            ).all()
            conn.rollback()
            if not rows:
                break
            for row in rows:
                json.loads(row[3])
                seen += 1
            after = rows[-1][0]
    return seen


def audit(engine: sa.Engine, until: int, page: int) -> tuple[Replay, dict[str, Any]]:
    """The audit's replay and report (verification is timed apart: it is the same everywhere)."""
    replay = Replay().run(stream_events(engine, until=until, page=page))
    report = build_report(
        replay,
        now=replay.last_time or 0,
        now_source="last event",
        position=until,
        verified=VerifyReport(True, until, until, "-"),
    )
    return replay, report


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def traced_peak(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(url: str, page: int) -> dict[str, Any]:
    engine = make_engine(url)
    with read_transaction(engine) as conn:
        head = int(conn.execute(sa.select(sa.func.max(events_table.c.position))).scalar() or 0)
    rss_start = max_rss_kib()

    seen, raw_s = timed(lambda: raw_scan(engine, head, page))
    rss_after_raw = max_rss_kib()
    (replay, report), replay_s = timed(lambda: audit(engine, head, page))
    rss_after_replay = max_rss_kib()
    state = {"tokens": len(replay.tokens), "contracts": len(replay.contracts)}
    assert replay.events == head and report["ledger"]["unmatched_events"] == 0
    del replay, report
    verified, verify_s = timed(lambda: verify_chain(engine, until=head))

    raw_peak = traced_peak(lambda: raw_scan(engine, head, page))
    quarter_peak = traced_peak(lambda: audit(engine, head // 4, page))
    full_peak = traced_peak(lambda: audit(engine, head, page))
    engine.dispose()
    assert seen == head
    return {
        "database": "sqlite" if url.startswith("sqlite") else url.split(":", 1)[0],
        "events": head,
        "page": page,
        "replay": {
            "seconds": round(replay_s, 3),
            "events_per_second": round(head / replay_s),
            "tracemalloc_peak_bytes": full_peak,
            "tracemalloc_peak_bytes_first_quarter": quarter_peak,
            "state": state,
        },
        "limit_raw_select_json_loads": {
            "seconds": round(raw_s, 3),
            "events_per_second": round(head / raw_s),
            "tracemalloc_peak_bytes": raw_peak,
        },
        "verify_chain": {
            "ok": verified.ok,
            "seconds": round(verify_s, 3),
            "events_per_second": round(head / verify_s),
        },
        "max_rss_kib": {
            "start": rss_start,
            "after_raw_select": rss_after_raw,
            "after_replay": rss_after_replay,
        },
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--db", default=None, help="Database URL (default: a temp SQLite file).")
    parser.add_argument("--page", type=int, default=5000)
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.generate_only:
        print(json.dumps(generate(args.db, args.events)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'ledger.db'}"
        engine = make_engine(url)
        try:
            with read_transaction(engine) as conn:
                existing = conn.execute(
                    sa.select(sa.func.count()).select_from(events_table)
                ).scalar()
        except sa.exc.DatabaseError:
            existing = 0
        engine.dispose()
        generated = None
        if not existing:
            # In a child process, so this one's peak RSS is the audit's alone.
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--generate-only",
                    "--db",
                    url,
                    "--events",
                    str(args.events),
                ],
                check=True,
                capture_output=True,
                text=True,
                env=os.environ,
            )
            generated = json.loads(out.stdout.strip().splitlines()[-1])
        result = measure(url, args.page)
        result["generated"] = generated
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
