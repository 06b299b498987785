#!/usr/bin/env python3
"""The HTTP limit for ``scripts/bench.py``: a bare aiohttp JSON route on the answer's path.

It parses the JSON body and answers ``{"status": "pass"}``: what any aiohttp JSON endpoint
costs on this machine, with no node, database, verification or middleware behind it.

    python scripts/bench_bare.py [--host 127.0.0.1] [--port 0]   # prints "listening on URL"
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web


async def answer(request: web.Request) -> web.Response:
    body = await request.json()
    if not isinstance(body, dict) or "proof" not in body:
        return web.json_response({"status": "bad_request"}, status=400)
    return web.json_response({"status": "pass"})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_post("/api/downstream/answer/{token}/{file_hash}", answer)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"listening on http://{bound_host}:{bound_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
