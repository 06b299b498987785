"""The reference farmer runs where the node's database libraries are not installed.

Importing it, or the pure domain and heartbeat it builds on, needs neither SQLAlchemy nor
PyMySQL, and loads none of the server's layers (ledger, projections, service, the HTTP app).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_LAYERS = ("ledger", "projections", "service", "http", "node")

# Run in a fresh interpreter: a finder ahead of all others makes the database libraries
# unimportable, as on a machine without them, before anything of the package is imported.
PROGRAM = """
import importlib.abc
import json
import sys

BLOCKED = {"sqlalchemy", "pymysql"}


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, NotInstalled())
import %s

print(json.dumps(sorted(m for m in sys.modules if m.startswith("downstream_node"))))
"""


@pytest.mark.parametrize(
    "module", ["downstream_node.domain", "downstream_node.heartbeat", "downstream_node.farmer"]
)
def test_imports_without_sqlalchemy_or_pymysql(module: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM % module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert module in loaded
    server = [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in SERVER_LAYERS]
    assert server == [], f"{module} loads the server's modules {server}"
