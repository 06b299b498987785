"""The node: one object holding the command groups of the service layer, as ``serve``, the
CLI, the tests and the scripts use it. Each command reads the projections, lets a pure
decision of the domain say which events to write, and appends them (service/*.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import logs  # noqa: F401 - logs go to stderr even when used as a library
from ..config import Settings
from ..domain import contracts as cn
from ..domain.clock import Clock
from ..heartbeat.scheme import ProofScheme
from . import bootstrap, lifecycle
from .answers import Answers, Verdict
from .context import OPERATOR, Context
from .contracts import ContractCommands
from .ledger import LedgerLog
from .limits import MinuteLimit
from .operator import OperatorCommands
from .tokens import TokenCommands
from .v1 import V1Commands


class Node:
    """The node's commands over one runtime (settings, clock, scheme, database plumbing)."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        scheme: ProofScheme | None = None,
        workers: int = 4,
    ) -> None:
        self.rt = bootstrap.runtime(settings, clock, workers=workers)
        self.rt.scheme = scheme
        self.tokens = TokenCommands(self.rt)
        self.operator = OperatorCommands(self.rt)
        self.contracts = ContractCommands(self.rt)
        self.answers = Answers(self.rt)
        # The v1 API's bulk commands, over the same commands as the 2014-10 routes.
        self.v1 = V1Commands(self.rt, self.tokens, self.contracts, self.answers)
        self.ledger = LedgerLog(self.rt)

    # -- what the runtime holds, as callers have always reached it -------------------------------

    @property
    def settings(self) -> Settings:
        return self.rt.settings

    @property
    def clock(self) -> Clock:
        return self.rt.clock

    @property
    def scheme(self) -> ProofScheme | None:
        return self.rt.scheme

    @property
    def engine(self) -> Any:
        return self.rt.engine

    @property
    def store(self) -> Any:
        return self.rt.store

    @property
    def read_model(self) -> Any:
        return self.rt.read_model

    @property
    def committer(self) -> Any:
        return self.rt.committer

    @property
    def on_answer(self) -> Callable[[str], None] | None:
        """Called with each recorded verdict ("pass"/"fail"): the metrics hook."""
        return self.answers.on_answer

    @on_answer.setter
    def on_answer(self, hook: Callable[[str], None] | None) -> None:
        self.answers.on_answer = hook

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> Node:
        """Schema, projections and the ledger's secret (see ``lifecycle.start``). Its waits
        for the database are not bound by ``db_wait``, a farmer's request's budget: a node
        whose first appends on a slow database take longer starts all the same."""
        with self.rt.wait_budget(math.inf):
            await lifecycle.start(self.rt)
        return self

    async def close(self) -> None:
        await self.rt.close()

    async def health(self) -> dict[str, Any]:
        return await lifecycle.health(self.rt)

    def minute_limit(
        self,
        name: str,
        limit: int,
        *,
        max_lease: int = 1,
        stored_as: Callable[[str], str] | None = None,
    ) -> MinuteLimit:
        """A per-minute rate limit held across every process on this ledger's database."""
        return MinuteLimit(self.rt, name, limit, max_lease=max_lease, stored_as=stored_as)

    async def files_below_target(self) -> tuple[int, int]:
        return await lifecycle.files_below_target(self.rt)

    # -- the operator ---------------------------------------------------------------------------

    async def whitelist(self, entries: Sequence[tuple[str, str]], ctx: Context = OPERATOR) -> int:
        return await self.operator.whitelist(entries, ctx)

    async def add_file(
        self,
        path: str | Path,
        *,
        redundancy: int | None = None,
        interval: int | None = None,
        ctx: Context = OPERATOR,
    ) -> str:
        return await self.operator.add_file(path, redundancy=redundancy, interval=interval, ctx=ctx)

    async def add_seeded(
        self,
        size: int | None = None,
        *,
        seed: str | None = None,
        redundancy: int | None = None,
        interval: int | None = None,
        ctx: Context = OPERATOR,
    ) -> str:
        return await self.operator.add_seeded(
            size, seed=seed, redundancy=redundancy, interval=interval, ctx=ctx
        )

    async def remove_file(self, file_hash: str, ctx: Context = OPERATOR) -> None:
        await self.operator.remove_file(file_hash, ctx)

    # -- tokens ---------------------------------------------------------------------------------

    async def create_token(
        self, address: str, ctx: Context = OPERATOR
    ) -> tuple[str, dict[str, Any]]:
        return await self.tokens.create_token(address, ctx)

    async def delete_token(self, token: str, ctx: Context = OPERATOR) -> None:
        await self.tokens.delete_token(token, ctx)

    # -- a farmer's contracts -------------------------------------------------------------------

    async def chunk(self, token: str, ctx: Context = OPERATOR) -> dict[str, Any]:
        return await self.contracts.chunk(token, ctx)

    async def due(self, token: str, ctx: Context = OPERATOR) -> dict[str, Any]:
        return await self.contracts.due(token, ctx)

    async def answer(self, token: str, file_hash: str, proof: Any, ctx: Context = OPERATOR) -> str:
        return await self.answers.answer(token, file_hash, proof, ctx)

    async def answer_receipted(
        self, token: str, file_hash: str, proof: Any, ctx: Context = OPERATOR
    ) -> Verdict:
        """The verdict with the node's signed receipt for it (``Verdict``)."""
        return await self.answers.answer_receipted(token, file_hash, proof, ctx)

    async def remove(self, token: str, file_hash: str, ctx: Context = OPERATOR) -> None:
        await self.contracts.remove(token, file_hash, ctx)

    async def sweep_expired(self, ctx: Context = OPERATOR, token_hash: str | None = None) -> int:
        return await self.contracts.sweep_expired(ctx, token_hash)

    # -- for tests and benchmarks ---------------------------------------------------------------

    def _now(self) -> int:
        return self.rt.now()

    def _encode(self, file: cn.FileView, now: int) -> tuple[dict, dict, dict, dict]:
        return self.contracts.encodings.encode(file, now)
