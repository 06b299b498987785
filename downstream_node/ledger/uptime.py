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
