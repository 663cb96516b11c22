"""`engramdb ls` and `engramdb show`: listing and reading engrams, with filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_support import build_store, run, run_json


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("ls") / "alice.engram"
    return path, build_store(path, rich=False)


def test_ls_lists_live_engrams_newest_first(store: tuple[Path, list[str]]) -> None:
    path, ids = store
    rows = run_json("ls", path)
    texts = [r["text"] for r in rows]
    assert texts[0].startswith("Remember: my passport")  # ingested last
    assert "A secret I want erased." not in texts  # forgotten
    assert len(rows) == len(ids) + 1
    human = run("ls", path)
    assert human.exit_code == 0 and ids[0][:12] in human.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--session", "s2"], {"My sister lives in Lisbon.", "Thanks!"}),
        (["--role", "assistant"], {"Thanks!"}),
        (["--kind", "long_term"], set()),
        (["--since", "0", "--limit", "1"], {"Remember: my passport number is in the blue folder."}),
    ],
)
def test_ls_filters(store: tuple[Path, list[str]], args: list[str], expected: set[str]) -> None:
    assert {r["text"] for r in run_json("ls", store[0], *args)} == expected


def test_ls_rejects_unknown_kind(store: tuple[Path, list[str]]) -> None:
    result = run("ls", store[0], "--kind", "eternal")
    assert result.exit_code == 2 and "eternal" in result.output


def test_show_by_full_id_and_prefix(store: tuple[Path, list[str]]) -> None:
    path, ids = store
    thanks = next(i for i in ids if run_json("show", path, i)["text"] == "Thanks!")
    data = run_json("show", path, thanks[:12])
    assert data["id"] == thanks and data["refs"] == 2
    assert [(o["role"], o["session"]) for o in data["occurrences"]] == [
        ("assistant", "s1"), ("user", "s2")]
    human = run("show", path, thanks)
    assert human.exit_code == 0 and "occurrences" in human.stdout


@pytest.mark.parametrize("bad", ["zz", "0123456789ab", "f" * 64])
def test_show_unknown_or_malformed_id_is_one_line(store: tuple[Path, list[str]], bad: str) -> None:
    result = run("show", store[0], bad)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
