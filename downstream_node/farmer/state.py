"""The farmer's state file, ``<directory>/state.json`` (mode 0600: the token is a secret):
per node URL the address, token, public heartbeat and contracts, so a restarted farmer goes
on with the same token, keyed by node URL like the original client's history file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..heartbeat import HeartbeatError, Merkle, Swizzle
from .client import describe_error
from .proofs import beat_for

STATE_FILE = "state.json"

Warn = Callable[[str], None]  # told about a state file that cannot be read (and is ignored)


@dataclass
class Contract:
    file_hash: str
    seed: str
    size: int
    tag: dict[str, Any]
    challenge: dict[str, Any]
    due: str
    expiration: str
    path: Path
    repaired: dict[str, Any] | None = None  # the challenge the chunk was last rewritten for

    def todict(self) -> dict[str, Any]:
        keys = ("seed", "size", "tag", "challenge", "due", "expiration")
        return {key: getattr(self, key) for key in keys}


@dataclass
class Saved:
    """What the state file holds for one node and address."""

    token: str
    heartbeat: dict[str, Any]
    beat: Merkle | Swizzle
    contracts: dict[str, Contract]


def read_state(path: Path, warn: Warn) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        warn(f"ignoring unreadable {path}: {describe_error(exc)}")
        return {}
    return state if isinstance(state, dict) else {}


def save_node(
    path: Path,
    url: str,
    address: str,
    token: str | None,
    heartbeat: dict[str, Any] | None,
    contracts: dict[str, Contract],
    warn: Warn,
) -> None:
    """Write the token, the heartbeat and the contracts for ``url`` (other nodes are kept);
    without a token, forget ``url``."""
    state = read_state(path, warn)
    nodes = state.get("nodes")
    if not isinstance(nodes, dict):
        nodes = state["nodes"] = {}
    if token is None:
        nodes.pop(url, None)
    else:
        nodes[url] = {
            "address": address,
            "token": token,
            "heartbeat": heartbeat,
            "contracts": {h: c.todict() for h, c in contracts.items()},
        }
    write_private(path, json.dumps(state, sort_keys=True))


def load_node(directory: Path, url: str, address: str, warn: Warn) -> Saved | None:
    """The token saved for ``url`` and ``address`` with its contracts, or None.

    As in the original client, a saved token for another address is not used.
    """
    try:
        saved = read_state(directory / STATE_FILE, warn)["nodes"][url]
        if saved["address"] != address:
            return None
        token, heartbeat = str(saved["token"]), saved["heartbeat"]
        beat = beat_for(heartbeat)
        contracts = {
            h: Contract(
                file_hash=h,
                seed=c["seed"],
                size=int(c["size"]),
                tag=c["tag"],
                challenge=c["challenge"],
                due=c["due"],
                expiration=c["expiration"],
                path=directory / h,
            )
            for h, c in saved.get("contracts", {}).items()
        }
    except (KeyError, TypeError, ValueError, AttributeError, HeartbeatError):
        return None
    return Saved(token, heartbeat, beat, contracts)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.unlink(missing_ok=True)  # a leftover could have a wider mode, which open() keeps
    with open(tmp, "w", encoding="utf-8", opener=lambda p, f: os.open(p, f, 0o600)) as out:
        out.write(text)
    os.replace(tmp, path)
