"""Every command of the CLI works on a store like the one the README demo builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from engramdb.cli.main import main

import engramdb
from engramdb.encoders import HashingEncoder

TURNS = Path(__file__).resolve().parent.parent / "examples" / "conversation.jsonl"


@pytest.fixture
def demo_store(tmp_path: Path) -> Path:
    """The demo's store, built the same way (HashingEncoder instead of MiniLM: no torch)."""
    turns = [json.loads(line) for line in TURNS.open(encoding="utf-8")]
    path = tmp_path / "alice.engram"
    with engramdb.open(path, encoder=HashingEncoder(dim=64)) as mem:
        mem.ingest_many([t["text"] for t in turns], roles=[t["role"] for t in turns],
                        sessions=[t["session"] for t in turns])
        mem.integrate("Can you remind me what my guinea pig likes to eat?", top_k=3)
    return path


def test_every_command_on_the_demo_store(demo_store: Path, tmp_path: Path) -> None:
    run = CliRunner().invoke
    p = str(demo_store)
    some_id = json.loads(run(main, ["ls", p, "--json"]).output)[0]["id"]
    commands = [
        ["inspect", p], ["stats", p, "--json"], ["ls", p], ["show", p, some_id],
        ["recall", p, "guinea pig"], ["verify", p],
        ["export", p, str(tmp_path / "out.jsonl")],
        ["import", str(tmp_path / "out.jsonl"), str(tmp_path / "copy.engram")],
        ["report", p, "-o", str(tmp_path / "r.html")], ["forget", p, some_id],
        ["gc", p, "--dry-run"], ["gc", p], ["rebuild", p], ["verify", p],
        ["ingest", p, str(TURNS), "--jsonl"],
    ]
    for args in commands:
        result = run(main, args)
        assert result.exit_code == 0, (args, result.output)
