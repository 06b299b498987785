"""The reference farmer keeps a receipt for every verdict, and ``receipts verify`` checks them
against a fresh checkpoint by inclusion proofs: all verify, and a forged one fails (exit 1)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner
from http_support import ADDRESS, new_node, serve_in_thread, stock

from downstream_node.cli import main
from downstream_node.farmer import Farmer
from downstream_node.farmer.receipts import RECEIPTS_FILE
from downstream_node.service.logkeys import LogKeys, keys_path
from downstream_node.tlog.checkpoint import Receipt


def verify(directory: Path, url: str, vkey: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(
        main, ["receipts", "verify", "--dir", str(directory), "--url", url, "--key", vkey]
    )
    # The report is the command's last line: the server in this process may log meanwhile,
    # and a logger configured by an earlier in-process command may write where this one does.
    return result.exit_code, json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_a_farmers_receipts_verify_and_a_forged_one_fails(db_url: str, tmp_path: Path) -> None:
    async def prepare() -> None:
        node, _ = new_node(db_url, tmp_path)
        await node.start()
        await stock(node, files=3)
        await node.close()

    asyncio.run(prepare())
    farm = tmp_path / "farm"
    farm.mkdir()
    keys = LogKeys.load(keys_path(tmp_path / "node-secret.json"))

    with serve_in_thread(db_url, tmp_path) as url:

        async def work() -> dict[str, str]:
            async with Farmer(url, ADDRESS, directory=farm) as farmer:
                await farmer.register()
                await farmer.take_contracts(3)
                return await farmer.poll_and_answer()

        verdicts = asyncio.run(work())
        assert sorted(verdicts.values()) == ["pass"] * 3
        lines = (farm / RECEIPTS_FILE).read_text().splitlines()
        assert len(lines) == 3
        assert verify(farm, url, keys.vkey)[:2] == (
            0,
            {"receipts": 3, "verified": 3, "failed": 0},
        )
        # The node's URL spelled another way than the farmer's: none found, and it says so.
        other = url.replace("127.0.0.1", "localhost")
        code, report, err = verify(farm, other, keys.vkey)
        assert (code, report["receipts"]) == (0, 0) and "warning: no receipts for" in err

        # A receipt the node's key signed for a position where that leaf is not: it fails.
        entry = json.loads(lines[0])
        promised = Receipt.verify(entry["receipt"], keys.verifier)
        forged = keys.receipt(promised.position + 1, promised.leaf_hash)
        with (farm / RECEIPTS_FILE).open("a") as out:
            out.write(json.dumps({**entry, "receipt": forged}) + "\n")
        code, report, err = verify(farm, url, keys.vkey)
        assert code == 1
        assert report == {
            "receipts": 4,
            "verified": 3,
            "failed": 1,
            "failures": report["failures"],
        }
        assert "is not at position" in err

        # Lines that are no receipt (bytes that are not UTF-8, JSON that is not an object)
        # count as failures, and a directory named like the file is reported, not a crash.
        with (farm / RECEIPTS_FILE).open("ab") as raw:
            raw.write(b"\xff\xfe garbage\n[1, 2]\n")
        (farm / "other" / RECEIPTS_FILE).mkdir(parents=True)
        code, report, err = verify(farm, url, keys.vkey)
        assert code == 1 and "Traceback" not in err
        assert (report["receipts"], report["verified"], report["failed"]) == (7, 3, 4)
        assert sum("an unreadable line" in f for f in report["failures"]) == 2
        assert any("cannot be read" in f for f in report["failures"])

        # Under another key, nothing verifies: the checkpoint itself is refused.
        result = CliRunner().invoke(
            main,
            [
                "receipts",
                "verify",
                "--dir",
                str(farm),
                "--url",
                url,
                "--key",
                LogKeys.generate().vkey,
            ],
        )
        assert result.exit_code == 2 and "does not verify" in result.stderr
