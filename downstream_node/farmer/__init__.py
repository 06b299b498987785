"""The reference farmer: an async client of the farmers' API, usable from tests and the CLI.

A ``Farmer`` gets a token for its address, takes chunk contracts, regenerates each chunk from
its seed into a file on disk (streamed, checked against the file hash), polls ``due`` and
answers every open challenge with ``Heartbeat.fromdict(public).prove(file, challenge, tag)``.
Errors from the node arrive as ``FarmerError(status, message, http_status)``; a reply's
``Retry-After`` is honoured before the farmer's next request to that node.

Each farmer keeps its token, the node's public heartbeat and its contracts in
``<directory>/state.json`` (mode 0600: the token is a secret), keyed by node URL like the
original client's history file, so a restarted farmer goes on with the same token.

    async with Farmer(url, address, directory=path) as farmer:
        await farmer.register()
        await farmer.take_contracts(3)
        verdicts = await farmer.poll_and_answer()    # {file_hash: "pass" | "fail" | word}

``downstream-node farm`` runs ``run_farmers`` with a live display.

The modules, by concern: ``client`` (the node's HTTP API, errors, ``Retry-After``),
``state`` (the state file), ``storage`` (chunk files on disk), ``proofs`` (heartbeat
proofs of a chunk), ``receipts`` (every verdict's signed receipt, kept in
``<directory>/receipts.jsonl``, and their check against the node's log), ``loop`` (the
``Farmer``), ``swarm`` (several farmers, ``run_farmers``) and ``display`` (the farm command's
progress display). Nothing here needs the server's database: neither SQLAlchemy nor a
database driver is imported.
"""

from .client import MAX_RETRY_AFTER, PREFIX, CannotStore, FarmerError, NodeClient, retry_after
from .display import Display
from .loop import EventHook, Farmer, FarmerStats
from .proofs import corrupt_proof
from .state import STATE_FILE, Contract
from .storage import WRITE_BLOCK, intact, write_chunk
from .swarm import Swarm, run_farmers

__all__ = [
    "MAX_RETRY_AFTER",
    "PREFIX",
    "STATE_FILE",
    "WRITE_BLOCK",
    "CannotStore",
    "Contract",
    "Display",
    "EventHook",
    "Farmer",
    "FarmerError",
    "FarmerStats",
    "NodeClient",
    "Swarm",
    "corrupt_proof",
    "intact",
    "retry_after",
    "run_farmers",
    "write_chunk",
]
