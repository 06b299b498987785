#!/usr/bin/env python3
"""Load generator for ``scripts/bench.py``: simulated farmers answering challenges over HTTP.

Runs in its own process, so the server's event loop is measured and not the client's. It reads
a plan (the node's public heartbeat, the tokens, and per file the seed, size, tag and current
challenge), computes every proof *before* the timed phase (one per file: the contracts on a file
share its encoding, see bench.py), and then lets ``--farmers`` coroutines, one per token, POST
``/answer/<token>/<file_hash>`` for each of their contracts, each exactly once.

Two modes, both printing one JSON object (answers, statuses, seconds, rate, p50/p90/p99):

- ``closed``: every farmer sends its next answer as soon as the previous one returned
  (saturation; by Little's law the latency is then about farmers / rate).
- ``paced``: the farmers together send ``--rate`` answers per second, spread evenly over them,
  and a farmer that is still waiting sends late rather than twice at once.

With ``--batch N`` each farmer sends its proofs N at a time in one request to the v1 API's bulk
``/api/downstream/v1/answer/<token>`` (as farmer 0.1.8 does, plain JSON labelled gzip): rates
and ``--rate`` are then in batches, latencies per batch, and ``passed`` counts the items
answered ``ok``.

    python scripts/bench_load.py --url http://127.0.0.1:8000 --plan plan.json \
        [--farmers 256] [--files 0:12] [--mode closed|paced] [--rate 200] [--batch 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from downstream_node.heartbeat import Merkle, SeededChunk

PREFIX = "/api/downstream"


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def build_jobs(
    plan: dict[str, Any], first: int, last: int, batch: int = 0
) -> list[list[tuple[str, bytes]]]:
    """Per farmer (token), the (path, body) of each request it sends, proofs pre-computed:
    one answer each, or with ``batch`` that many in each bulk v1 /answer."""
    beat = Merkle.fromdict(plan["heartbeat"])
    files = plan["files"][first:last]
    proofs = [
        beat.prove(SeededChunk(f["seed"], f["size"]), f["challenge"], f["tag"]).todict()
        for f in files
    ]
    if batch > 0:
        bulk = []
        for start in range(0, len(files), batch):
            items = [
                {"file_hash": f["file_hash"], "proof": proof}
                for f, proof in zip(files[start : start + batch], proofs[start:], strict=False)
            ]
            bulk.append(json.dumps({"proofs": items}, separators=(",", ":")).encode())
        return [
            [(f"{PREFIX}/v1/answer/{token}", body) for body in bulk] for token in plan["tokens"]
        ]
    bodies = [json.dumps({"proof": proof}, separators=(",", ":")).encode() for proof in proofs]
    return [
        [
            (f"{PREFIX}/answer/{token}/{f['file_hash']}", body)
            for f, body in zip(files, bodies, strict=True)
        ]
        for token in plan["tokens"]
    ]


async def run(
    url: str,
    jobs: list[list[tuple[str, bytes]]],
    *,
    mode: str,
    rate: float,
    bulk: bool = False,
) -> dict[str, Any]:
    farmers = len(jobs)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    headers = {"Content-Type": "application/json"}
    if bulk:  # as farmer 0.1.8 sends it: plain JSON under a false label
        headers["Content-Encoding"] = "gzip"
    connector = aiohttp.TCPConnector(limit=farmers, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        # Warm up: open every farmer's connection before the clock starts.
        async def warm() -> None:
            async with session.get("/health") as response:
                await response.read()

        await asyncio.gather(*(warm() for _ in range(farmers)))
        start = time.perf_counter()
        spacing = farmers / rate if mode == "paced" else 0.0

        async def farmer(n: int, mine: list[tuple[str, bytes]]) -> None:
            # Paced farmers start staggered, so that the total is ``rate`` evenly spread.
            next_at = start + (n / rate if mode == "paced" else 0.0)
            for path, body in mine:
                if mode == "paced":
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at += spacing
                sent = time.perf_counter()
                try:
                    async with session.post(path, data=body, headers=headers) as response:
                        text = await response.read()
                        code = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    key = type(exc).__name__
                else:
                    if bulk and code == 200:
                        for item in json.loads(text)["report"]:
                            word = "pass" if item.get("status") == "ok" else item.get("error")
                            statuses[str(word)] = statuses.get(str(word), 0) + 1
                        latencies.append(time.perf_counter() - sent)
                        continue
                    key = "pass" if code == 200 and b'"pass"' in text else str(code)
                    if code == 200 and key != "pass":
                        key = "200:" + text[:40].decode(errors="replace")
                latencies.append(time.perf_counter() - sent)
                statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(farmer(n, mine) for n, mine in enumerate(jobs)))
        seconds = time.perf_counter() - start
    latencies.sort()
    total = len(latencies)
    return {
        "mode": mode,
        "farmers": farmers,
        "target_rate": rate if mode == "paced" else None,
        "bulk": bulk,
        "requests": total,
        "statuses": statuses,
        "passed": statuses.get("pass", 0),
        "seconds": round(seconds, 3),
        "requests_per_s": round(total / seconds, 1),
        "passed_per_s": round(statuses.get("pass", 0) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p90_ms": round(percentile(latencies, 0.90) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--plan", required=True, type=Path)
    parser.add_argument("--files", default=":", help="FIRST:LAST slice of the plan's files")
    parser.add_argument("--mode", choices=["closed", "paced"], default="closed")
    parser.add_argument("--rate", type=float, default=100.0, help="answers/s in paced mode")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="send each farmer's answers this many times (only for a server that does not "
        "refuse a second answer: the bare limit, to make its run as long as the node's)",
    )
    parser.add_argument(
        "--batch", type=int, default=0, help="proofs per bulk v1 /answer (0: one per request)"
    )
    args = parser.parse_args()
    plan = json.loads(args.plan.read_text())
    first_text, _, last_text = args.files.partition(":")
    first = int(first_text) if first_text else 0
    last = int(last_text) if last_text else len(plan["files"])
    prepared = time.perf_counter()
    jobs = [mine * args.repeat for mine in build_jobs(plan, first, last, args.batch)]
    prepare_s = time.perf_counter() - prepared
    result = asyncio.run(run(args.url, jobs, mode=args.mode, rate=args.rate, bulk=args.batch > 0))
    if args.batch:
        result["batch"] = args.batch
    result["prepare_s"] = round(prepare_s, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
