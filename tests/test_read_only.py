"""open(read_only=True): reads work, nothing in the store changes, writes are refused, and a
store that needs recovery or an upgrade says so (the CLI then opens it writable)."""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import duckdb
import pytest

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.errors import NotAStore, ReadOnlyStore, StoreLocked
from engramdb.transfer import export_store
from tests.cli_support import run

ENC = HashingEncoder(dim=64)
# A store with its catalog file (a journal left by a dropped handle needs recovery there; the
# catalog's DuckDB lock keeps writers out): read-only opens of stores without one are in
# tests/test_journal_only.py.
pytestmark = pytest.mark.usefixtures("catalog_from_the_start")


def _files(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _store(path: Path, n: int = 60, **settings: object) -> None:
    with engramdb.open(path, encoder=ENC, settings=settings or None) as mem:
        mem.ingest_many([f"memory number {i} about topic {i % 7}" for i in range(n)],
                        keys=[f"k{i}" for i in range(n)], roles=["user", "bot"] * (n // 2))
        mem.integrate("a turn about topic 3", session="s1")


@pytest.mark.parametrize("index", [None, {"exact_threshold": 10}])
def test_reads_work_and_nothing_changes(tmp_path: Path, index: dict | None) -> None:
    path = tmp_path / "m"
    with engramdb.open(path, encoder=ENC, index=index) as mem:
        mem.ingest_many([f"memory number {i} about topic {i % 7}" for i in range(60)],
                        keys=[f"k{i}" for i in range(60)])
        mem.integrate("a turn about topic 3", session="s1")
        expected = [h.id for h in mem.recall("topic 3 memory", top_k=5)]
    before = _files(path)
    with engramdb.open(path, read_only=True) as ro:
        assert [h.id for h in ro.recall("topic 3 memory", top_k=5)] == expected
        assert ro.get(key="k4").text == "memory number 4 about topic 4"
        assert len(ro.engrams(where={"session": "s1"})) == 1
        assert ro.verify().ok and ro.stats()["count"] == 61
        export_store(ro, tmp_path / "dump.jsonl")
        with ro.snapshot() as snap:
            assert snap.query("SELECT count(*) FROM occurrences")[0][0] == 61
    assert _files(path) == before


def test_writes_are_refused_and_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _store(path)
    before = _files(path)
    with engramdb.open(path, read_only=True) as ro:
        some_id = ro.get(key="k1").id
        for write in (lambda: ro.ingest("new"), lambda: ro.ingest_many(["a", "b"]),
                      lambda: ro.integrate("hi"), lambda: ro.upsert("k1", "x"),
                      lambda: ro.forget(keys="k1"), lambda: ro.forget(some_id),
                      lambda: ro.reinforce(some_id), lambda: ro.tick(), lambda: ro.gc(),
                      lambda: ro.rebuild(), lambda: ro.restorer()):
            with pytest.raises(ReadOnlyStore):
                write()
        assert len(ro) == 61 and ro.verify().ok
    assert _files(path) == before


def test_readers_share_and_keep_writers_out(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _store(path)
    first = engramdb.open(path, read_only=True)
    second = engramdb.open(path, read_only=True)
    assert len(first) == len(second) == 61
    with pytest.raises(StoreLocked):
        engramdb.open(path)
    first.close()
    second.close()
    writer = engramdb.open(path)
    with pytest.raises(StoreLocked):
        engramdb.open(path, read_only=True)
    writer.close()


def test_a_store_without_a_lock_file_opens_and_none_is_made(tmp_path: Path) -> None:
    """A store copied without its LOCK (or on a mount where it cannot be created)."""
    path = tmp_path / "m"
    _store(path)
    (path / "LOCK").unlink()
    before = _files(path)
    with engramdb.open(path, read_only=True) as ro:
        assert len(ro) == 61
    assert _files(path) == before and not (path / "LOCK").exists()


def test_never_creates(tmp_path: Path) -> None:
    with pytest.raises(NotAStore):
        engramdb.open(tmp_path / "nothing", encoder=ENC, read_only=True)
    assert not (tmp_path / "nothing").exists()


def test_a_store_that_needs_recovery_or_an_upgrade_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _store(path)
    mem = engramdb.open(path)
    mem.integrate("a turn left in the journal")
    del mem  # dropped without close(): the turn waits in the journal
    gc.collect()
    before = _files(path)
    with pytest.raises(ReadOnlyStore, match="needs recovery"):
        engramdb.open(path, read_only=True)
    assert _files(path) == before
    # The CLI's read commands open it writable then: recovery runs, the answer is right.
    result = run("verify", path)
    assert result.exit_code == 0, result.output
    with engramdb.open(path, read_only=True) as ro:
        assert "a turn left in the journal" in [e.text for e in ro.engrams()]

    old = tmp_path / "old"
    _store(old)
    con = duckdb.connect(str(old / "catalog.duckdb"))
    con.execute("DROP INDEX occurrences_eid")
    con.execute("ALTER TABLE occurrences DROP COLUMN key")
    con.execute("CREATE INDEX occurrences_eid ON occurrences(eid)")
    con.close()
    manifest = json.loads((old / "MANIFEST.json").read_text())
    manifest["format_version"] = 2
    (old / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(ReadOnlyStore, match="format 2"):
        engramdb.open(old, read_only=True)


def test_settings_apply_to_the_handle_only(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _store(path)
    before = _files(path)
    with engramdb.open(path, read_only=True, settings={"context": False}) as ro:
        assert ro.settings.context is False
    assert _files(path) == before
    with engramdb.open(path, read_only=True) as ro:
        assert ro.settings.context is True


def test_cli_read_commands_leave_the_store_untouched(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _store(path)
    (path / "LOCK").unlink()
    before = _files(path)
    for args in (["inspect", path], ["stats", path], ["ls", path], ["verify", path],
                 ["recall", path, "topic 3"]):
        result = run(*args)
        assert result.exit_code == 0, (args, result.output)
    assert _files(path) == before


def test_a_reader_without_a_lock_file_still_keeps_writers_out(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _store(path)
    (path / "LOCK").unlink()
    with engramdb.open(path, read_only=True) as ro:
        with pytest.raises(StoreLocked):
            engramdb.open(path)  # the catalog is held: DuckDB refuses the second attach
        assert len(ro) == 61
    with engramdb.open(path) as mem:
        assert mem.verify().ok


def test_a_writer_kept_out_by_readers_is_told_so(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _store(path)  # the LOCK file names this process, its last writer
    with engramdb.open(path, read_only=True):
        with pytest.raises(StoreLocked, match="read-only") as caught:
            engramdb.open(path)
        assert caught.value.pid is None
