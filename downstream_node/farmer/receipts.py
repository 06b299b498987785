"""The farmer's receipts: every verdict's signed receipt, kept in ``<directory>/receipts.jsonl``,
and their check against a fresh checkpoint of the node's transparency log by inclusion proofs
(``downstream-node receipts verify``). Needs only tlog and aiohttp, never the node's database.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..tlog import note
from ..tlog.checkpoint import Checkpoint, CheckpointError, Receipt
from ..tlog.merkle import ProofError, verify_inclusion

RECEIPTS_FILE = "receipts.jsonl"
LEDGER = "/api/ledger"


def keep(directory: Path, url: str, file_hash: str, verdict: str, receipt: str) -> None:
    """Append one receipt as a JSON line (one write, so a crash leaves whole lines)."""
    line = json.dumps(
        {"node": url.rstrip("/"), "file_hash": file_hash, "verdict": verdict, "receipt": receipt}
    )
    fd = os.open(directory / RECEIPTS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def kept(directory: Path, url: str) -> Iterator[dict[str, Any]]:
    """The receipts kept under ``directory`` (every farmer's subdirectory) for node ``url``."""
    node = url.rstrip("/")
    for path in sorted(directory.rglob(RECEIPTS_FILE)):
        try:
            lines = path.read_bytes().splitlines()
        except OSError as exc:  # a directory of that name, a file it may not read
            yield {"receipt": None, "error": f"{path}: cannot be read ({exc.strerror})"}
            continue
        for line in lines:
            if not line.strip():
                continue
            try:
                entry = json.loads(line.decode("utf-8"))
            except ValueError:  # UnicodeDecodeError is one too
                entry = None
            # A line that is no receipt object counts as a failure: it was kept for a reason.
            if not isinstance(entry, dict):
                yield {"receipt": None, "error": f"{path}: an unreadable line"}
            elif entry.get("node") == node:
                yield entry


@dataclass
class ReceiptsReport:
    receipts: int = 0
    verified: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def todict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "receipts": self.receipts,
            "verified": self.verified,
            "failed": self.failed,
        }
        if self.failures:
            out["failures"] = self.failures
        return out


class ReceiptsError(Exception):
    """The check cannot run: the node's checkpoint is unreachable or does not verify."""


async def _get(session: aiohttp.ClientSession, url: str, **params: int) -> tuple[int, Any]:
    async with session.get(url, params=params) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def verify_receipts(directory: Path, url: str, vkey: str) -> ReceiptsReport:
    """Check every receipt kept for ``url``: its signature under ``vkey``, then its leaf's
    inclusion, at its position, in a fresh checkpoint signed by the same key."""
    try:
        verifier = note.parse_verifier(vkey.strip())
    except note.NoteError as exc:
        raise ReceiptsError(f"not a verifier key: {exc}") from None
    entries = list(kept(directory, url))
    base = url.rstrip("/")
    report = ReceiptsReport(receipts=len(entries))
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            status, text = await _get(session, f"{base}{LEDGER}/checkpoint")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ReceiptsError(f"cannot fetch the checkpoint from {base}: {exc}") from None
        try:
            if status != 200 or not isinstance(text, str):
                raise CheckpointError(f"HTTP {status}")
            checkpoint = Checkpoint.verify(text, verifier)
        except (note.NoteError, CheckpointError) as exc:
            raise ReceiptsError(f"the node's checkpoint does not verify: {exc}") from None
        for n, entry in enumerate(entries, 1):
            reason = await _check(session, base, verifier, checkpoint, entry)
            if reason is None:
                report.verified += 1
            else:
                report.failed += 1
                report.failures.append(f"receipt {n} ({entry.get('file_hash')}): {reason}")
    return report


async def _check(
    session: aiohttp.ClientSession,
    base: str,
    verifier: note.Verifier,
    checkpoint: Checkpoint,
    entry: dict[str, Any],
) -> str | None:
    """Why a receipt does not hold, or None."""
    if not isinstance(entry.get("receipt"), str):
        return str(entry.get("error", "no receipt"))
    try:
        receipt = Receipt.verify(entry["receipt"], verifier)
    except (note.NoteError, CheckpointError) as exc:
        return f"its signature does not verify: {exc}"
    if receipt.position > checkpoint.size:
        return f"position {receipt.position} is beyond the node's tree ({checkpoint.size})"
    try:
        status, body = await _get(
            session,
            f"{base}{LEDGER}/proof/inclusion",
            position=receipt.position,
            size=checkpoint.size,
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"no inclusion proof: {exc}"
    if status != 200 or not isinstance(body, dict):
        return f"no inclusion proof: HTTP {status} {body}"
    try:
        proof = [base64.b64decode(h, validate=True) for h in body["hashes"]]
        verify_inclusion(
            receipt.leaf_hash, receipt.position - 1, checkpoint.size, proof, checkpoint.root_hash
        )
    except (ProofError, KeyError, TypeError, ValueError) as exc:
        return f"its leaf is not at position {receipt.position} in the signed tree: {exc}"
    return None
