"""Uptime folding: the incremental union of contract intervals equals a brute-force union."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from downstream_node.domain.uptime import Coverage, WindowedCoverage, expiration, overlap


def brute_online(
    intervals: list[tuple[int, int]], now: int, since: int = 0, until: int | None = None
) -> int:
    """Measure of the union of [start, min(end, now)) within [since, until), by a sweep."""
    stop = now if until is None else min(now, until)
    points = sorted(
        (max(s, since), min(e, stop)) for s, e in intervals if min(e, stop) > max(s, since)
    )
    total, cur_start, cur_end = 0, 0, None
    for start, end in points:
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return total + (cur_end - cur_start if cur_end is not None else 0)


ops = st.lists(
    st.tuples(
        st.sampled_from(["assign", "answer", "end"]),
        st.integers(0, 50),
        st.integers(1, 40),
        st.integers(0, 10),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(0, 100), st.integers(900, 1800), st.integers(0, 900))
def test_incremental_union_matches_brute_force(steps, tail, since, length) -> None:
    """The projection's Coverage and the auditors' WindowedCoverage against a brute force."""
    until = since + length
    plain = Coverage()
    windowed = WindowedCoverage(since=since, until=until)
    unbounded = WindowedCoverage()
    covers = (plain, windowed, unbounded)
    contracts: list[list[int]] = []  # [start, end, live]
    t = 1000
    for kind, gap, length_, pick in steps:
        t += gap
        live = [c for c in contracts if c[2]]
        if kind == "assign" or not live:
            contracts.append([t, t + length_, 1])
            for cov in covers:
                cov.cover(t, t + length_)
        elif kind == "answer":
            c = live[pick % len(live)]
            if c[1] > t:  # answers count only before expiration
                c[1] = max(c[1], t + length_)
                for cov in covers:
                    cov.cover(t, c[1])
        else:
            c = live[pick % len(live)]
            c[2] = 0
            c[1] = min(c[1], t)
            others = max((o[1] for o in contracts if o[2]), default=0)
            for cov in covers:
                cov.cut(t, others)
    now = t + tail
    intervals = [(s, e) for s, e, _ in contracts]
    first = min((s for s, _ in intervals), default=None)
    assert plain.online(now) == brute_online(intervals, now)
    assert plain.total(now) == (now - first if first is not None else 0)
    # Without a window the auditors' coverage is the projection's, field for field.
    assert unbounded.online_in_window(now) == plain.online(now)
    assert unbounded.total_in_window(now) == plain.total(now)
    assert windowed.online_in_window(now) == brute_online(intervals, now, since, until)
    expected_total = overlap(first, now, since, until) if first is not None else 0
    assert windowed.total_in_window(now) == expected_total


def test_worked_example_from_readme() -> None:
    # Contract A from 0 s, interval 60 s, answered once: online until 120 s. Contract B from
    # 200 s, never answered: online until its due at 260 s. At 300 s: 180 s of 300 s online.
    s = 1_000_000
    cov = Coverage()
    cov.cover(0 * s + 1, 60 * s + 1)
    cov.cover(10 * s + 1, expiration(60 * s + 1, 60, answered=True))
    cov.cover(200 * s + 1, 260 * s + 1)
    assert cov.online(300 * s + 1) == 180 * s
    assert cov.total(300 * s + 1) == 300 * s


def test_ending_a_contract_keeps_the_others_coverage() -> None:
    cov = Coverage()
    cov.cover(0, 100)
    cov.cover(10, 50)
    cov.cut(20, others_until=100)  # the second ends early; the first still covers to 100
    assert cov.online(200) == 100
    cov.cut(30, others_until=0)  # now the first ends too
    assert cov.online(200) == 30
