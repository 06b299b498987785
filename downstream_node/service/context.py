"""Who asked for a command: recorded in its events' metadata (never a token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Context:
    """The request id, the kind of actor and the remote address behind a command."""

    request_id: str | None = None
    actor: str = "operator"
    remote: str | None = None

    def meta(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("request_id", self.request_id),
                ("actor", self.actor),
                ("remote", self.remote),
            )
            if v is not None
        }


OPERATOR = Context(actor="operator")
