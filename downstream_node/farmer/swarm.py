"""Several farmers side by side: the ``Swarm`` that holds them and adds up their stats, and
``run_farmers``, which ``downstream-node farm`` runs with a live display.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .client import FarmerError, describe_error
from .loop import EventHook, Farmer, FarmerStats
from .v1 import V1Farmer


@dataclass
class Swarm:
    """Several farmers on one address (each with its own token and directory)."""

    farmers: list[Farmer] = field(default_factory=list)

    def totals(self) -> FarmerStats:
        total = FarmerStats()
        for farmer in self.farmers:
            for key, value in farmer.stats.todict().items():
                setattr(total, key, getattr(total, key) + value)
        return total


async def run_farmers(
    url: str,
    address: str | None,
    *,
    api: str = "2014-10",
    farmers: int = 1,
    directory: str | Path = "farm-data",
    duration: float | None = None,
    max_contracts: int = 10,
    poll_seconds: float = 5.0,
    wrong_proofs: bool = False,
    on_event: EventHook | None = None,
    stop: asyncio.Event | None = None,
    swarm: Swarm | None = None,
) -> Swarm:
    """Run ``farmers`` farmers side by side until ``duration`` passes or ``stop`` is set.

    Farmers whose registration the node refuses are reported through ``on_event`` and end;
    the others go on. Pass ``swarm`` to watch the farmers while they run. ``api="v1"``
    farms through the v1 API (``farmer/v1.py``), each farmer signing with the key kept in its
    state file (for ``address``, or its own when None).
    """
    kind = V1Farmer if api == "v1" else Farmer
    stop = stop or asyncio.Event()
    swarm = swarm if swarm is not None else Swarm()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for i in range(farmers):
            swarm.farmers.append(
                kind(
                    url,
                    address,  # type: ignore[arg-type]
                    directory=Path(directory) / f"farmer-{i + 1}",
                    session=session,
                    wrong_proofs=wrong_proofs,
                    name=f"farmer-{i + 1}",
                    on_event=on_event,
                )
            )

        async def one(farmer: Farmer) -> None:
            try:
                await farmer.run(
                    duration=duration,
                    max_contracts=max_contracts,
                    poll_seconds=poll_seconds,
                    stop=stop,
                )
            except FarmerError as exc:
                farmer.ended = str(exc)
            except (TimeoutError, aiohttp.ClientError) as exc:
                farmer.ended = f"cannot reach {url}: {describe_error(exc)}"
            except OSError as exc:  # its directory or state file
                farmer.ended = f"{type(exc).__name__}: {describe_error(exc)}"
            else:
                return
            farmer.record_error(farmer.ended)

        await asyncio.gather(*(one(f) for f in swarm.farmers))
    return swarm
