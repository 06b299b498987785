"""What the read model hands the live projector: the layouts of the contract and uptime rows a
fold holds, and ``Held``, the rows a decision read under the ledger lock, left in the unit of
work's memo so that the projector holds them instead of reading them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The contract columns the events change (``Rows.flush`` writes them back).
CONTRACT_MUTABLE = (
    "token_hash",
    "challenge",
    "challenge_index",
    "state",
    "interval",
    "started_at",
    "due",
    "answered",
    "expiration",
    "ended_at",
    "end_reason",
    "challenges",
    "passed",
    "failed",
    "rejected",
    "version",
)
# A held contract row: every column of the contracts table, in this order.
CONTRACT_READ = ("contract_id", "file_hash", "heartbeat", "seed", *CONTRACT_MUTABLE)
# The uptime columns the events change; a held uptime row is its key, then these.
UPTIME_FIELDS = (
    "first_start",
    "closed",
    "seg_start",
    "seg_end",
    "contracts",
    "challenges",
    "passed",
    "failed",
    "expired",
)
UPTIME_READ = ("token_hash", *UPTIME_FIELDS)

ContractRow = tuple[Any, ...]
"""A contract row, its values in ``CONTRACT_READ`` order."""
UptimeRow = tuple[Any, ...]
"""An uptime row, its values in ``UPTIME_READ`` order."""

# The unit of work's memo key under which the read model leaves its ``Held``.
MEMO_KEY = "projections.held"


@dataclass
class Held:
    """Rows read in a unit of work's transaction before any of its events were folded
    (``queries.Reader.contracts_for_pairs``), for its projector (``projector.Projector``):
    contract rows, and the uptime rows of their tokens by token hash (None: the token has
    no uptime row)."""

    contracts: list[ContractRow] = field(default_factory=list)
    uptime: dict[str, UptimeRow | None] = field(default_factory=dict)

    @staticmethod
    def of(memo: dict[str, Any]) -> Held:
        """The rows left in ``memo``, made empty there on first use (by the read model)."""
        held = memo.get(MEMO_KEY)
        if held is None:
            held = memo[MEMO_KEY] = Held()
        return held

    @staticmethod
    def left_in(memo: dict[str, Any]) -> Held | None:
        """The rows left in ``memo``, if the read model left any (for the projector)."""
        return memo.get(MEMO_KEY)
