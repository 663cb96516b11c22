"""`engramdb recall`: the table of hits with score, kind, lifespan left and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_support import build_store, run, run_json


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "alice.engram"
    build_store(path, rich=False)
    return path


def test_recall_table_has_score_kind_life_via_text(store: Path) -> None:
    result = run("recall", store, "guinea pig Oscar", "-k", "3")
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[1]
    for col in ("score", "kind", "life left", "via", "text"):
        assert col in header
    assert "guinea pig" in result.stdout


def test_recall_json_best_first_and_filtered(store: Path) -> None:
    hits = run_json("recall", store, "guinea pig named Oscar", "--top-k", "2")
    assert hits[0]["text"] == "I adopted a guinea pig named Oscar."
    assert hits[0]["score"] >= hits[-1]["score"]
    assert {"id", "score", "kind", "lifespan_left", "via"} <= set(hits[0])
    only_s2 = run_json("recall", store, "Oscar", "--session", "s2", "-k", "10")
    direct = [h for h in only_s2 if h["via"] != "association"]
    assert direct and all(any(o["session"] == "s2" for o in h["occurrences"]) for h in direct)


def test_recall_rejects_bad_top_k(store: Path) -> None:
    result = run("recall", store, "x", "-k", "0")
    assert result.exit_code == 2
