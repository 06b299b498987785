"""``audit redundancy`` against a brute force written here: random farmers (contracts assigned,
answered, lapsing, removed, tokens deleted, files removed and added again) under a jumping
clock; every file's figures equal a sweep over every interval boundary, to the microsecond, at
the head, in windows and at earlier positions; on SQLite and MariaDB."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_audit import FARMER, Farmers, start_node

from downstream_node.audit.redundancy_report import RedundancyOptions, render, run_redundancy
from downstream_node.cli import main
from downstream_node.domain.clock import FakeClock, to_micros
from downstream_node.domain.tokens import make_address
from downstream_node.ledger import reader
from downstream_node.service import Context, Node

S = 1_000_000


@dataclass
class Contract:
    token: str
    file: str
    start: int
    reach: int
    end: int | None = None


@dataclass
class Life:
    target: int
    added: int
    removed: int | None = None


@dataclass
class Truth:
    """What the events say, read the simplest way: whole intervals, no incremental state."""

    contracts: dict[str, Contract] = field(default_factory=dict)
    lives: dict[str, list[Life]] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    times: list[int] = field(default_factory=list)


def truth(node: Node, until_position: int) -> Truth:
    got = Truth()
    for e in reader.read_all(node.engine, until=until_position):
        t, p = to_micros(e.occurred_at), e.payload
        got.times.append(t)
        live = [c for c in got.contracts.values() if c.end is None]
        if e.event_type == "TokenCreated":
            got.addresses[p["token_hash"]] = p["address"]
        elif e.event_type == "FileAdded":
            lives = got.lives.setdefault(p["file_hash"], [])
            if lives and lives[-1].removed is None:
                lives[-1].target = p["redundancy"]  # not expected: a live file is refused
            else:
                lives.append(Life(p["redundancy"], t))
        elif e.event_type == "FileRemoved":
            got.lives[p["file_hash"]][-1].removed = t
            for c in live:
                if c.file == p["file_hash"]:
                    c.end = t
        elif e.event_type == "TokenDeleted":
            for c in live:
                if c.token == p["token_hash"]:
                    c.end = t
        elif e.event_type == "ContractAssigned":
            got.contracts[p["contract_id"]] = Contract(p["token_hash"], p["file_hash"], t, p["due"])
        elif e.event_type in ("ChallengeIssued", "AnswerPassed"):
            c = got.contracts[p["contract_id"]]
            c.reach = max(c.reach, p["due"] if "due" in p else p["expiration"])
        elif e.event_type == "ContractExpired":
            c = got.contracts[p["contract_id"]]
            if c.end is None:
                c.end = p["expired_at"]
        elif e.event_type == "ContractEnded":
            c = got.contracts[p["contract_id"]]
            if c.end is None:
                c.end = t
    return got


def brute_force(
    got: Truth, now: int, since: int | None, until: int | None
) -> dict[str, dict[str, Any]]:
    """Per file: sweep every boundary; count what is online over each piece between two."""
    lo = since if since is not None else -(2**62)
    hi = min(now, until) if until is not None else now
    out = {}
    for file_hash, lives in got.lives.items():
        mine = [c for c in got.contracts.values() if c.file == file_hash]
        online = [
            (c, c.start, min(c.reach, c.end if c.end is not None else now, now)) for c in mine
        ]
        points = {lo, hi}
        for life in lives:
            points |= {life.added, life.removed if life.removed is not None else hi}
        for _, s, e in online:
            points |= {s, e}
        cuts = sorted(p for p in points if lo <= p <= hi)
        at: dict[int, int] = {}
        below = independent = 0
        holders: set[str] = set()
        for a, b in itertools.pairwise(cuts):
            life = next(
                (x for x in lives if x.added <= a and (x.removed is None or a < x.removed)), None
            )
            if life is None or b <= a:
                continue
            up = [c for c, s, e in online if s <= a < e]
            at[len(up)] = at.get(len(up), 0) + (b - a)
            independent += len({got.addresses.get(c.token, c.token) for c in up}) * (b - a)
            below += (b - a) if len(up) < life.target else 0
            holders |= {c.token for c in up}
        current = next(
            (x for x in lives if x.added <= now and (x.removed is None or now < x.removed)), None
        )
        observed_now = current is not None and (since is None or now >= since)
        if not at and not observed_now:
            continue
        up_now = [c for c, s, e in online if s <= now < min(c.reach, c.end or now + 1)]
        out[file_hash] = {
            "seconds_at": {str(n): Decimal(us).scaleb(-6) for n, us in sorted(at.items())},
            "observed_seconds": Decimal(sum(at.values())).scaleb(-6),
            "replica_seconds": Decimal(sum(n * us for n, us in at.items())).scaleb(-6),
            "below_target_seconds": Decimal(below).scaleb(-6),
            "unavailable_seconds": Decimal(at.get(0, 0)).scaleb(-6),
            "independent_replica_seconds": Decimal(independent).scaleb(-6),
            "holders": sorted(holders),
            "addresses": sorted({got.addresses.get(h, h) for h in holders}),
            "online_now": len(up_now) if observed_now else 0,
            "target": [x for x in lives if x.added <= now][-1].target,  # in force at now
        }
    return out


def audited(node: Node, **options: Any) -> dict[str, Any]:
    run = run_redundancy(node.engine, RedundancyOptions(**options))
    assert run.ok
    return json.loads(render(run.report, "json"), parse_float=Decimal)


def assert_equals_brute_force(
    node: Node, position: int | None = None, since: int | None = None, until: int | None = None
) -> dict[str, Any]:
    report = audited(node, at_position=position, since=since, until=until)
    got = truth(node, report["ledger"]["position"])
    now = until if until is not None else got.times[-1]
    assert report["now_us"] == now
    expected = brute_force(got, now, since, until)
    files = {f["file_hash"]: f for f in report["files"]}
    assert set(files) == set(expected)
    for file_hash, want in expected.items():
        have = {k: files[file_hash][k] for k in want}
        assert have == want, (file_hash, position, since, until)
    t = report["totals"]
    assert t["below_target_seconds"] == sum(w["below_target_seconds"] for w in expected.values())
    assert t["unavailable_seconds"] == sum(w["unavailable_seconds"] for w in expected.values())
    assert t["files_below_target_now"] == sum(
        1 for f in files.values() if f["observed_now"] and f["online_now"] < f["target"]
    )
    return report


async def random_history(node: Node, clock: FakeClock, rng: random.Random, steps: int) -> None:
    addresses = [make_address(bytes([0x50 + i]) * 20) for i in range(3)]
    await node.whitelist([(a, "50000") for a in addresses])
    seeds = [f"seed-{rng.random()}" for _ in range(5)]
    live: dict[str, str] = {}  # file hash -> seed
    removed: dict[str, str] = {}
    for i, seed in enumerate(seeds):
        live[await node.add_seeded(2048, seed=seed, redundancy=2 + i % 2)] = seed
    farm = Farmers(node)
    made = [0]

    async def new_token() -> str:
        made[0] += 1  # each from its own IP: the node limits tokens per IP
        ctx = Context(actor="farmer", remote=f"10.1.{made[0] // 200}.{made[0] % 200}")
        return (await node.create_token(rng.choice(addresses), ctx))[0]

    tokens = [await new_token() for _ in range(5)]
    deleted: set[str] = set()
    for _ in range(steps):
        for token in [t for t in tokens if t not in deleted]:
            action = rng.random()
            held = [f for (t, f) in farm.held if t == token]
            if action < 0.25 or not held:
                taken = await farm.take(token, rng.randint(1, 2))
                await farm.answer_first(token, wrong=frozenset(taken[:1]))
            elif action < 0.75:
                skip = frozenset(f for f in held if rng.random() < 0.25)
                await farm.rounds(token, skip=skip)
            elif action < 0.82:
                due = await node.due(token, FARMER)
                if due["all_contracts"]:
                    await node.remove(token, due["all_contracts"][0]["hash"], FARMER)
            elif action < 0.88:
                await node.sweep_expired()
            elif action < 0.91 and len(tokens) - len(deleted) > 2:
                await node.delete_token(token)
                deleted.add(token)
            elif action < 0.94:
                tokens.append(await new_token())
            elif action < 0.97 and len(live) > 2:
                file_hash = rng.choice(sorted(live))
                await node.remove_file(file_hash)
                removed[file_hash] = live.pop(file_hash)
            elif removed:
                file_hash = rng.choice(sorted(removed))
                seed = removed.pop(file_hash)
                assert await node.add_seeded(2048, seed=seed, redundancy=rng.randint(1, 3)) == (
                    file_hash
                )
                live[file_hash] = seed
        clock.advance(rng.choice((1, 7, 20, 30, 45, 61, 150)) + rng.random())
    # Whatever the draws (tokens are random, so farmers' choices differ run to run), the
    # history holds each way a replica ends: a hand-back, a lapse, a token deleted...
    kinds = {e.event_type for e in reader.read_all(node.engine)}
    alive = [t for t in tokens if t not in deleted]
    if "ContractEnded" not in kinds:
        for token in alive:
            due = await node.due(token, FARMER)
            if due["all_contracts"]:
                await node.remove(token, due["all_contracts"][0]["hash"], FARMER)
                break
    if "ContractExpired" not in kinds:
        clock.advance(3 * 3600)  # far past any challenge's due: every open contract lapses
        await node.sweep_expired()
    if "TokenDeleted" not in kinds and len(alive) > 1:
        await node.delete_token(alive[-1])
    # ...and a file removed and then added again, on other terms.
    file_hash = sorted(live)[0]
    await node.remove_file(file_hash)
    clock.advance(30)
    assert await node.add_seeded(2048, seed=live[file_hash], redundancy=1) == file_hash
    clock.advance(30)


@pytest.mark.parametrize("seed", [20261207, 7])
async def test_redundancy_equals_brute_force_on_random_histories(
    db_url: str, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        await random_history(node, clock, rng, steps=24)
        head = assert_equals_brute_force(node)
        kinds = {e.event_type for e in reader.read_all(node.engine)}
        assert {"FileRemoved", "TokenDeleted", "ContractExpired", "ContractEnded"} <= kinds
        added = [e for e in reader.read_all(node.engine) if e.event_type == "FileAdded"]
        assert len({e.payload["file_hash"] for e in added}) < len(added)  # some added again
        assert head["totals"]["below_target_seconds"] > 0
        assert any(len(f["addresses"]) < len(f["holders"]) for f in head["files"])
        position = head["ledger"]["position"]
        for _ in range(4):
            assert_equals_brute_force(node, position=rng.randint(1, position))
        times = truth(node, position).times
        for _ in range(4):
            a, b = sorted(rng.sample(range(times[0], times[-1] + 60 * S), 2))
            assert_equals_brute_force(node, since=a, until=b)
            assert_equals_brute_force(node, since=a)
    finally:
        await node.close()


def cli(db_url: str, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, ["--db", db_url, "audit", "redundancy", *args])
    assert result.exit_code == code, (result.output, result.exception)
    return result.stdout


async def test_at_position_today_equals_the_audit_taken_then(db_url: str, tmp_path: Path) -> None:
    rng = random.Random(11)
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        await random_history(node, clock, rng, steps=8)
        position = node.store.head().position
        then = {fmt: cli(db_url, "--format", fmt) for fmt in ("json", "csv", "table", "html")}
        await random_history(node, clock, rng, steps=8)
        assert node.store.head().position > position
        for fmt, text in then.items():
            assert cli(db_url, "--format", fmt, "--at-position", str(position)) == text, fmt
        assert cli(db_url, "--format", "json") != then["json"]
    finally:
        await node.close()


async def test_the_report_names_its_position_and_hash_in_every_format(
    db_url: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        await random_history(node, clock, random.Random(3), steps=4)
    finally:
        await node.close()
    report = json.loads(cli(db_url, "--format", "json"))
    v, position = report["verified"], report["ledger"]["position"]
    assert v["ok"] and v["last_position"] == position
    root = report["ledger"]["tree_root"]
    assert len(root) == 64  # the transparency log's root at that position
    assert (
        f"ledger position {position} (tree root {root}): verified ok up to position {position}, "
        f"hash {v['last_hash']}"
    ) in cli(db_url)
    rows = cli(db_url, "--format", "csv").splitlines()
    assert all(v["last_hash"] in row and root in row for row in rows[1:])
    html = cli(db_url, "--format", "html")
    assert v["last_hash"] in html and root in html and "data:image/svg+xml;base64," in html
    assert "http://" not in html.replace("http://www.w3.org", "")
    one = report["files"][0]["file_hash"]
    only = json.loads(cli(db_url, "--format", "json", "--file", one))
    assert [f["file_hash"] for f in only["files"]] == [one]
    assert only["files"][0] == report["files"][0]


async def test_bad_options_exit_2_with_a_message(db_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        await node.add_seeded(2048)
    finally:
        await node.close()
    result = CliRunner().invoke(
        main, ["--db", db_url, "audit", "redundancy", "--at-position", "999"]
    )
    assert result.exit_code == 2 and "outside the ledger" in result.output
    result = CliRunner().invoke(
        main,
        ["--db", db_url, "audit", "redundancy", "--since", "2026-02-01", "--until", "2026-01-01"],
    )
    assert result.exit_code == 2 and "--until must be after --since" in result.output
    result = CliRunner().invoke(main, ["--db", db_url, "audit", "redundancy", "--file", "xyz"])
    assert result.exit_code == 2 and "not a file hash" in result.output
