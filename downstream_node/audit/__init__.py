"""Auditors: uptime, reputation and integrity recomputed from the event history alone.

An audit never reads a projection and never writes: it verifies the hash chain, then replays
the events up to one position. ``run_audit`` is the library entry; the CLI is ``audit uptime``.
"""

from .reputation import SCORING_VERSION, ScoringParams
from .run import AuditError, AuditOptions, AuditRun, run_audit

__all__ = [
    "SCORING_VERSION",
    "AuditError",
    "AuditOptions",
    "AuditRun",
    "ScoringParams",
    "run_audit",
]
