"""Error types of the heartbeat library.

Every malformed input, failed precondition or exhausted encoding surfaces as a
``HeartbeatError``; callers need to catch only that one type.
"""

from __future__ import annotations

__all__ = ["HeartbeatError", "OutOfChallenges"]


class HeartbeatError(ValueError):
    """Malformed heartbeat object, bad state signature when issuing a challenge,
    unusable file (empty, or shorter than its tag says) or misuse of a public heartbeat."""


class OutOfChallenges(HeartbeatError):
    """A Merkle state has issued every challenge its encoding holds.

    The caller should re-encode the file with a fresh seed (or end the contract).
    """
