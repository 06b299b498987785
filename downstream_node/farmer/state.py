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

Warn = Callable[[str], None]  # told about a saved contract that cannot be read (and is skipped)


class UnreadableState(OSError):
    """The state file exists but cannot be read, or is not the farmer's: it may hold tokens
    and v1 signing keys that cannot be made again, so nothing overwrites it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"cannot use {path}: {reason}; it may hold this farmer's token and signing key, "
            "so it is left as it is: repair it, or move it aside to start afresh"
        )


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


def read_state(path: Path) -> dict[str, Any]:
    """The state file's object, ``{}`` when there is none; ``UnreadableState`` when it
    exists but cannot be read or parsed."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return {}  # nothing saved (a file where its directory should be holds none either)
    except (OSError, ValueError) as exc:
        raise UnreadableState(path, describe_error(exc)) from None
    if not isinstance(state, dict):
        raise UnreadableState(path, "it holds no JSON object")
    return state


def save_node(
    path: Path,
    url: str,
    address: str,
    token: str | None,
    heartbeat: dict[str, Any] | None,
    contracts: dict[str, Contract],
) -> None:
    """Write the token, the heartbeat and the contracts for ``url`` (other nodes are kept);
    without a token, forget ``url``."""
    state = read_state(path)
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

    As in the original client, a saved token for another address is not used. A saved
    token that cannot be read is ``UnreadableState`` (registering anew would lose it to
    the node's tokens-per-IP limit); a contract that cannot be read is skipped, with a
    warning.
    """
    path = directory / STATE_FILE
    nodes = read_state(path).get("nodes", {})
    saved = nodes.get(url) if isinstance(nodes, dict) else None
    if saved is None:
        return None
    try:
        if saved["address"] != address:
            return None
        token, heartbeat = str(saved["token"]), saved["heartbeat"]
        beat = beat_for(heartbeat)
        entries = saved.get("contracts", {})
        if not isinstance(entries, dict):
            raise TypeError("contracts is not an object")
    except (KeyError, TypeError, ValueError, AttributeError, HeartbeatError) as exc:
        raise UnreadableState(path, f"the token saved for {url}: {exc!r}") from None
    contracts = {}
    for h, c in entries.items():
        try:
            contracts[h] = Contract(
                file_hash=h,
                seed=c["seed"],
                size=int(c["size"]),
                tag=c["tag"],
                challenge=c["challenge"],
                due=c["due"],
                expiration=c["expiration"],
                path=directory / h,
            )
        except (KeyError, TypeError, ValueError) as exc:
            warn(f"skipping the saved contract {h[:12]}, which cannot be read: {exc!r}")
    return Saved(token, heartbeat, beat, contracts)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.unlink(missing_ok=True)  # a leftover could have a wider mode, which open() keeps
    with open(tmp, "w", encoding="utf-8", opener=lambda p, f: os.open(p, f, 0o600)) as out:
        out.write(text)
    os.replace(tmp, path)
