"""`engramdb forget`, `gc` and `rebuild`: erasing and maintenance."""

from __future__ import annotations

from pathlib import Path

import pytest

import engramdb
from tests.cli_support import build_store, run, run_json


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "alice.engram"
    return path, build_store(path, rich=False)


def test_forget_by_id_and_prefix_then_gc(store: tuple[Path, list[str]]) -> None:
    path, ids = store
    result = run("forget", path, ids[0], ids[1][:10])
    assert result.exit_code == 0 and "forgot 2 engrams" in result.stdout
    left = {r["id"] for r in run_json("ls", path, "--limit", "100")}
    assert not left & set(ids[:2])
    log = run_json("inspect", path)["forgetting_log"]
    assert {e["id"] for e in log} >= set(ids[:2])
    if not hasattr(engramdb.Store, "gc"):
        pytest.skip("Store.gc() does not exist in this engramdb yet")
    dry = run_json("gc", path, "--dry-run")
    assert dry["dry_run"] is True and dry["erased"] == 3  # 2 here + 1 in build_store
    done = run_json("gc", path)
    assert done["erased"] == 3
    assert run_json("gc", path, "--dry-run")["erased"] == 0
    human = run("gc", path)
    assert human.exit_code == 0 and "gc" in human.stdout
    assert run("verify", path).exit_code == 0


def test_forget_unknown_id_forgets_nothing(store: tuple[Path, list[str]]) -> None:
    path, ids = store
    result = run("forget", path, ids[0], "f" * 64)
    assert result.exit_code == 1 and "no engram" in result.output
    assert ids[0] in {r["id"] for r in run_json("ls", path, "--limit", "100")}


def test_forget_needs_an_id(store: tuple[Path, list[str]]) -> None:
    assert run("forget", store[0]).exit_code == 2


def test_rebuild(store: tuple[Path, list[str]]) -> None:
    result = run("rebuild", store[0])
    if not hasattr(engramdb.Store, "rebuild"):
        assert result.exit_code == 1 and "no Store.rebuild()" in result.output
        pytest.skip("Store.rebuild() does not exist in this engramdb yet")
    assert result.exit_code == 0 and "rebuilt" in result.stdout
    assert run("verify", store[0]).exit_code == 0
