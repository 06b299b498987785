"""The audit's fold on hand-made events: the worked example of docs/audit.md checked by hand,
windows, the reputation formula and the online score (windowed coverage against brute force
is in test_uptime.py)."""

from __future__ import annotations

import pytest

from downstream_node.audit.replay import Replay, Row, choose_buckets
from downstream_node.audit.report import build_report
from downstream_node.audit.reputation import Reputation, ScoringParams
from downstream_node.ledger.verify import VerifyReport

S = 1_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z, on a 12 h boundary
A = "a" * 64
B = "b" * 64


class Events:
    """Builds rows in position order; times are seconds after T0."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, at: float, event_type: str, **payload: object) -> Events:
        self.rows.append(Row(len(self.rows) + 1, event_type, T0 + int(at * S), payload))
        return self

    def token(self, at: float, token_hash: str) -> Events:
        return self.add(at, "TokenCreated", token_hash=token_hash, address="1Addr", ip=None)

    def assign(self, at: float, cid: str, token_hash: str, file_hash: str, due: float) -> Events:
        return self.add(
            at,
            "ContractAssigned",
            contract_id=cid,
            token_hash=token_hash,
            file_hash=file_hash,
            challenge={},
            challenge_index=0,
            state={},
            interval=60,
            due=T0 + int(due * S),
        )

    def passed(self, at: float, cid: str, expiration: float) -> Events:
        return self.add(
            at,
            "AnswerPassed",
            contract_id=cid,
            challenge_index=0,
            proof={},
            expiration=T0 + int(expiration * S),
        )

    def issued(self, at: float, cid: str, due: float) -> Events:
        return self.add(
            at,
            "ChallengeIssued",
            contract_id=cid,
            challenge={},
            challenge_index=1,
            state={},
            due=T0 + int(due * S),
        )

    def expired(self, at: float, cid: str, expired_at: float) -> Events:
        return self.add(at, "ContractExpired", contract_id=cid, expired_at=T0 + int(expired_at * S))


def worked_example() -> Events:
    """docs/audit.md, "A worked example" (interval 60 s, times in seconds)."""
    return (
        Events()
        .token(0, A)
        .assign(0, "c1", A, "f1", due=60)  # online [0, 60) for now
        .passed(30, "c1", expiration=120)  # answered: online until 120
        .issued(60, "c1", due=120)  # next challenge, never answered
        .expired(150, "c1", expired_at=120)  # noticed at 150, offline since 120: a miss
        .assign(200, "c2", A, "f2", due=260)
        .passed(210, "c2", expiration=320)
        .assign(240, "c3", A, "f3", due=300)
        .add(250, "ContractEnded", contract_id="c2", reason="removed")  # c3 still covers to 300
        .add(270, "AnswerFailed", contract_id="c3", challenge_index=0, proof={})
        .expired(330, "c3", expired_at=300)
    )


def report_of(replay: Replay, now_s: float) -> dict:
    verified = VerifyReport(True, replay.events, replay.position, "0" * 64)
    return build_report(
        replay,
        now=T0 + int(now_s * S),
        now_source="--now",
        position=replay.position,
        verified=verified,
    )


def test_worked_example_by_hand() -> None:
    replay = Replay().run(worked_example().rows)
    report = report_of(replay, 360)
    (token,) = report["tokens"]
    # Online: [0, 120) from c1, then [200, 300) from c2 and c3 (c2 removed at 250, c3 covers
    # until its due at 300) = 120 + 100 = 220 s of the 360 s since the first contract began.
    assert token["online_us"] == 220 * S
    assert token["total_us"] == 360 * S
    assert token["uptime"] == pytest.approx(220 / 360)
    assert (token["contracts"], token["challenges"], token["passed"]) == (3, 4, 2)
    assert (token["failed"], token["missed"]) == (1, 2)
    by_id = {c["contract_id"]: c for c in report["contracts"]}
    assert by_id["c1"]["online_us"] == 120 * S and by_id["c1"]["end_reason"] == "expired"
    assert by_id["c2"]["online_us"] == 50 * S and by_id["c2"]["total_us"] == 50 * S
    assert by_id["c3"]["online_us"] == 60 * S and by_id["c3"]["ended_at"].endswith("05:00.000000Z")
    # The same figures as the live projection's Coverage fold, which the replay mirrors.
    assert replay.tokens[A].coverage.online(T0 + 360 * S) == 220 * S
    assert report["totals"]["online_us"] == 220 * S


def test_reputation_against_a_hand_computation() -> None:
    # Audits in position order: pass (30), miss (c1), pass (210), fail (270), miss (c3).
    lam, alpha, beta = 0.999, 1000.0, 0.0
    for v in (+1, -1, +1, -1, -1):
        alpha = lam * alpha + 1 * (1 + v) / 2
        beta = lam * beta + 1 * (1 - v) / 2
    # By hand: alpha 1000 -> 1000 -> 999 -> 999.001 -> 998.001999 -> 997.003997001, and since
    # alpha0 + beta0 = w / (1 - lambda) = 1000, alpha + beta stays 1000.
    assert alpha == pytest.approx(997.003997001, abs=1e-9)
    assert alpha + beta == pytest.approx(1000.0, abs=1e-9)

    replay = Replay().run(worked_example().rows)
    rep = report_of(replay, 360)["tokens"][0]["reputation"]
    assert rep["alpha"] == alpha and rep["beta"] == beta  # same operations, same order: exact
    assert rep["audits"] == 5
    assert rep["audit_score"] == pytest.approx(0.997003997001, abs=1e-12)
    # Online: challenges issued at 0 (passed), 60 (missed), 200 (passed), 240 (failed, but
    # answered: the farmer was online) -> 3 of 4 in the one 12 h window.
    assert rep["online_score"] == 0.75 and rep["online_windows"] == 1
    assert rep["status"] == "good"


def test_parameters_change_the_scores_and_are_named() -> None:
    params = ScoringParams(lam=0.5, weight=2.0, alpha0=10.0, beta0=10.0, audit_threshold=0.9)
    replay = Replay(params=params).run(worked_example().rows)
    report = report_of(replay, 360)
    alpha, beta = 10.0, 10.0
    for v in (+1, -1, +1, -1, -1):
        alpha, beta = 0.5 * alpha + 2.0 * (1 + v) / 2, 0.5 * beta + 2.0 * (1 - v) / 2
    rep = report["tokens"][0]["reputation"]
    assert (rep["alpha"], rep["beta"]) == (alpha, beta)
    assert rep["status"] == "disqualified"  # alpha / (alpha + beta) < 0.9
    assert report["scoring"]["params"]["lambda"] == 0.5
    assert ScoringParams.fromdict(report["scoring"]["params"]) == params
    with pytest.raises(ValueError, match="unknown"):
        ScoringParams.fromdict({"lamda": 0.9})
    with pytest.raises(ValueError):
        ScoringParams.fromdict({"lambda": 1.5})


def test_window_clips_time_and_selects_events() -> None:
    # Window [100 s, 260 s); "now" is the window's end.
    replay = Replay(since=T0 + 100 * S, until=T0 + 260 * S).run(worked_example().rows)
    report = report_of(replay, 260)
    (token,) = report["tokens"]
    # [0, 120) clipped to [100, 120) = 20 s, and [200, 260) = 60 s; total [100, 260) = 160 s.
    assert token["online_us"] == 80 * S
    assert token["total_us"] == 160 * S
    # Issued at 200 and 240; passed at 210; missed: c1 lapsed at 120 (c3 lapses at 300).
    assert (token["challenges"], token["passed"], token["failed"], token["missed"]) == (2, 1, 0, 1)
    assert token["contracts"] == 3  # all three were held at some time in the window
    by_id = {c["contract_id"]: c for c in report["contracts"]}
    assert by_id["c1"]["online_us"] == 20 * S
    # Reputation is as of the window's end: pass, miss, pass (the fail and c3's miss are after).
    assert token["reputation"]["audits"] == 3

    later = Replay(since=T0 + 400 * S).run(worked_example().rows)
    (token,) = report_of(later, 500)["tokens"]
    assert (token["online_us"], token["total_us"], token["contracts"]) == (0, 100 * S, 0)


def test_token_filter_and_other_tokens() -> None:
    events = worked_example().token(400, B).assign(400, "d1", B, "f1", due=460)
    events.passed(410, "d1", expiration=520).add(415, "FileRemoved", file_hash="f1")
    full = report_of(Replay().run(events.rows), 600)
    assert [t["token_hash"] for t in full["tokens"]] == [A, B]
    b = full["tokens"][1]
    assert b["online_us"] == 15 * S  # [400, 415): the file was removed at 415
    assert full["contracts"][-1]["end_reason"] == "file_removed"
    only_b = report_of(Replay(tokens=[B]).run(events.rows), 600)
    assert only_b["tokens"] == [b]
    assert only_b["totals"]["tokens"] == 1 and only_b["ledger"]["unmatched_events"] == 0


def test_token_deletion_ends_every_contract() -> None:
    events = Events().token(0, A)
    events.assign(0, "c1", A, "f1", due=60).assign(10, "c2", A, "f2", due=70)
    events.passed(20, "c1", expiration=120).add(40, "TokenDeleted", token_hash=A)
    replay = Replay().run(events.rows)
    (token,) = report_of(replay, 100)["tokens"]
    assert token["online_us"] == 40 * S and token["deleted_at"] is not None
    assert replay.tokens[A].live == {}


def test_online_score_over_windows_and_pending_challenges() -> None:
    p = ScoringParams()
    rep = Reputation(p)
    h = 3600 * S
    rep.challenge_settled(T0 + 1 * h, True, p)  # window 0: 1/1
    rep.challenge_settled(T0 + 13 * h, True, p)  # window 1: 1/2
    rep.challenge_settled(T0 + 14 * h, False, p)
    assert rep.online_score(T0 + 20 * h, p) == (0.75, 2)
    # A challenge whose deadline passed by "now" with no event yet counts as unanswered.
    window1 = (T0 + 13 * h) // (12 * h)  # windows are counted from the epoch
    assert rep.online_score(T0 + 20 * h, p, {window1: (1, 0)}) == ((1 + 1 / 3) / 2, 2)
    # 31 days later the old windows are outside the 30-day period.
    assert rep.online_score(T0 + 31 * 24 * h, p) == (None, 0)
    # The kept windows stay bounded however long the history.
    for day in range(400):
        rep.challenge_settled(T0 + day * 24 * h, True, p)
    assert len(rep.windows) <= p.online_period // p.online_window + 2


def test_a_farmer_that_never_comes_back_is_offline_for_the_online_score() -> None:
    # Answered once, then never asked for the next challenge: the contract lapses at 120.
    events = Events().token(0, A).assign(0, "c1", A, "f1", due=60).passed(10, "c1", expiration=120)
    before = report_of(Replay().run(events.rows), 100)["tokens"][0]["reputation"]
    assert before["online_score"] == 1.0
    pending = report_of(Replay().run(events.rows), 130)["tokens"][0]["reputation"]
    assert pending["online_score"] == 0.5
    events.expired(200, "c1", expired_at=120)
    settled = report_of(Replay().run(events.rows), 200)["tokens"][0]["reputation"]
    assert settled["online_score"] == 0.5 and settled["audits"] == 2


def test_buckets_cover_the_span_with_round_widths() -> None:
    b = choose_buckets(T0 + 7 * S, T0 + 3 * 3600 * S, None, None)
    assert b.width == 300 * S and b.origin == T0
    into: dict[int, int] = {}
    b.spread(into, T0 + 290 * S, T0 + 610 * S)
    assert into == {0: 10 * S, 1: 300 * S, 2: 10 * S}
