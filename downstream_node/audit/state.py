"""Saved audit states (``--state DIR``): a fold's state at an audited position, as JSON.

The document names the position and its chain hash, the scoring version, the options that
shape the fold and a format version, and carries a checksum: a state that does not match the
ledger or the run is refused (``StateError``, exit 2), never silently used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .replay import ContractStats, Replay, TokenStats
from .reputation import SCORING_VERSION, Reputation
from .run import AuditError

STATE_FORMAT = "downstream-audit-state/1"

# The keys every state has, and what each must be; ``position`` is checked apart (a whole
# number, not negative).
_KEYS: dict[str, tuple[type, str]] = {
    "hash": (str, "a string"),
    "scoring_version": (str, "a string"),
    "options": (dict, "an object"),
    "fold": (dict, "an object"),
}


class StateError(AuditError):
    """A saved state that cannot be used for this ledger or these options."""


def _checksum(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def state_path(directory: Path, kind: str) -> Path:
    return directory / f"{kind}.json"


def save_state(
    directory: Path,
    kind: str,
    *,
    position: int,
    chain_hash: str,
    options: dict[str, Any],
    fold: dict[str, Any],
) -> Path:
    """Write the state atomically (a crash leaves the previous one or the new one, whole);
    a directory or file that cannot be written is a ``StateError`` (the old state is kept)."""
    body = {
        "format": STATE_FORMAT,
        "kind": kind,
        "position": position,
        "hash": chain_hash,
        "scoring_version": SCORING_VERSION,
        "options": options,
        "fold": fold,
    }
    path = state_path(directory, kind)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps({**body, "checksum": _checksum(body)}, sort_keys=True)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a half-written temporary file, if any
            tmp.unlink()
        raise StateError(
            f"cannot save the state in {directory} ({exc.strerror or exc}); "
            "the previous state, if any, is kept"
        ) from None
    return path


def load_state(directory: Path, kind: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state of this kind, checked against these options; ``None`` if there is none."""
    path = state_path(directory, kind)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        body = {k: v for k, v in data.items() if k != "checksum"}
        intact = isinstance(data, dict) and data.get("checksum") == _checksum(body)
    except (OSError, ValueError, AttributeError) as exc:
        raise StateError(f"the saved state {path} cannot be read ({exc}); remove it") from None
    if not intact:
        raise StateError(f"the saved state {path} is corrupt (its checksum does not match)")
    if data.get("format") != STATE_FORMAT or data.get("kind") != kind:
        raise StateError(
            f"the saved state {path} is of format {data.get('format')!r}, kind "
            f"{data.get('kind')!r}; this auditor writes {STATE_FORMAT!r}, kind {kind!r}"
        )
    # A valid checksum vouches only for the bytes: a tool that rewrote the file with its own
    # checksum may have dropped or retyped a key, which would fail later as a KeyError.
    position = data.get("position")
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise _corrupt(path, "'position' is missing or not a whole number")
    for key, (kind, name) in _KEYS.items():
        if not isinstance(data.get(key), kind):
            raise _corrupt(path, f"{key!r} is missing or not {name}")
    if data["scoring_version"] != SCORING_VERSION:
        raise StateError(
            f"the saved state {path} was scored with {data['scoring_version']}, this auditor "
            f"scores with {SCORING_VERSION}; use another --state directory"
        )
    if data["options"] != options:
        changed = sorted(
            k
            for k in set(options) | set(data["options"])
            if options.get(k) != data["options"].get(k)
        )
        raise StateError(
            f"the saved state {path} was made with other options ({', '.join(changed)}); "
            "use the same options or another --state directory"
        )
    return data


def _corrupt(path: Path, what: str) -> StateError:
    return StateError(f"the saved state {path} is corrupt ({what}); remove it")


# -- the uptime replay's state ------------------------------------------------------------------


def uptime_fold_state(replay: Replay) -> dict[str, Any]:
    """Everything ``Replay`` holds (without chart series), as JSON-ready data."""
    return {
        "position": replay.position,
        "events": replay.events,
        "first_time": replay.first_time,
        "last_time": replay.last_time,
        "unmatched": replay.unmatched,
        "tokens": [
            {
                "token_hash": t.token_hash,
                "address": t.address,
                "created_at": t.created_at,
                "deleted_at": t.deleted_at,
                "counters": [t.challenges, t.passed, t.failed, t.rejected, t.missed],
                "contracts_assigned": t.contracts_assigned,
                "coverage": [
                    t.coverage.first_start,
                    t.coverage.closed,
                    t.coverage.seg_start,
                    t.coverage.seg_end,
                    t.coverage.closed_in_window,
                ],
                "reputation": {
                    "alpha": t.reputation.alpha,  # floats: JSON keeps them to the last bit
                    "beta": t.reputation.beta,
                    "audits": t.reputation.audits,
                    # In the dict's own order, so a resumed fold iterates as the original.
                    "windows": [[w, *c] for w, c in t.reputation.windows.items()],
                    "oldest": t.reputation._oldest,
                },
            }
            for t in replay.tokens.values()
        ],
        "contracts": [
            [getattr(c, name) for name in ContractStats.__slots__]  # type: ignore[attr-defined]
            for c in replay.contracts.values()
        ],
    }


def load_uptime_fold(replay: Replay, data: dict[str, Any]) -> None:
    """Restore ``uptime_fold_state`` into a fresh ``Replay`` made with the same options."""
    replay.position = int(data["position"])
    replay.events = int(data["events"])
    replay.first_time = data["first_time"]
    replay.last_time = data["last_time"]
    replay.unmatched = int(data["unmatched"])
    for item in data["tokens"]:
        token = replay._token(item["token_hash"], item["address"], item["created_at"])
        token.deleted_at = item["deleted_at"]
        (token.challenges, token.passed, token.failed, token.rejected, token.missed) = item[
            "counters"
        ]
        token.contracts_assigned = int(item["contracts_assigned"])
        cov = token.coverage
        cov.first_start, cov.closed, cov.seg_start, cov.seg_end, cov.closed_in_window = item[
            "coverage"
        ]
        rep = item["reputation"]
        reputation = Reputation(replay.params)
        reputation.alpha, reputation.beta = float(rep["alpha"]), float(rep["beta"])
        reputation.audits = int(rep["audits"])
        reputation.windows = {int(w): [int(a), int(b)] for w, a, b in rep["windows"]}
        reputation._oldest = int(rep["oldest"])
        token.reputation = reputation
    names = ContractStats.__slots__  # type: ignore[attr-defined]
    for values in data["contracts"]:
        contract = ContractStats(**dict(zip(names, values, strict=True)))
        replay.contracts[contract.contract_id] = contract
        if contract.ended_at is None:  # the live ones, as _assigned and _end keep them
            token: TokenStats = replay.tokens[contract.token_hash]
            token.live[contract.contract_id] = contract
            replay.live_by_file.setdefault(contract.file_hash, {})[contract.contract_id] = contract
