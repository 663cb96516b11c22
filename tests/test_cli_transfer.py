"""`engramdb export` / `engramdb import`: a lossless round trip, and bad files refused cleanly."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import engramdb
from engramdb.errors import InvalidInput, ModelMismatch
from engramdb.transfer import export_store, import_store
from tests.cli_support import build_store, encoder, run


def snapshot(path: Path) -> dict[str, Any]:
    """Everything a store holds, keyed by content id (no internal eids or pointers)."""
    with engramdb.open(path) as mem:
        q = mem.catalog.query
        engrams = {}
        for row in mem.catalog.query_arrow("SELECT * FROM engrams").to_pylist():
            vec = np.asarray(mem.segments.view(row["seg"])[row["row"]])
            for k in ("eid", "seg", "row"):
                row.pop(k)
            row["vector"] = vec.tobytes()
            engrams[row["id"]] = row
        occ = q("SELECT e.id, o.seq, o.role, o.session, o.tick, o.metadata FROM occurrences o "
                "JOIN engrams e USING (eid) ORDER BY o.seq")
        links = q("SELECT a.id, b.id, x.weight, x.tick FROM edges x JOIN engrams a ON a.eid = x.a "
                  "JOIN engrams b ON b.eid = x.b ORDER BY 1, 2")
        log = q("SELECT id, tick, reason, kind FROM forgotten ORDER BY tick, id")
        counters = mem.catalog.counters()
        turn = counters.pop("last_turn", None)
        counters.pop("next_eid")
        return {
            "engrams": engrams, "occurrences": occ, "links": links, "forgotten": log,
            "counters": counters,
            "last_turn": q("SELECT id FROM engrams WHERE eid = ?", [turn]) if turn else None,
            "manifest": (mem.manifest.encoder_spec, mem.fingerprint, mem.dim, mem.manifest.dtype,
                         mem.manifest.settings),
            "recall": [(h.id, round(h.score, 6), h.via, h.lifespan_left)
                       for h in mem.recall("guinea pig Oscar", top_k=4)]
            if hasattr(mem, "recall") else None,
            # ties among equal weights may come in any order: compare as a set
            "links_api": sorted((*sorted((x, y)), round(w, 9)) for x, y, w in mem.links(50))
            if hasattr(mem, "links") else None,
            "log_api": mem.forgetting_log(10) if hasattr(mem, "forgetting_log") else None,
        }


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_is_lossless(tmp_path: Path, fmt: str, dtype: str) -> None:
    src = tmp_path / "alice.engram"
    build_store(src, dtype=dtype)
    out = tmp_path / f"alice.{fmt}"
    result = run("export", src, out, "--format", fmt, "-q")
    assert result.exit_code == 0, result.output
    result = run("import", out, tmp_path / "copy.engram", "-q")
    assert result.exit_code == 0, result.output
    # recall changes lifespans: compare the catalogs before recalling in either store
    a, b = snapshot(src), snapshot(tmp_path / "copy.engram")
    assert a["manifest"] == b["manifest"]
    assert a["engrams"].keys() == b["engrams"].keys()
    for ident, row in a["engrams"].items():
        assert row == b["engrams"][ident], ident
    for key in ("occurrences", "links", "forgotten", "counters", "last_turn", "recall",
                "links_api", "log_api"):
        assert a[key] == b[key], key
    assert a["links"], "the fixture must have links to test their transfer"
    assert run("verify", tmp_path / "copy.engram").exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_the_library_functions_directly(tmp_path: Path) -> None:
    src = tmp_path / "a.engram"
    ids = build_store(src, rich=False)
    with engramdb.open(src) as mem:
        counts = export_store(mem, tmp_path / "a.jsonl")
        with pytest.raises(InvalidInput, match="already exists"):
            export_store(mem, tmp_path / "a.jsonl")
    assert counts == {"engrams": 6, "occurrences": 7, "links": 1, "forgotten": 1}
    with pytest.raises(ModelMismatch):
        import_store(tmp_path / "b.engram", tmp_path / "a.jsonl",
                     encoder=engramdb.encoders.HashingEncoder(dim=32))
    stats = import_store(tmp_path / "b.engram", tmp_path / "a.jsonl", encoder=encoder())
    assert stats["count"] == 6 and stats["path"] == str(tmp_path / "b.engram")
    with engramdb.open(tmp_path / "b.engram") as copy:
        assert all(i in copy for i in ids)
    (tmp_path / "empty").mkdir()
    assert import_store(tmp_path / "empty", tmp_path / "a.jsonl")["count"] == 6


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The text of a JSONL export of a small store, built once for the tampering tests."""
    tmp = tmp_path_factory.mktemp("export")
    build_store(tmp / "a.engram", rich=False)
    assert run("export", tmp / "a.engram", tmp / "a.jsonl", "-q").exit_code == 0
    return (tmp / "a.jsonl").read_text()


def _write(path: Path, docs: list[Any]) -> None:
    path.write_text("".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in docs))


def _tamper(docs: list[dict[str, Any]], how: str) -> list[Any]:
    header, first = docs[0], docs[1]
    if how == "bad json":
        return [header, "{oops", *docs[2:]]
    if how == "version":
        header["version"] = 99
    elif how == "not an export":
        header["format"] = "something-else"
    elif how == "header dims":
        header["dim"] = 65
    elif how == "vector size":
        first["vector"] = base64.b64encode(base64.b64decode(first["vector"])[:-4]).decode()
    elif how == "vector base64":
        first["vector"] = "!!!"
    elif how == "id":
        first["text"] = first["text"] + " (edited)"
    elif how == "truncated":
        return docs[:-2]
    elif how == "kind":
        first["kind"] = "eternal"
    elif how == "link":
        link = next(d for d in docs if d["type"] == "link")
        link["a"] = "f" * 64
    return docs


@pytest.mark.parametrize(("how", "message"), [
    ("bad json", "a.jsonl:2: bad JSON"),
    ("version", "export version 99"),
    ("not an export", "not an engramdb export"),
    ("header dims", "does not match dim 65"),
    ("vector size", "expected 256 (64 x float32)"),
    ("vector base64", "not base64"),
    ("id", "the id does not match the text"),
    ("truncated", "truncated?"),
    ("kind", "unknown kind 'eternal'"),
    ("link", "a link names an engram the file lacks"),
])
def test_bad_files_are_refused_and_leave_nothing(tmp_path: Path, exported: str, how: str,
                                                message: str) -> None:
    docs = [json.loads(line) for line in exported.splitlines()]
    bad = tmp_path / "a.jsonl"
    _write(bad, _tamper(docs, how))
    dest = tmp_path / "sub" / "copy.engram"
    result = run("import", bad, dest, "-q")
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.count("\n") == 1
    assert not dest.exists()
    assert not [p for p in (tmp_path / "sub").iterdir()] if (tmp_path / "sub").exists() else True


def test_import_refuses_a_non_empty_destination(tmp_path: Path, exported: str) -> None:
    (tmp_path / "a.jsonl").write_text(exported)
    (tmp_path / "a.engram").mkdir()
    (tmp_path / "a.engram" / "x").write_text("")
    result = run("import", tmp_path / "a.jsonl", tmp_path / "a.engram")
    assert result.exit_code == 1 and "is not empty" in result.output


def test_import_of_a_directory_that_is_not_an_export(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    result = run("import", tmp_path / "d", tmp_path / "x.engram")
    assert result.exit_code == 1 and "header.json" in result.output


def test_parquet_damage_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "a.engram"
    build_store(src, rich=False)
    assert run("export", src, tmp_path / "p", "--format", "parquet", "-q").exit_code == 0
    (tmp_path / "p" / "engrams.parquet").write_bytes(b"PAR1 not really")
    result = run("import", tmp_path / "p", tmp_path / "x.engram")
    assert result.exit_code == 1 and "engrams.parquet" in result.output
    assert not (tmp_path / "x.engram").exists()


def test_export_of_a_damaged_store_fails(tmp_path: Path) -> None:
    src = tmp_path / "a.engram"
    build_store(src, rich=False)
    seg = sorted((src / "segments").glob("*.vec"))[0]
    raw = bytearray(seg.read_bytes())
    raw[3] ^= 0x10
    seg.write_bytes(bytes(raw))
    result = run("export", src, tmp_path / "a.jsonl")
    assert result.exit_code == 1 and "checksum mismatch" in result.output
    assert not (tmp_path / "a.jsonl").exists()


def test_restore_only_into_a_new_empty_store(tmp_path: Path) -> None:
    src = tmp_path / "a.engram"
    build_store(src, rich=False)
    with engramdb.open(src) as mem:
        with pytest.raises(InvalidInput, match="is not empty"):
            mem.restorer()
    with engramdb.open(tmp_path / "new.engram", dim=8) as mem:
        restorer = mem.restorer()
        nothing = pa.table({})
        restorer.finish(nothing, nothing, {}, None)
        with pytest.raises(InvalidInput, match="this restore is finished"):
            restorer.finish(nothing, nothing, {}, None)
