"""`engramdb ingest`: plain-text lines or JSONL records into a new or existing store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engramdb
from tests.cli_support import run, run_json


def test_plain_text_creates_a_store_with_the_chosen_encoder(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("first memory\n\n  second memory\nfirst memory\n", encoding="utf-8")
    store = tmp_path / "new.engram"
    result = run("ingest", store, src, "--encoder", "hashing", "--dim", "32")
    assert result.exit_code == 0, result.output
    assert "ingested 3 texts (2 new)" in result.stdout
    with engramdb.open(store) as mem:  # reopens without code: the spec is recorded
        assert mem.count == 2 and mem.dim == 32


def test_jsonl_keeps_role_session_metadata_and_appends(tmp_path: Path) -> None:
    store = tmp_path / "a.engram"
    src = tmp_path / "chat.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"text": "I like tea", "role": "user", "session": "d1", "metadata": {"k": 1}},
        {"text": "Noted.", "role": "assistant", "session": "d1"},
    ]), encoding="utf-8")
    assert run("ingest", store, src, "--jsonl", "--encoder", "hashing", "-q").exit_code == 0
    more = tmp_path / "more.txt"
    more.write_text("later memory\n", encoding="utf-8")
    assert run("ingest", store, more, "-q").exit_code == 0  # existing store: no --encoder
    rows = run_json("ls", store)
    tea = next(r for r in rows if r["text"] == "I like tea")
    assert tea["occurrences"][0] == {"role": "user", "session": "d1", "tick": 0,
                                     "metadata": {"k": 1}, "key": None}
    assert len(rows) == 3


def test_stdin(tmp_path: Path) -> None:
    store = tmp_path / "a.engram"
    result = run("ingest", store, "-", "--encoder", "hashing", input="from stdin\n")
    assert result.exit_code == 0 and "1 new" in result.stdout


def test_new_store_needs_an_encoder_choice(tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_text("x\n", encoding="utf-8")
    result = run("ingest", tmp_path / "a.engram", src)
    assert result.exit_code == 2 and "--encoder" in result.output
    assert not (tmp_path / "a.engram").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{not json\n', "t.jsonl:2: bad JSON"),
        ('{"txt": "ok"}\n', 'expected an object with a "text" string'),
        ('{"text": "ok", "speaker": "me"}\n', "unknown field(s) speaker"),
        ('{"text": "ok", "metadata": [1]}\n', "metadata must be a dict"),
        ("\n\n", "holds no text"),
    ],
)
def test_bad_jsonl_is_one_line_and_writes_nothing(tmp_path: Path, content: str,
                                                  message: str) -> None:
    src = tmp_path / "t.jsonl"
    src.write_text(content, encoding="utf-8")
    store = tmp_path / "a.engram"
    result = run("ingest", store, src, "--jsonl", "--encoder", "hashing")
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    if store.exists():
        assert run_json("stats", store)["count"] == 0


def test_encoder_mismatch_on_existing_store(tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_text("x\n", encoding="utf-8")
    store = tmp_path / "a.engram"
    assert run("ingest", store, src, "--encoder", "hashing", "--dim", "32").exit_code == 0
    result = run("ingest", store, src, "--encoder", "hashing", "--dim", "64")
    assert result.exit_code == 1 and "fingerprint" in result.output
