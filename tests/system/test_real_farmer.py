"""Interop with the real client: downstream-farmer 0.1.8 from the package registry (built once by
``scripts/real_farmer.sh``, with only mechanical Python 3 patches) farms against a real
``downstream-node serve`` on each database until it has 3 accepted proofs; restarted with its
saved token it goes on; given a token the node deleted it registers again. The ledger then
verifies and the audit counts the passes. A client that cannot be built fails the test."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from reliability_support import Served, check_ledger, kill, start_serve

from downstream_node.domain.signatures import address_for, sign_message
from downstream_node.domain.tokens import token_hash

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 16384
# Above the ~10 s below which farmer 0.1.8 drops every contract after its first proof (it asks
# for the next challenge up to 5 s after the old due and wants more than 5 s left), and short
# enough for a quick second round: a farmer holding 2 contracts reaches 3 proofs only by
# asking for its next challenge (/challenge) and answering it.
INTERVAL = 15
PROOFS = 3
RUN_TIMEOUT = 180


@pytest.fixture(scope="module")
def farmer_venv() -> Path:
    # Cached after its first build (scripts/test.sh builds it before the suite runs).
    python = shutil.which("python3.11") or shutil.which("python3") or sys.executable
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "real_farmer.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHON": os.environ.get("PYTHON", python)},
    )
    if built.returncode != 0:
        pytest.fail(f"the real farmer client could not be built:\n{built.stderr[-3000:]}")
    venv = Path(built.stdout.strip().splitlines()[-1])
    assert (venv / "bin" / "downstream").exists()
    return venv


def cli(db_url: str, workdir: Path, *args: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "downstream_node.cli",
            "--db",
            db_url,
            "--secret-file",
            str(workdir / "node-secret.json"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


class Farmer:
    """One farmer's working directory: its signed identity, history and chunks."""

    def __init__(self, home: Path, key: bytes) -> None:
        self.home = home
        home.mkdir(parents=True)
        self.address = address_for(key)
        message = f"downstream interop test {secrets.token_hex(4)}"
        identity = {self.address: {"message": message, "signature": sign_message(key, message)}}
        (home / "identities.json").write_text(json.dumps(identity))

    async def run(self, venv: Path, url: str, *extra: str, chunks: int = PROOFS) -> str:
        """``downstream URL -n 3`` to the end, asking for ``chunks`` chunks' worth of space;
        the farmer's log."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        process = await asyncio.create_subprocess_exec(
            str(venv / "bin" / "downstream"),
            url,
            "-n",
            str(PROOFS),
            "-s",
            str(chunks * CHUNK),
            "-i",
            "identities.json",
            "-p",
            "history.json",
            "-d",
            "chunks",
            "--log-path",
            "farmer.log",
            "--quiet",
            *extra,
            cwd=self.home,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
        finally:
            await kill(process)
        log = (self.home / "farmer.log").read_text()
        assert process.returncode == 0, (output.decode()[-2000:], log[-4000:])
        return log

    def token(self, url: str) -> str:
        history = json.loads((self.home / "history.json").read_text())
        return history["nodes"][url]["token"]


def requests_in(served: Served) -> list[dict]:
    lines = [json.loads(line) for line in served.stderr.read_text().splitlines() if line]
    return [line for line in lines if line.get("event") == "request"]


def new_token(url: str, farmer: Farmer) -> str:
    identity = json.loads((farmer.home / "identities.json").read_text())[farmer.address]
    request = urllib.request.Request(
        f"{url}/api/downstream/v1/new/{farmer.address}",
        data=json.dumps(identity).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["token"]


async def test_the_real_client_farms_recovers_and_is_audited(
    db_url: str, tmp_path: Path, farmer_venv: Path
) -> None:
    one = Farmer(tmp_path / "farmer-one", secrets.token_bytes(32))
    two = Farmer(tmp_path / "farmer-two", secrets.token_bytes(32))
    whitelist = tmp_path / "whitelist.csv"
    whitelist.write_text(f"address,balance\n{one.address},10000\n{two.address},25000\n")
    cli(db_url, tmp_path, "initdb")
    cli(db_url, tmp_path, "whitelist", "import", str(whitelist))
    served = await start_serve(
        db_url,
        tmp_path,
        "--demo",
        "--demo-chunks",
        "12",
        "--demo-size",
        str(CHUNK),
        "--demo-interval",
        str(INTERVAL),
        "--demo-redundancy",
        "1",
    )
    try:
        # The second farmer's token is deleted by the operator before the farmer comes back.
        deleted = await asyncio.to_thread(new_token, served.url, two)
        cli(db_url, tmp_path, "token", "delete", deleted)
        first_log, second_log = await asyncio.gather(
            one.run(farmer_venv, served.url, chunks=PROOFS - 1),
            two.run(farmer_venv, served.url, "-t", deleted),
        )
        assert "Heartbeat number requirement met." in first_log
        assert "Given token did not exist on remote server" in second_log
        kept, replaced = one.token(served.url), two.token(served.url)
        assert replaced != deleted
        # Restarted, the first farmer goes on with its saved token.
        again_log = await one.run(farmer_venv, served.url)
        assert one.token(served.url) == kept
        assert "Heartbeat number requirement met." in again_log
    finally:
        await kill(served.process, 15)
    routes = [(r["method"], r["route"], r["status"]) for r in requests_in(served)]
    v1 = "/api/downstream/v1"
    heartbeat = ("GET", v1 + "/heartbeat/{token}")
    assert routes.count((*heartbeat, 404)) == 1 and routes.count((*heartbeat, 200)) == 1
    for expected in (
        ("GET", "/", 200),
        ("POST", v1 + "/new/{sjcx_address}", 200),
        ("GET", v1 + "/chunk/{token}/{size}", 200),
        ("POST", v1 + "/answer/{token}", 200),
        ("POST", v1 + "/challenge/{token}", 200),
    ):
        assert expected in routes, expected
    assert not [r for r in routes if r[2] >= 500], routes

    facts = check_ledger(db_url)  # the chain verifies, rebuilt projections equal the live ones
    cli(db_url, tmp_path, "ledger", "verify")
    by_token: dict[str, set[tuple[str, int]]] = {}
    for contract_id, index in facts.passed:
        by_token.setdefault(facts.contracts[contract_id][0], set()).add((contract_id, index))
    assert len(by_token.get(token_hash(kept), ())) >= 2 * PROOFS  # two runs
    assert len(by_token.get(token_hash(replaced), ())) >= PROOFS
    assert token_hash(deleted) not in by_token
    # Some contract had its next challenge issued and answered (/challenge, then /answer).
    assert any(index >= 1 for _, index in facts.passed)
    report = json.loads(cli(db_url, tmp_path, "audit", "uptime", "--format", "json"))
    assert report["verified"]["ok"] is True
    audited = {t["token_hash"]: t for t in report["tokens"]}
    assert audited[token_hash(kept)]["passed"] >= 2 * PROOFS
    assert audited[token_hash(replaced)]["passed"] >= PROOFS
