"""Reputation scores in the style of Storj's satellite audits, folded one event at a time.

The audit score is a beta reputation over passed and failed-or-missed challenges; the online
score averages answered/issued per window. Every report names ``SCORING_VERSION`` and the
parameters, so replaying the same events with them reproduces the same scores exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..domain.canonical import json_kind

# Bump when the formula or the meaning of a parameter changes: scores of different versions
# are not comparable, and a report says which one produced it.
SCORING_VERSION = "downstream-reputation/1"

MICROS = 1_000_000

# Report and --params FILE names of the fields (``lambda`` is a Python keyword).
_NAMES = {
    "lam": "lambda",
    "weight": "weight",
    "alpha0": "alpha0",
    "beta0": "beta0",
    "audit_threshold": "audit_threshold",
    "online_threshold": "online_threshold",
    "online_window": "online_window_s",
    "online_period": "online_period_s",
}

# The scores depend only on the ratios of weight, alpha0 and beta0, so a larger scale adds
# nothing; this bound keeps alpha and beta finite over any number of audits (1e308 made
# alpha + beta overflow: scores of 0.0, and Infinity written into the JSON report).
MAX_SCALE = 1e12


@dataclass(frozen=True)
class ScoringParams:
    """The scoring settings; defaults are Storj's published satellite values."""

    lam: float = 0.999  # forgetting factor: older audits weigh less
    weight: float = 1.0  # weight of one audit
    alpha0: float = 1000.0  # initial alpha: a new farmer starts trusted ...
    beta0: float = 0.0  # ... with no failures
    audit_threshold: float = 0.96  # audit score below this: disqualified
    online_threshold: float = 0.6  # online score below this: suspended
    online_window: int = 12 * 3600  # seconds per online-score window
    online_period: int = 30 * 86400  # seconds of windows averaged, ending at "now"

    def __post_init__(self) -> None:
        if not 0 < self.lam <= 1:
            raise ValueError("lambda must be in (0, 1]")
        if self.weight <= 0:
            raise ValueError("weight must be positive")
        if self.alpha0 < 0 or self.beta0 < 0 or self.alpha0 + self.beta0 <= 0:
            raise ValueError("alpha0 and beta0 must be non-negative, not both zero")
        for name in ("weight", "alpha0", "beta0"):
            if getattr(self, name) > MAX_SCALE:
                raise ValueError(f"{name} must be at most {MAX_SCALE:g}")
        for name in ("audit_threshold", "online_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.online_window <= 0 or self.online_period < self.online_window:
            raise ValueError("online_window_s must be positive and at most online_period_s")

    def todict(self) -> dict[str, Any]:
        return {_NAMES[f.name]: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def fromdict(cls, data: Any) -> ScoringParams:
        """Read the report's names; unknown names are refused (a typo must not pass)."""
        if not isinstance(data, Mapping):
            # Else a string was taken for its letters and an array or null failed obscurely.
            raise ValueError(f"must be a JSON object (names and numbers), not {json_kind(data)}")
        by_name = {v: k for k, v in _NAMES.items()}
        unknown = sorted(set(data) - set(by_name))
        if unknown:
            raise ValueError(f"unknown scoring parameters: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            field = by_name[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            # Before int(): int(Infinity) is an OverflowError, int(NaN) a ValueError.
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be finite")
            if field in ("online_window", "online_period"):
                if value != int(value):
                    raise ValueError(f"{name} must be whole seconds")
                value = int(value)
            else:
                try:
                    value = float(value)
                except OverflowError:  # an integer beyond any float: beyond every range here
                    raise ValueError(f"{name} is out of range") from None
            values[field] = value
        return cls(**values)


class Reputation:
    """One token's scores: alpha and beta, and answered/issued counts per online window."""

    __slots__ = ("_oldest", "alpha", "audits", "beta", "windows")

    def __init__(self, params: ScoringParams) -> None:
        self.alpha = params.alpha0
        self.beta = params.beta0
        self.audits = 0
        # window index -> [issued, answered]; only the last online_period is kept.
        self.windows: dict[int, list[int]] = {}
        self._oldest = 0

    def audit(self, passed: bool, p: ScoringParams) -> None:
        """``alpha <- lambda*alpha + w*(1+v)/2``, ``beta <- lambda*beta + w*(1-v)/2``."""
        v = 1 if passed else -1
        self.alpha = p.lam * self.alpha + p.weight * (1 + v) / 2
        self.beta = p.lam * self.beta + p.weight * (1 - v) / 2
        self.audits += 1

    def challenge_settled(self, issued_at: int, answered: bool, p: ScoringParams) -> None:
        """A challenge issued at ``issued_at`` was answered (pass or fail) or went unanswered."""
        window = issued_at // (p.online_window * MICROS)
        counts = self.windows.get(window)
        if counts is None:
            counts = self.windows[window] = [0, 0]
            self._prune(window, p)
        counts[0] += 1
        counts[1] += 1 if answered else 0

    def _prune(self, newest: int, p: ScoringParams) -> None:
        # Keep memory bounded on any history: windows more than one period (plus one window of
        # slack for slightly out-of-order event times) before the newest cannot be averaged.
        keep_from = newest - p.online_period // p.online_window - 1
        if keep_from > self._oldest:
            for stale in [w for w in self.windows if w < keep_from]:
                del self.windows[stale]
            self._oldest = keep_from

    def audit_score(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def online_score(
        self, now: int, p: ScoringParams, pending: Mapping[int, tuple[int, int]] | None = None
    ) -> tuple[float | None, int]:
        """Mean of min(1, answered/issued) over windows of the period ending at ``now``.

        ``pending`` adds counts not folded yet (challenges whose deadline passed by ``now``
        without an event saying so). Returns (score, windows averaged); no window: ``None``.
        """
        size = p.online_window * MICROS
        first = (now - p.online_period * MICROS) // size
        last = now // size
        merged = {w: list(c) for w, c in self.windows.items()}
        for w, (issued, answered) in (pending or {}).items():
            counts = merged.setdefault(w, [0, 0])
            counts[0] += issued
            counts[1] += answered
        ratios = [
            min(1.0, answered / issued)
            for w, (issued, answered) in sorted(merged.items())
            if first <= w <= last and issued
        ]
        if not ratios:
            return None, 0
        return sum(ratios) / len(ratios), len(ratios)

    def status(self, online: float | None, p: ScoringParams) -> str:
        if self.audit_score() < p.audit_threshold:
            return "disqualified"
        if online is not None and online < p.online_threshold:
            return "suspended"
        return "good"
