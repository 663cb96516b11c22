"""`engramdb inspect` and `engramdb stats`: what a store holds, for people and for programs."""

from __future__ import annotations

from pathlib import Path

import pytest

from engramdb.storage.manifest import FORMAT_VERSION
from tests.cli_support import build_store, run, run_json


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inspect") / "alice.engram"
    build_store(path)
    return path


def test_inspect_shows_format_encoder_kinds_files_and_forgetting_log(store: Path) -> None:
    result = run("inspect", store)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for needle in ("format version", '"kind": "hashing"', "short_term", "long_term", "clock",
                   "catalog.duckdb", "segments/00000001.vec", "recently forgotten", "forgotten"):
        assert needle in out, needle


def test_inspect_json_has_every_section(store: Path) -> None:
    data = run_json("inspect", store)
    assert data["format_version"] == FORMAT_VERSION
    assert data["encoder"]["kind"] == "hashing" and data["dim"] == 64
    assert set(data["kinds"]) >= {"working", "short_term", "long_term"}
    assert data["count"] == sum(data["kinds"].values())
    assert "catalog.duckdb" in data["files"]
    assert [e["reason"] for e in data["forgetting_log"]] == ["forgotten"]


def test_inspect_log_zero_hides_the_log(store: Path) -> None:
    assert run_json("inspect", store, "--log", "0")["forgetting_log"] == []


def test_stats_table_and_json(store: Path) -> None:
    result = run("stats", store)
    assert result.exit_code == 0 and "count" in result.stdout
    data = run_json("stats", store)
    assert data["count"] >= 6 and data["dim"] == 64 and data["bytes"] > 0


def test_inspect_does_not_change_the_store(store: Path) -> None:
    before = run_json("stats", store)
    run("inspect", store)
    after = run_json("stats", store)
    assert before["generation"] == after["generation"]
