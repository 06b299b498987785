"""Schemathesis against the real server: a ``downstream-node serve`` process on SQLite, its own
``/api/openapi.json`` as the contract, a bounded number of generated requests per operation
(half of those that take a token get a real one). No 5xx, every status code documented, every
body of the documented media type and schema."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 25  # per operation and mode; the whole module stays well under a minute
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real ``serve`` process (always killed afterwards), a real token for half the cases."""
    workdir = tmp_path_factory.mktemp("schemathesis")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "downstream_node.cli",
            "--db",
            f"sqlite:///{workdir / 'ledger.db'}",
            "serve",
            "--port",
            "0",
            "--demo",
            "--demo-size",
            "4096",
            "--log-level",
            "warning",
            # Both modes' requests within a minute: the limits are not what is fuzzed here.
            "--new-per-minute",
            "0",
            "--requests-per-minute",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while "farm --url" not in (lines[-1] if lines else ""):
            assert time.monotonic() < deadline and process.poll() is None, lines
            lines.append(process.stdout.readline())
        url = re.search(r"listening on (http://\S+)", lines[0])[1]  # type: ignore[index]
        address = re.search(r"--address (\S+)", lines[-1])[1]  # type: ignore[index]
        token = requests.get(f"{url}/api/downstream/new/{address}", timeout=10).json()["token"]
        yield {"url": url, "token": token}
    finally:
        process.kill()
        process.wait(30)


@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value
)
def test_the_api_keeps_its_openapi_document(served: dict[str, str], mode: GenerationMode) -> None:
    """Every operation of the served document, ``MAX_EXAMPLES`` generated requests each:
    valid ones (positive) and ones that break the document's own constraints (negative)."""
    schema = schemathesis.openapi.from_url(served["url"] + "/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert (
        len(operations) == 40
    )  # 7 of the 2014-10 API and its furniture, 29 of v1, 4 of the ledger
    failures: list[str] = []
    seen: set[tuple[str, int]] = set()
    for operation in operations:
        inputs = list(operation.iter_parameters()) or operation.get_request_payload_content_types()
        if mode is GenerationMode.NEGATIVE and not inputs:
            continue  # /health, /metrics: nothing to break

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],  # no shrinking: report, do not dig
        )
        def check(case: schemathesis.Case) -> None:
            token = case.path_parameters.get("token") if case.path_parameters else None
            if isinstance(token, str) and hashlib.sha256(token.encode()).digest()[0] % 2:
                case.path_parameters["token"] = served["token"]  # reach past no_token too
            response = case.call_and_validate(base_url=served["url"], checks=CHECKS, timeout=30)
            seen.add((case.operation.label, response.status_code))

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    # the generated requests got past the parameter checks, into the node
    due = "GET /api/downstream/due/{token}"
    assert {(due, 404), (due, 200), ("GET /api/downstream/new/{sjcx_address}", 400)} <= seen
    beat = "GET /api/downstream/v1/heartbeat/{token}"
    assert {(beat, 404), ("POST /api/downstream/v1/new/{sjcx_address}", 400)} <= seen
    if mode is GenerationMode.POSITIVE:
        assert {("GET /health", 200), ("GET /metrics", 200), (beat, 200)} <= seen, seen


def test_the_document_is_the_one_served(served: dict[str, str]) -> None:
    document = requests.get(served["url"] + "/api/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.")
    assert Path(__file__).name  # the module ran against the real server's own document
