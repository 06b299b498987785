"""Farmer tokens: creating one (a farmer's ``/new``, or the operator), deleting one, and the
checks every farmer command makes of the token it was given (constant-time comparison).
"""

from __future__ import annotations

from typing import Any

import structlog

from ..domain import events as ev
from ..domain import tokens as tk
from ..domain.errors import ConcurrencyConflict, Refused
from ..projections.queries import Reader, TokenView
from .context import OPERATOR, Context
from .retry import until_appended
from .runtime import Runtime

log = structlog.get_logger("downstream.node")


def hashed(token: str) -> str:
    """The token's hash, or ``no_token`` for anything that cannot be a token."""
    if not isinstance(token, str) or not tk.TOKEN_RE.match(token):
        raise Refused("no_token", "no such token")
    return tk.token_hash(token)


def checked(token: str, found: TokenView | None) -> TokenView:
    """The token's view if it is live and really this token (compared in constant time)."""
    if found is None or found.deleted_at is not None or not tk.same_token(token, found.token_hash):
        raise Refused("no_token", "no such token")
    return found


async def live(rt: Runtime, token: str) -> TokenView:
    """The live token's view, read now."""
    token_hash = hashed(token)
    return checked(token, await rt.read(lambda r: r.token(token_hash)))


def guard(owner: TokenView) -> dict[str, int]:
    """The token's stream must not have moved: nothing lands after its deletion."""
    return {ev.token_stream(owner.token_hash): owner.version}


class TokenCommands:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def create_token(
        self, address: str, ctx: Context = OPERATOR
    ) -> tuple[str, dict[str, Any]]:
        """A new token for ``address``; a farmer's counts against its IP address's limit.

        A farmer's TokenCreated is appended to its IP's stream at the version read together
        with the count, so simultaneous requests from one IP (in any process) cannot pass
        the limit together: the losers re-read the count and decide again.
        """
        rt = self.rt
        scheme = rt.proofs()
        policy = rt.settings.token_policy
        # Counted, and recorded, under its group: an IPv6 farmer's /64, say.
        ip = tk.ip_group(ctx.remote, policy.ipv6_prefix) if ctx.actor == "farmer" else None
        ip_stream = ev.ip_stream(ip) if ip else None

        def state(r: Reader) -> tuple[int, Any, int]:
            # The version first: a creation committed after it makes the append conflict,
            # one committed before it is in the count read next.
            version = r.stream_version(ip_stream) if ip_stream else 0
            return version, r.balance(address), (r.tokens_for_ip(ip) if ip else 0)

        async def attempt() -> str:
            token = tk.new_token()
            version, balance, per_ip = await rt.read(state)
            events = tk.decide_create_token(
                address,
                token=token,
                ip=ip,
                balance=balance,
                tokens_for_ip=per_ip,
                policy=policy,
            )
            stream = ip_stream or ev.token_stream(tk.token_hash(token))
            # Another token created from this IP meanwhile conflicts: count again.
            await rt.append(stream, version if ip_stream else 0, events, ctx)
            return token

        token = await until_appended(
            attempt, busy="too many tokens are being created from this address; try again"
        )
        log.info("token_created", token=tk.redact(token), address=address)
        return token, scheme.public()

    async def delete_token(self, token: str, ctx: Context = OPERATOR) -> None:
        found = await live(self.rt, token)
        events = tk.decide_delete_token(True, False, found.token_hash)
        try:
            await self.rt.append(ev.token_stream(found.token_hash), found.version, events, ctx)
        except ConcurrencyConflict as exc:
            raise Refused("no_token", "the token changed meanwhile; try again") from exc
        log.info("token_deleted", token=tk.redact(token))
