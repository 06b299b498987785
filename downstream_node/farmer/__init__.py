"""The reference farmer (``downstream-node farm``): an async client of the farmers' API."""

from .display import Display
from .loop import (
    STATE_FILE,
    CannotStore,
    Contract,
    Farmer,
    FarmerError,
    FarmerStats,
    Swarm,
    corrupt_proof,
    intact,
    retry_after,
    run_farmers,
    write_chunk,
)

__all__ = [
    "STATE_FILE",
    "CannotStore",
    "Contract",
    "Display",
    "Farmer",
    "FarmerError",
    "FarmerStats",
    "Swarm",
    "corrupt_proof",
    "intact",
    "retry_after",
    "run_farmers",
    "write_chunk",
]
