"""Helpers of the reliability, security and multi-process tests: checking a whole ledger
after the fact, running ``downstream-node serve`` as a child process (always reaped), and a
MariaDB server of a test's own (always killed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from downstream_node.domain import events as ev
from downstream_node.domain.tokens import token_hash
from downstream_node.ledger.db import make_engine
from downstream_node.ledger.store import EventStore
from downstream_node.ledger.verify import verify_chain
from downstream_node.projections.projector import Projector
from downstream_node.projections.rebuild import compare_generations, ensure_projections, rebuild
from downstream_node.projections.tables import tables_for

# -- the ledger after the fact --------------------------------------------------------------------


@dataclass
class LedgerFacts:
    head: int
    events: list  # RecordedEvent, in position order
    contracts: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (token h, file)
    passed: set[tuple[str, int]] = field(default_factory=set)  # (contract id, challenge index)

    def passes_of(self, token: str, file_hash: str) -> set[int]:
        """Challenge indexes with an AnswerPassed on any contract of ``token`` on the file."""
        hashed = token_hash(token)
        ids = {c for c, (t, f) in self.contracts.items() if (t, f) == (hashed, file_hash)}
        return {index for c, index in self.passed if c in ids}


def check_ledger(db_url: str, *, rebuild_projections: bool = True) -> LedgerFacts:
    """The hash chain verifies, positions are 1..head without a gap, every row decodes into
    its event, and (optionally) projections rebuilt from position 0 equal the live ones."""
    engine = make_engine(db_url)
    try:
        store = EventStore(engine, [Projector()])
        report = verify_chain(engine)
        assert report.ok, report.todict()
        recorded = list(store.read_all())
        head = store.head().position
        assert [e.position for e in recorded] == list(range(1, head + 1))
        facts = LedgerFacts(head, recorded)
        for item in recorded:
            domain = ev.decode(item)  # every row parses into its event type
            if isinstance(domain, ev.ContractAssigned):
                facts.contracts[domain.contract_id] = (domain.token_hash, domain.file_hash)
            elif isinstance(domain, ev.AnswerPassed):
                facts.passed.add((domain.contract_id, domain.challenge_index))
        if rebuild_projections:
            ensure_projections(store)
            done = rebuild(store)
            differences = compare_generations(engine, done.old_generation, done.new_generation)
            assert not differences, differences
        return facts
    finally:
        engine.dispose()


def event_rows_text(db_url: str) -> str:
    """Every column of every event row, as one text (to grep for secrets)."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM events ORDER BY position")).all()
    finally:
        engine.dispose()
    return "\n".join(" ".join(str(v) for v in row) for row in rows)


def live_contracts_of(db_url: str, token: str) -> list[str]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            generation = conn.execute(
                sa.text("SELECT projection_generation FROM ledger_head")
            ).scalar_one()
            c = tables_for(generation).contracts.c
            return list(
                conn.execute(
                    sa.select(c.contract_id).where(
                        c.token_hash == token_hash(token),
                        c.ended_at.is_(None),
                        c.started_at.is_not(None),
                    )
                ).scalars()
            )
    finally:
        engine.dispose()


# -- ``downstream-node serve`` as a child process -------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    process: asyncio.subprocess.Process
    url: str
    address: str | None
    lines: list[str]
    stderr: Path


def demo_args(
    redundancy: int, *, chunks: int = 6, size: int = 16384, interval: int = 2
) -> list[str]:
    """``serve`` options for a demo stock with short intervals, so that farmers answer all
    the time (a challenge every ``interval`` seconds per contract)."""
    return [
        "--demo",
        "--demo-chunks",
        str(chunks),
        "--demo-size",
        str(size),
        "--demo-interval",
        str(interval),
        "--demo-redundancy",
        str(redundancy),
    ]


async def start_serve(
    db_url: str, workdir: Path, *extra: str, port: int | None = None, name: str = "serve"
) -> Served:
    """``serve`` on 127.0.0.1 (json logs to ``workdir/<name>-<n>.log``); waits until ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    n = len(list(workdir.glob(f"{name}-*.log")))
    log_path = workdir / f"{name}-{n}.log"
    with open(log_path, "wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "downstream_node.cli",
            "--db",
            db_url,
            "--secret-file",
            str(workdir / "node-secret.json"),
            "serve",
            "--port",
            str(port if port is not None else 0),
            "--log-format",
            "json",
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        while True:
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            assert line, f"serve exited early: {lines} {log_path.read_text()[-2000:]}"
            lines.append(line.decode().strip())
            if "--demo" not in extra and "API docs" in lines[-1]:
                break
            if "farm --url" in lines[-1]:
                break
    except BaseException:
        await kill(process)
        raise
    url = re.search(r"listening on (http://\S+)", lines[0])[1]  # type: ignore[index]
    found = re.search(r"--address (\S+)", lines[-1])
    return Served(process, url, found[1] if found else None, lines, log_path)


async def kill(process: asyncio.subprocess.Process, sig: int = signal.SIGKILL) -> None:
    """Signal the child (SIGKILL: no cleanup at all) and reap it; SIGKILL after 30 s."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
    try:
        await asyncio.wait_for(process.wait(), 30)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def kill_all(processes: Iterable[asyncio.subprocess.Process]) -> None:
    for process in processes:
        await kill(process)


# -- farmer load ----------------------------------------------------------------------------------


@dataclass
class Load:
    """What the farmers saw: every ``pass`` response with its token, file and challenge;
    each error also with when it came (``clock``: seconds, monotonic)."""

    passes: list[tuple[str, str, int]] = field(default_factory=list)
    verdicts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    farmers: list = field(default_factory=list)
    error_times: list[tuple[float, str]] = field(default_factory=list)
    pass_times: list[tuple[float, str]] = field(default_factory=list)  # (when, node URL)
    clock: Callable[[], float] = time.monotonic

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def failed(self, key: str) -> None:
        self.count(self.errors, key)
        self.error_times.append((self.clock(), key))


async def farm(
    urls: list[str],
    address: str,
    directory: Path,
    stop: asyncio.Event,
    load: Load,
    *,
    farmers: int = 3,
    max_contracts: int = 6,
    poll: float = 0.2,
    registered: asyncio.Event | None = None,
) -> None:
    """Reference farmers (farmer i talks to ``urls[i % len(urls)]``) until ``stop``: they
    take contracts, poll and answer, and ride out a node that dies and comes back."""
    import aiohttp

    from downstream_node.farmer import Farmer, FarmerError

    def seen(farmer: Farmer, kind: str, data: dict) -> None:
        if kind == "answer":
            load.count(load.verdicts, data["verdict"])
            if data["verdict"] == "pass":
                contract = farmer.contracts[data["file_hash"]]
                index = int(contract.challenge["index"])
                load.passes.append((str(farmer.token), data["file_hash"], index))
                load.pass_times.append((load.clock(), farmer.url))
        elif kind == "refused":
            load.count(load.verdicts, data["status"])

    async def run(farmer: Farmer) -> None:
        while not stop.is_set():
            try:
                if farmer.token is None:
                    await farmer.register()
                if len(farmer.contracts) < max_contracts:
                    await farmer.take_contracts(max_contracts)
                await farmer.poll_and_answer()
            except FarmerError as exc:
                load.failed(f"{exc.http_status} {exc.status}")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                load.failed(type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)

    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        team = [
            Farmer(
                urls[i % len(urls)],
                address,
                directory=directory / f"farmer-{i}",
                session=session,
                on_event=seen,
                name=f"farmer-{i}",
            )
            for i in range(farmers)
        ]
        load.farmers = team
        for farmer in team:  # every token before any fault: a lost /new reply costs a slot
            await farmer.register()
        if registered is not None:
            registered.set()
        # gather(poll_and_answer) may leave answers running after a transport error: let
        # them finish (they still report their verdicts) before the session closes.
        await asyncio.gather(*(run(f) for f in team))
        stragglers = [
            t
            for t in asyncio.all_tasks()
            if "poll_and_answer" in getattr(t.get_coro(), "__qualname__", "")
        ]
        if stragglers:
            await asyncio.wait(stragglers, timeout=15)


def assert_passes_recorded(load: Load, facts: LedgerFacts) -> None:
    missing = [
        (token[:4], file_hash[:8], index)
        for token, file_hash, index in load.passes
        if index not in facts.passes_of(token, file_hash)
    ]
    assert not missing, f"{len(missing)} pass responses not in the ledger: {missing[:10]}"


# -- a MariaDB server of the test's own -----------------------------------------------------------

MARIADBD = "/usr/sbin/mariadbd"


@dataclass
class PrivateMariaDB:
    url: str
    process: asyncio.subprocess.Process
    directory: Path


@contextlib.asynccontextmanager
async def private_mariadb() -> AsyncIterator[PrivateMariaDB]:
    """A MariaDB server of the test's own (its own data directory, port and socket, root
    without a password over TCP), for tests that stop or kill the server itself; killed and
    its directory removed at the end, always. Under /tmp, not pytest's 0700 directory: the
    server runs as ``mysql`` when the tests run as root."""
    assert os.access(MARIADBD, os.X_OK), f"{MARIADBD} is missing (scripts/test.sh installs it)"
    directory = Path(tempfile.mkdtemp(prefix="downstream-mariadb-"))
    process = None
    try:
        data = directory / "data"
        data.mkdir()
        as_user: list[str] = []
        if os.geteuid() == 0:
            directory.chmod(0o755)
            shutil.chown(directory, "mysql", "mysql")
            shutil.chown(data, "mysql", "mysql")
            as_user = ["--user=mysql"]
        install = await asyncio.create_subprocess_exec(
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data}",
            *as_user,
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(install.communicate(), 120)
        assert install.returncode == 0, err.decode()[-2000:]
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            MARIADBD,
            "--no-defaults",
            f"--datadir={data}",
            f"--port={port}",
            f"--socket={directory / 'mysqld.sock'}",
            f"--pid-file={directory / 'mysqld.pid'}",
            f"--log-error={directory / 'error.log'}",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--performance-schema=OFF",
            "--innodb-buffer-pool-size=64M",
            *as_user,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        base = f"mysql+pymysql://root@127.0.0.1:{port}"
        for _ in range(300):  # up within 30 s
            try:
                engine = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
                with engine.connect() as conn:
                    conn.exec_driver_sql("CREATE DATABASE test CHARACTER SET utf8mb4")
                break
            except sa.exc.OperationalError:
                assert process.returncode is None, (directory / "error.log").read_text()[-2000:]
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the private MariaDB did not start within 30 s")
        yield PrivateMariaDB(f"{base}/test", process, directory)
    finally:
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)  # the test may have left it stopped
            await kill(process)
        shutil.rmtree(directory, ignore_errors=True)
