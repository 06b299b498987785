"""``scripts/bench.py`` keeps working: a tiny run on SQLite prints one JSON document with every
figure beside its limit. Only its shape is checked; speed is measured by the script, never here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"


def figure_shape(figure: dict) -> None:
    assert set(figure) >= {"value", "limit", "ratio", "target", "met"}
    assert figure["value"] > 0 and figure["limit"] > 0
    assert isinstance(figure["met"], bool)


@pytest.mark.slow
def test_bench_script_prints_every_figure_beside_its_limit(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--db",
        "sqlite",
        "--events",
        "3000",
        "--append-events",
        "64",
        "--farmers",
        "8",
        "--files",
        "4",
        "--skip",
        "heartbeat",
        "--output",
        str(output),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert json.loads(output.read_text()) == report
    assert report["machine"]["cores"] >= 1 and report["machine"]["sqlite"]
    sqlite = report["databases"]["sqlite"]

    appends = sqlite["appends"]
    assert set(appends["writers"]) == {"1", "16", "64"}
    assert appends["limit"]["rows"] == appends["writers"]["64"]["events"]
    figure_shape(appends["at_64_writers"])

    for name in ("rebuild", "audit_replay"):
        assert sqlite[name]["events"] == sqlite[name]["generated"]["events"] >= 3000
        figure_shape(sqlite[name]["figure"])

    growth = sqlite["growth"]
    assert len(growth["steps"]) == 3 and growth["sizes"] == sorted(growth["sizes"])
    assert growth["sizes"][0] >= 3000 and growth["sizes"][-1] >= 12000
    for step in growth["steps"]:
        assert step["bytes_per_event"] > 0 and step["rebuild_s"] > 0
    for part in ("rebuild", "audit_uptime", "audit_redundancy"):
        assert isinstance(growth["linear"][part]["met"], bool)
    for part in ("audit_uptime", "audit_redundancy"):
        assert growth["incremental"][part]["new_events"] == 10_000
        assert isinstance(growth["incremental"][part]["met"], bool)

    http = sqlite["http"]
    assert set(http["node"]) == set(http["limit_bare_aiohttp"])
    assert {"saturated", "paced_half"} <= set(http["node"])
    for run in http["node"].values():
        assert run["statuses"] == {"pass": run["requests"]} and run["requests"] > 0
    figure_shape(http["answers"])
    assert http["p99"]["value_ms"] > 0 and isinstance(http["p99"]["met"], bool)
    # The bulk v1 /answer beside it, every proof of every batch verified and passed.
    bulk = http["bulk"]
    for run in bulk["runs"].values():
        assert run["statuses"] == {"pass": run["passed"]} and run["passed"] > run["requests"] > 0
    assert bulk["answers"]["value"] > 0 and bulk["answers"]["per_contract_route"] > 0
    assert isinstance(bulk["answers"]["met"], bool) and bulk["p99"]["value_ms"] > 0
