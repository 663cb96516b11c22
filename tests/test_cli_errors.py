"""Every command fails with one line and a documented exit code: bad paths, locked stores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from engramdb.cli.main import main

import engramdb
from tests.cli_support import build_store, run
from tests.conftest import python_env

ID = "0" * 64
# each command with the arguments it needs after PATH
COMMANDS: list[tuple[str, list[str]]] = [
    ("inspect", []), ("stats", []), ("ls", []), ("show", [ID]), ("recall", ["q"]),
    ("forget", [ID]), ("gc", []), ("rebuild", []), ("verify", []), ("report", ["-o", "r.html"]),
    ("export", ["out.jsonl"]), ("reembed", ["--encoder", "hashing"]),
]


def test_every_command_is_covered_here() -> None:
    # ingest and import create stores; mcp serves a root of them (its errors: tests/test_mcp.py)
    # and users and fleet go over one (their errors: tests/test_pool_users.py, test_fleet.py)
    assert {c for c, _ in COMMANDS} | {"ingest", "import", "mcp", "users", "fleet"} \
        == set(main.commands)


@pytest.mark.parametrize(("command", "extra"), COMMANDS)
def test_missing_store(tmp_path: Path, command: str, extra: list[str]) -> None:
    path = tmp_path / "nope.engram"
    result = run(command, path, *[str(tmp_path / e) if e.endswith((".html", ".jsonl")) else e
                                  for e in extra])
    assert result.exit_code == 1, result.output
    assert "no store at" in result.output and "Traceback" not in result.output
    assert not path.exists()  # reading never creates a store


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_path_that_is_not_a_store(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "thing"
    if kind == "file":
        path.write_text("hello")
    else:
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    result = run("stats", path)
    assert result.exit_code == 1 and "Error:" in result.output
    assert ("is a file" if kind == "file" else "without an engramdb manifest") in result.output


@pytest.mark.parametrize(("command", "extra"), COMMANDS)
def test_store_locked_in_this_process(tmp_path: Path, command: str, extra: list[str]) -> None:
    path = tmp_path / "alice.engram"
    build_store(path, rich=False)
    with engramdb.open(path):
        result = run(command, path, *[str(tmp_path / e) if e.endswith((".html", ".jsonl"))
                                      else e for e in extra])
    assert result.exit_code == 2, result.output
    assert "is open in this process" in result.output and "Traceback" not in result.output


def test_store_locked_by_another_process_names_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "alice.engram"
    build_store(path, rich=False)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, engramdb; m = engramdb.open(sys.argv[1]); print('ready', flush=True); "
         "sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=python_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        result = run("stats", path)
        assert result.exit_code == 2
        assert f"is open in process {holder.pid}" in result.output
        waited = run("stats", path, "--wait", "0.1")
        assert waited.exit_code == 2
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert run("stats", path).exit_code == 0


def test_help_short_flag_and_examples() -> None:
    for name in main.commands:
        result = run(name, "-h")
        assert result.exit_code == 0 and "Example" in result.stdout, name
