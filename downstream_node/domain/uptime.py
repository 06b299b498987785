"""Online time as the union of contracts' online intervals, folded one event at a time.

A contract is online from its assignment until its expiration (``due`` if unanswered,
``due + interval`` once answered), cut short when it ends. A token is online while at least
one of its contracts is. All times are integer UTC microseconds, so the live projection and
an auditor's replay agree exactly. Used by both; it reads and writes no database.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Coverage:
    """The union of intervals seen so far: closed time plus one open segment.

    ``first_start`` is when the token's first contract began (0: never). The open segment
    ``[seg_start, seg_end)`` may reach into the future: it is clipped when measured.
    """

    first_start: int = 0
    closed: int = 0
    seg_start: int = 0
    seg_end: int = 0

    def cover(self, start: int, end: int) -> None:
        """Add the interval ``[start, end)`` (start is the time of the event adding it)."""
        if end <= start:
            return
        if self.first_start == 0 or start < self.first_start:
            self.first_start = start
        if self.seg_end == 0 and self.seg_start == 0:
            self.seg_start, self.seg_end = start, end
        elif start <= self.seg_end:
            self.seg_start = min(self.seg_start, start)
            self.seg_end = max(self.seg_end, end)
        else:
            self.closed += self.seg_end - self.seg_start
            self.seg_start, self.seg_end = start, end

    def cut(self, at: int, others_until: int) -> None:
        """A contract ended at ``at``; the other live contracts cover up to ``others_until``."""
        if self.seg_end > at:
            self.seg_end = max(at, others_until, self.seg_start)

    def online(self, now: int) -> int:
        """Microseconds online up to ``now``."""
        open_part = max(0, min(self.seg_end, now) - self.seg_start) if self.seg_end else 0
        return self.closed + open_part

    def total(self, now: int) -> int:
        return max(0, now - self.first_start) if self.first_start else 0


def expiration(due: int, interval_s: int, answered: bool) -> int:
    """When a contract goes offline unless answered: the protocol's rule."""
    return due + interval_s * 1_000_000 if answered else due


# -- windows (used by the auditors) ----------------------------------------------------------------


def overlap(start: int, end: int, since: int | None, until: int | None) -> int:
    """Measure of ``[start, end)`` inside ``[since, until)``; ``None`` leaves that side open."""
    if since is not None and start < since:
        start = since
    if until is not None and end > until:
        end = until
    return max(0, end - start)


@dataclass
class WindowedCoverage(Coverage):
    """``Coverage`` that also measures its union inside the window ``[since, until)``.

    Only segments that have closed are final (``cut`` moves the open one), so each is clipped
    to the window as it closes; the open segment is clipped when measured. Without a window
    ``online_in_window(now)`` equals ``online(now)``. The projection keeps plain ``Coverage``.
    """

    since: int | None = None
    until: int | None = None
    closed_in_window: int = 0

    def cover(self, start: int, end: int) -> None:
        # The same test as Coverage.cover uses to close its open segment.
        if end > start and (self.seg_start or self.seg_end) and start > self.seg_end:
            self.segment_closed(self.seg_start, self.seg_end)
        super().cover(start, end)

    def segment_closed(self, start: int, end: int) -> None:
        """A segment became final; subclasses may also record it (e.g. per time bucket)."""
        self.closed_in_window += overlap(start, end, self.since, self.until)

    def open_segment(self, now: int) -> tuple[int, int]:
        """The open segment as measured at ``now`` (empty if there is none)."""
        if not self.seg_end:
            return (0, 0)
        return (self.seg_start, max(self.seg_start, min(self.seg_end, now)))

    def online_in_window(self, now: int) -> int:
        start, end = self.open_segment(now)
        return self.closed_in_window + overlap(start, end, self.since, self.until)

    def total_in_window(self, now: int) -> int:
        if not self.first_start:
            return 0
        return overlap(self.first_start, now, self.since, self.until)
