"""Incremental audits (``--state DIR``): random histories cut at random positions, a state
saved at each cut and resumed, give exactly the full replay's report, for ``audit uptime`` and
``audit redundancy``; a state that does not fit the ledger or the options is refused (exit 2)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_audit import start_node
from test_audit_redundancy import random_history

from downstream_node.audit import AuditOptions, run_audit
from downstream_node.audit.incremental import resume_audit, resume_redundancy, run_with_state
from downstream_node.audit.redundancy_report import RedundancyOptions, render, run_redundancy
from downstream_node.audit.report import render_json
from downstream_node.audit.reputation import ScoringParams
from downstream_node.cli import main
from downstream_node.domain.clock import FakeClock
from downstream_node.ledger.db import make_engine
from downstream_node.ledger.schema import events

S = 1_000_000


async def ledger(db_url: str, tmp_path: Path, seed: int, steps: int = 16) -> int:
    clock = FakeClock()
    tmp_path.mkdir(parents=True, exist_ok=True)
    node = await start_node(db_url, tmp_path, clock)
    try:
        await random_history(node, clock, random.Random(seed), steps=steps)
        return node.store.head().position
    finally:
        await node.close()


@pytest.mark.parametrize("seed", [5, 17])
async def test_incremental_equals_full_for_both_audits(
    db_url: str, tmp_path: Path, seed: int
) -> None:
    head = await ledger(db_url, tmp_path / "node", seed)
    rng = random.Random(seed)
    engine = make_engine(db_url)
    try:
        first = run_audit(engine, AuditOptions(at_position=1)).report
        start = int(first["now_us"])
        windows = [(None, None), (start + 200 * S, None), (start + 100 * S, start + 900 * S)]
        for since, until in windows:
            uptime = AuditOptions(
                since=since, until=until, params=ScoringParams(lam=0.99, alpha0=100.0)
            )
            redundancy = RedundancyOptions(since=since, until=until)
            cuts = [*sorted(rng.sample(range(0, head), 4)), head]
            state = tmp_path / f"state-{since}-{until}"
            previous = 0
            for cut in cuts:
                u = AuditOptions(**{**uptime.__dict__, "at_position": cut})
                r = RedundancyOptions(**{**redundancy.__dict__, "at_position": cut})
                replayed: list[int] = []
                verified: list[int] = []
                got_u = run_with_state(
                    resume_audit,
                    engine,
                    u,
                    state,
                    on_replay=replayed.append,
                    on_verify=verified.append,
                ).report
                got_r = run_with_state(
                    resume_redundancy,
                    engine,
                    r,
                    state,
                    on_replay=replayed.append,
                    on_verify=verified.append,
                ).report
                # Only the events after the saved position were read, verified and folded.
                assert sum(replayed) == sum(verified) == 2 * (cut - previous)
                previous = cut
                assert render_json(got_u) == render_json(run_audit(engine, u).report), cut
                assert render(got_r, "json") == render(run_redundancy(engine, r).report, "json")
                saved = json.loads((state / "redundancy.json").read_text())
                assert saved["position"] == cut
            assert got_u["tokens"] and got_r["files"]
    finally:
        engine.dispose()


def cli(db_url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--db", db_url, "audit", *args])
    return result.exit_code, result.output


def rewrite_state(path: Path, change: dict, drop: tuple[str, ...] = ()) -> None:
    """Edit a saved state and give it a valid checksum (what a careless tool might do)."""
    data = json.loads(path.read_text())
    del data["checksum"]
    data.update(change)
    for key in drop:
        del data[key]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    data["checksum"] = hashlib.sha256(text.encode()).hexdigest()
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("kind", ["uptime", "redundancy"])
async def test_a_state_that_does_not_fit_is_refused(db_url: str, tmp_path: Path, kind: str) -> None:
    head = await ledger(db_url, tmp_path / "node", 3, steps=6)
    state = tmp_path / "state"
    path = state / f"{kind}.json"
    mid = str(head // 2)
    assert cli(db_url, kind, "--state", str(state), "--at-position", mid)[0] == 0
    good = path.read_bytes()

    def refused(*args: str, says: str, db: str = db_url) -> None:
        code, output = cli(db, kind, "--state", str(state), *args)
        assert code == 2, output
        assert says in output, output
        path.write_bytes(good)

    # Other options than the state was made with.
    refused("--since", "2026-01-01T00:00:01Z", says="made with other options (since)")
    # Corrupt or truncated.
    path.write_bytes(good[: len(good) // 2])
    refused(says="cannot be read")
    path.write_bytes(good.replace(b'"position": ', b'"position": 1', 1))
    refused(says="is corrupt (its checksum does not match)")
    # Another scoring version, or another format (with a valid checksum).
    rewrite_state(path, {"scoring_version": "downstream-reputation/0"})
    refused(says="was scored with downstream-reputation/0")
    rewrite_state(path, {"format": "downstream-audit-state/0"})
    refused(says="this auditor writes 'downstream-audit-state/1'")
    # Keys missing or of the wrong type, under a valid checksum: corrupt, not a traceback.
    for key in ("scoring_version", "hash", "position", "options", "fold"):
        rewrite_state(path, {}, drop=(key,))
        refused(says=f"is corrupt ({key!r} is missing or not")
    for key, value in [
        ("position", "x"),
        ("position", 3.5),
        ("position", True),
        ("position", -1),
        ("hash", 7),
        ("scoring_version", None),
        ("options", []),
        ("fold", "x"),
    ]:
        rewrite_state(path, {key: value})
        refused(says=f"is corrupt ({key!r} is missing or not")
    # Behind the audited position: a state cannot be taken back.
    refused("--at-position", "1", says=f"is at position {mid}, beyond the audited position 1")
    # Another ledger: the chain hash at the state's position differs.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    await ledger(other, tmp_path / "other", 4, steps=6)
    refused(db=other, says="does not match this ledger")
    # A ledger that ends before the state's position holds no event there: the same, not a
    # position to take the state back to (with or without --at-position).
    short = f"sqlite:///{tmp_path / 'short.db'}"
    assert await ledger(short, tmp_path / "short", 4, steps=0) < int(mid)
    for args in ((), ("--at-position", "1")):
        refused(*args, db=short, says=f"does not match this ledger: at position {mid} it recorded")
        refused(*args, db=short, says="holds no event (another ledger, or one shorter than")
    # A history rewritten under it: the hash at the state's position changed.
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.update(events).where(events.c.position == int(mid)).values(hash="0" * 64)
            )
        refused(says=f"at position {mid} it recorded hash")
    finally:
        engine.dispose()
    # None of the refusals replaced the state; with matching options it is used.
    assert path.read_bytes() == good


async def test_state_with_html_is_refused_and_the_state_resumes_from_the_cli(
    db_url: str, tmp_path: Path
) -> None:
    await ledger(db_url, tmp_path / "node", 9, steps=6)
    state = str(tmp_path / "state")
    for kind in ("uptime", "redundancy"):
        code, output = cli(db_url, kind, "--state", state, "--format", "html")
        assert code == 2 and "--state cannot be used with --format html" in output
        full = cli(db_url, kind, "--format", "json")
        assert cli(db_url, kind, "--state", state, "--format", "json", "--at-position", "5")[0] == 0
        assert cli(db_url, kind, "--state", state, "--format", "json") == full
        assert cli(db_url, kind, "--state", state, "--format", "json") == full  # nothing new


@pytest.mark.parametrize("kind", ["uptime", "redundancy"])
async def test_an_unwritable_report_or_state_is_a_one_line_error(
    db_url: str, tmp_path: Path, kind: str
) -> None:
    """A path under a regular file cannot be created (even by root): each failure is one line
    and exit 2; the report is written before the state, and a lost report keeps the old state."""
    await ledger(db_url, tmp_path / "node", 9, steps=6)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    state = tmp_path / "state"
    assert cli(db_url, kind, "--state", str(state), "--at-position", "5")[0] == 0
    saved = (state / f"{kind}.json").read_bytes()
    full = cli(db_url, kind, "--format", "json")[1]

    def fails(*args: str, says: str) -> str:
        result = CliRunner().invoke(main, ["--db", db_url, "audit", kind, *args])
        assert result.exit_code == 2, (result.output, result.exception)
        assert isinstance(result.exception, SystemExit), result.exception
        assert result.stderr.startswith(f"error: {says}"), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        return result.stdout

    report = str(blocker / "report.json")
    fails("--output", report, says=f"cannot write the report to {report}")
    fails("--state", str(state), "--output", report, says="cannot write the report")
    assert (state / f"{kind}.json").read_bytes() == saved  # not moved past a lost report
    written = fails(
        "--state", str(blocker / "state"), "--format", "json", says="cannot save the state in"
    )
    assert written == full  # the report came first
