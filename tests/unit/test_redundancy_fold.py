"""The redundancy fold on hand-made events: the worked example of docs/audit.md checked by
hand, in a window, with ``--file``, and the state it saves (a random brute-force comparison on
real ledgers is in tests/integration/test_audit_redundancy.py)."""

from __future__ import annotations

import json
from decimal import Decimal

from downstream_node.audit.redundancy import RedundancyReplay
from downstream_node.audit.redundancy_report import build_redundancy_report, render
from downstream_node.audit.replay import Row
from downstream_node.ledger.verify import VerifyReport

S = 1_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
A, B, C = "a" * 64, "b" * 64, "c" * 64
F = "f" * 64
VERIFIED = VerifyReport(True, 0, 0, "0" * 64)


class Events:
    """Rows in position order; times are seconds after T0."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, at: float, event_type: str, **payload: object) -> Events:
        self.rows.append(Row(len(self.rows) + 1, event_type, T0 + int(at * S), payload))
        return self

    def file(self, at: float, redundancy: int) -> Events:
        return self.add(
            at, "FileAdded", file_hash=F, size=1, redundancy=redundancy, interval=60, seed="s",
            path=None,
        )  # fmt: skip

    def token(self, at: float, token_hash: str, address: str) -> Events:
        return self.add(at, "TokenCreated", token_hash=token_hash, address=address, ip=None)

    def assign(self, at: float, cid: str, token_hash: str, due: float) -> Events:
        return self.add(
            at, "ContractAssigned", contract_id=cid, token_hash=token_hash, file_hash=F,
            challenge={}, challenge_index=0, state={}, interval=60, due=T0 + int(due * S),
        )  # fmt: skip

    def passed(self, at: float, cid: str, expiration: float) -> Events:
        return self.add(
            at, "AnswerPassed", contract_id=cid, challenge_index=0, proof={},
            expiration=T0 + int(expiration * S),
        )  # fmt: skip

    def expired(self, at: float, cid: str, expired_at: float) -> Events:
        return self.add(at, "ContractExpired", contract_id=cid, expired_at=T0 + int(expired_at * S))


def worked_example() -> Events:
    """docs/audit.md, "A worked example: redundancy" (times in seconds)."""
    return (
        Events()
        .file(0, redundancy=2)
        .token(0, A, "1X")
        .token(0, B, "1X")  # a second token of the same address
        .token(0, C, "1Y")
        .assign(10, "c1", A, due=70)
        .assign(20, "c2", B, due=80)
        .passed(40, "c1", expiration=130)
        .passed(50, "c2", expiration=140)
        .assign(90, "c3", C, due=150)
        .add(100, "ContractEnded", contract_id="c2", reason="removed")
        .expired(160, "c1", expired_at=130)
        .expired(170, "c3", expired_at=150)
        .add(200, "FileRemoved", file_hash=F)
        .file(240, redundancy=1)
        .assign(250, "c4", C, due=310)
        .passed(300, "c4", expiration=370)
    )


def report(
    events: Events, now: float, since: float | None = None, until: float | None = None
) -> dict:
    fold = RedundancyReplay(
        since=None if since is None else T0 + int(since * S),
        until=None if until is None else T0 + int(until * S),
    )
    fold.run(events.rows)
    return json.loads(
        render(
            build_redundancy_report(
                fold, now=T0 + int(now * S), now_source="test", position=fold.position,
                verified=VERIFIED,
            ),
            "json",
        ),
        parse_float=Decimal,
    )  # fmt: skip


def test_worked_example_by_hand() -> None:
    got = report(worked_example(), now=300)
    [f] = got["files"]
    assert f["target"] == 1  # the target in force now (re-added with redundancy 1)
    assert f["observed_seconds"] == 260  # [0, 200) and [240, 300)
    assert f["seconds_at"] == {"0": 70, "1": 80, "2": 100, "3": 10}
    assert (f["min_online"], f["max_online"]) == (0, 3)
    assert f["replica_seconds"] == 310
    assert abs(f["mean_online"] - Decimal(310) / 260) < Decimal("1e-12")
    assert f["below_target_seconds"] == 100  # 90 below 2, then 10 below 1
    assert f["unavailable_seconds"] == 70
    assert f["independent_replica_seconds"] == 230  # c1 and c2 are one address
    assert f["holders"] == [A, B, C] and f["addresses"] == ["1X", "1Y"]
    assert (f["online_now"], f["below_target_now"], f["unavailable_now"]) == (1, False, False)
    t = got["totals"]
    assert (t["files"], t["at_or_above_target_seconds"], t["below_target_seconds"]) == (1, 160, 100)
    assert (t["unavailable_seconds"], t["files_below_target_now"]) == (70, 0)


def test_worked_example_in_a_window() -> None:
    got = report(worked_example(), now=160, since=60, until=160)
    [f] = got["files"]
    assert f["observed_seconds"] == 100
    assert f["seconds_at"] == {"0": 10, "1": 20, "2": 60, "3": 10}
    assert (f["below_target_seconds"], f["unavailable_seconds"]) == (30, 10)
    # At 160 c1 has expired (at 130) and c3 lapsed at 150: nothing online.
    assert (f["online_now"], f["below_target_now"], f["unavailable_now"]) == (0, True, True)
    assert got["totals"]["files_unavailable_now"] == 1


def test_two_adjacent_windows_add_up_to_the_whole() -> None:
    whole = report(worked_example(), now=300, since=0, until=300)["files"][0]
    first = report(worked_example(), now=137, since=0, until=137)["files"][0]
    second = report(worked_example(), now=300, since=137, until=300)["files"][0]
    for name in ("observed_seconds", "below_target_seconds", "replica_seconds"):
        assert first[name] + second[name] == whole[name], name
    for n, s in whole["seconds_at"].items():
        assert first["seconds_at"].get(n, 0) + second["seconds_at"].get(n, 0) == s


def test_seconds_are_exact_to_the_microsecond() -> None:
    events = Events().file(0, 1).token(0, A, "1X").assign(0.000001, "c1", A, due=60.5)
    events.add(90, "ContractExpired", contract_id="c1", expired_at=T0 + int(60.5 * S))
    f = report(events, now=90)["files"][0]
    assert f["seconds_at"] == {"0": Decimal("29.500001"), "1": Decimal("60.499999")}


def test_a_file_filter_keeps_only_that_file() -> None:
    fold = RedundancyReplay(files={"e" * 64})
    fold.run(worked_example().rows)
    assert fold.files == {}


def test_the_saved_state_resumes_to_the_same_figures() -> None:
    rows = worked_example().rows
    for cut in range(len(rows) + 1):
        whole = RedundancyReplay().run(rows)
        first = RedundancyReplay().run(rows[:cut])
        resumed = RedundancyReplay()
        resumed.load_state(json.loads(json.dumps(first.state())))
        resumed.run(rows[cut:])
        assert resumed.state() == whole.state(), cut


def test_the_html_report_draws_a_heat_map_for_many_files() -> None:
    from downstream_node.audit.replay import choose_buckets

    rows: list[Row] = []

    def add(at: float, event_type: str, **payload: object) -> None:
        rows.append(Row(len(rows) + 1, event_type, T0 + int(at * S), payload))

    add(0, "TokenCreated", token_hash=A, address="1X", ip=None)
    for i in range(20):
        file_hash = f"{i:064x}"
        add(i, "FileAdded", file_hash=file_hash, size=1, redundancy=2, interval=60, seed="s",
            path=None)  # fmt: skip
        due = T0 + (60 + 5 * i) * S
        add(i + 1, "ContractAssigned", contract_id=f"c{i}", token_hash=A, file_hash=file_hash,
            challenge={}, challenge_index=0, state={}, interval=60, due=due)  # fmt: skip
    add(600, "TokenDeleted", token_hash=A)
    now = T0 + 600 * S
    fold = RedundancyReplay(buckets=choose_buckets(T0, now, None, None))
    fold.run(rows)
    doc = build_redundancy_report(
        fold, now=now, now_source="last event", position=fold.position, verified=VERIFIED
    )
    html = render(doc, "html")
    assert 'alt="heat map of replicas online per file"' in html
    assert 'alt="file-hours at each replica count"' in html
    assert len(doc["files"]) == 20 and doc["totals"]["files_unavailable_now"] == 20
