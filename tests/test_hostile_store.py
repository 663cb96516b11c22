"""A store never reads, writes, truncates or deletes outside its own directory (issue 18).

A store received from someone else may hold links or special files where its own files
belong. Each test plants one in a real store and checks that opening it (and the CLI's
read-only ``inspect``) is refused with a clear CorruptStore before anything is touched, and
that the files outside the store are exactly as they were. Then the maintenance paths (gc's
compaction and catalog rewrite, rebuild, the index and BM25 snapshot saves, import) on a
store that had a link put into it after it was opened. And item 9's misattributed errors:
a relative path and a later ``chdir``, a full disk at creation, an empty metadata key.

Tests go through the public API (``engramdb.open``, ``Store`` methods, ``import_store``, the
CLI), so they also run against the flat modules of older commits.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.errors import CorruptStore, EngramError, InvalidInput, StorageError

DIM = 16
ENC = HashingEncoder(dim=DIM)
# Small segments: the store has several, and gc has some to compact.
SETTINGS = {"segment_bytes": 4096, "batch_rows": 32}


def _make_store(path: Path, n: int = 150) -> list[str]:
    """A closed store with several segments, index files and a BM25 snapshot."""
    with engramdb.open(path, encoder=ENC, settings=SETTINGS,
                       index={"exact_threshold": 8}) as mem:  # index files to attack too
        ids = [r.id for r in mem.ingest_many([f"memory {k} about oscar" for k in range(n)])]
        mem.rebuild()  # writes the index files
    return ids


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "pristine.engram"
    _make_store(path)
    (path / "LOCK").unlink()
    return path


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the pristine store."""
    dest = tmp_path / "store.engram"
    shutil.copytree(pristine, dest)
    return dest


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Files outside the store that must survive anything done to it (a user's home)."""
    d = tmp_path / "home"
    d.mkdir()
    (d / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
    (d / "thesis.tex").write_text("\\chapter{Results}\n" * 50)
    (d / "id_ed25519").write_bytes(os.urandom(4096))
    return d


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture
def untouched(home: Path) -> Iterator[Path]:
    """``home``, checked unchanged (no file created, deleted, truncated or rewritten)."""
    before = _snapshot(home)
    yield home
    assert _snapshot(home) == before


def _segment(store: Path, k: int = 1) -> Path:
    return store / "segments" / f"{k:08d}.vec"


def _refused(store: Path) -> CorruptStore:
    with pytest.raises(CorruptStore) as info:
        engramdb.open(store, encoder=ENC, create=False)
    assert info.value.hint
    return info.value


# -- received stores: refused on open, before anything is touched ---------------------------------


def test_segments_dir_link_deletes_nothing(store: Path, home: Path) -> None:
    """Issue 18 item 1: recovery deleted every file of a linked ``segments/`` it did not know."""
    for seg in (store / "segments").iterdir():  # the segments, beside the user's files
        shutil.copy(seg, home / seg.name)
    before = _snapshot(home)
    shutil.rmtree(store / "segments")
    (store / "segments").symlink_to(home, target_is_directory=True)
    err = _refused(store)
    assert "segments" in err.message and "link" in err.message
    assert _snapshot(home) == before


def test_cli_inspect_of_linked_segments_deletes_nothing(store: Path, home: Path) -> None:
    """The read-only ``engramdb inspect`` deleted .bashrc and exited 0."""
    from click.testing import CliRunner
    from engramdb.cli.main import main

    for seg in (store / "segments").iterdir():
        shutil.copy(seg, home / seg.name)
    shutil.rmtree(store / "segments")
    (store / "segments").symlink_to(home, target_is_directory=True)
    before = _snapshot(home)
    result = CliRunner().invoke(main, ["inspect", str(store)])
    assert _snapshot(home) == before
    assert result.exit_code not in (0, None)
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_segment_link_is_not_truncated(store: Path, home: Path) -> None:
    """A segment that is a link to a longer file: recovery truncated the target."""
    seg = _segment(store)
    target = home / "thesis.tex"
    target.write_bytes(seg.read_bytes() + target.read_bytes())  # longer than committed
    before = _snapshot(home)
    seg.unlink()
    seg.symlink_to(target)
    _refused(store)
    assert _snapshot(home) == before


def test_uncommitted_segment_link_target_kept(store: Path, untouched: Path) -> None:
    """An unknown segment that is a link: its target is neither deleted nor written."""
    (store / "segments" / "00000099.vec").symlink_to(untouched / ".bashrc")
    _refused(store)
    assert (store / "segments" / "00000099.vec").is_symlink()


@pytest.mark.parametrize("dangling", [False, True])
def test_lock_link_target_not_written(store: Path, untouched: Path, dangling: bool) -> None:
    """A ``LOCK`` link: the pid was written into its target (a dangling one created it)."""
    target = untouched / ("new-file" if dangling else ".bashrc")
    (store / "LOCK").symlink_to(target)
    _refused(store)
    assert target.exists() == (not dangling)


@pytest.mark.parametrize("name", ["MANIFEST.json", "catalog.duckdb", "lexical.snapshot",
                                  "index/index.json", "index/labels"])
def test_store_file_link_refused(store: Path, home: Path, name: str) -> None:
    """A link in place of any of the store's own files (its copy outside, so it would read
    fine): refused, and the target left as it was."""
    path = next(p for p in sorted(store.glob(name + "*")) if p.is_file())
    copy = home / path.name
    copy.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(copy)
    err = _refused(store)
    assert path.name in err.message


def test_wal_link_refused(store: Path, untouched: Path) -> None:
    """A dangling ``catalog.duckdb.wal`` link: DuckDB would create the target and write it."""
    (store / "catalog.duckdb.wal").symlink_to(untouched / "wal-target")
    _refused(store)
    assert not (untouched / "wal-target").exists()


def test_index_dir_link_refused(store: Path, home: Path) -> None:
    """A linked ``index/``: a save's cleanup deletes files there."""
    shutil.copytree(store / "index", home / "index")
    shutil.rmtree(store / "index")
    (store / "index").symlink_to(home / "index", target_is_directory=True)
    before = _snapshot(home / "index")
    _refused(store)
    assert _snapshot(home / "index") == before


@pytest.mark.parametrize("kind", ["fifo", "socket"])
@pytest.mark.parametrize("name", ["MANIFEST.json", "LOCK", "lexical.snapshot",
                                  "segments/00000001.vec", "index/index.json"])
def test_special_file_refused(store: Path, tmp_path: Path, kind: str, name: str) -> None:
    """A FIFO (reading it would hang) or a socket where a file belongs: refused at once."""
    path = store / name
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        short = Path("/tmp") / f"engramdb-sock-{os.getpid()}"  # AF_UNIX paths are short
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(short))
        finally:
            sock.close()
        os.rename(short, path)
    _refused(store)


def test_half_created_store_with_link_refused(tmp_path: Path, untouched: Path) -> None:
    """A directory without a manifest holding only creation files is an unfinished creation
    that open redoes (deleting those files): a link among them is refused first."""
    d = tmp_path / "half.engram"
    d.mkdir()
    (d / "segments").symlink_to(untouched, target_is_directory=True)
    with pytest.raises(CorruptStore):
        engramdb.open(d, encoder=ENC)


def test_store_dir_itself_may_be_a_link(store: Path, tmp_path: Path) -> None:
    """The user's own path may be a link to the store: resolved once on open."""
    link = tmp_path / "link.engram"
    link.symlink_to(store, target_is_directory=True)
    with engramdb.open(link, encoder=ENC) as mem:
        assert mem.count == 150
        mem.ingest("one more about oscar")
        assert Path(mem.path) == store.resolve()
    assert not (tmp_path / "LOCK").exists()


def test_healthy_store_with_foreign_file_in_segments(store: Path) -> None:
    """A regular file in ``segments/`` that recovery did not write is no longer deleted."""
    (store / "segments" / "notes.txt").write_text("mine")
    with engramdb.open(store, encoder=ENC) as mem:
        assert mem.count == 150
    assert (store / "segments" / "notes.txt").read_text() == "mine"


# -- maintenance paths on a store that received a link after the open ----------------------------


def _close_after(mem: engramdb.Store, store: Path) -> None:
    """Take the planted links away again, then close (whatever the close raises)."""
    for p in (store / "segments", store / "index", store / "planted"):
        if p.is_symlink():
            p.unlink()
    if (store / "segments.real").exists():
        os.rename(store / "segments.real", store / "segments")
    try:
        mem.close()
    except EngramError:
        pass


def _plant_segments_link(store: Path, home: Path) -> None:
    """Replace ``segments/`` (while the store is open) by a link to a copy of it in ``home``."""
    shutil.copytree(store / "segments", home / "segments")
    os.rename(store / "segments", store / "segments.real")
    (store / "segments").symlink_to(home / "segments", target_is_directory=True)


def test_gc_compaction_refuses_linked_segments(store: Path, home: Path) -> None:
    mem = engramdb.open(store, encoder=ENC)
    try:
        ids = [r[0] for r in mem.catalog.query("SELECT id FROM engrams ORDER BY eid")]
        mem.forget(ids[:40])
        _plant_segments_link(store, home)
        before = _snapshot(home / "segments")
        with pytest.raises(CorruptStore):
            mem.gc()
        assert _snapshot(home / "segments") == before
    finally:
        _close_after(mem, store)


def test_catalog_rewrite_refuses_planted_link(store: Path, home: Path) -> None:
    """gc's catalog rewrite checks the store's directory before writing anything."""
    mem = engramdb.open(store, encoder=ENC)
    try:
        ids = [r[0] for r in mem.catalog.query("SELECT id FROM engrams ORDER BY eid")]
        mem.forget(ids[:1])
        (store / "planted").symlink_to(home / ".bashrc")
        before = _snapshot(home)
        with pytest.raises(CorruptStore):
            mem.gc()
        assert _snapshot(home) == before
    finally:
        _close_after(mem, store)


def test_index_save_refuses_linked_index_dir(store: Path, home: Path) -> None:
    """rebuild saves the index: a linked ``index/`` would have files written and deleted."""
    mem = engramdb.open(store, encoder=ENC)
    try:
        shutil.copytree(store / "index", home / "index")
        shutil.rmtree(store / "index")
        (store / "index").symlink_to(home / "index", target_is_directory=True)
        before = _snapshot(home / "index")
        with pytest.raises(CorruptStore):
            mem.rebuild()
        assert _snapshot(home / "index") == before
    finally:
        _close_after(mem, store)


def test_snapshot_save_refuses_link(store: Path, home: Path) -> None:
    """close() saves the BM25 snapshot (derived, so skipped then): a link put there is not
    written through, its target is kept, and the next open refuses the store."""
    mem = engramdb.open(store, encoder=ENC)
    mem.ingest("a new memory changes the snapshot")
    (store / "lexical.snapshot").unlink(missing_ok=True)
    (store / "lexical.snapshot").symlink_to(home / ".bashrc")
    before = _snapshot(home)
    mem.close()
    assert _snapshot(home) == before
    with pytest.raises(CorruptStore):
        engramdb.open(store)


def test_ingest_refuses_segment_link(store: Path, home: Path) -> None:
    """An append never writes through a segment replaced by a link since the open."""
    mem = engramdb.open(store, encoder=ENC, settings=SETTINGS)
    try:
        last = max(int(p.stem) for p in (store / "segments").iterdir())
        seg = _segment(store, last)
        (home / "seg").write_bytes(seg.read_bytes())
        seg.unlink()
        seg.symlink_to(home / "seg")
        before = _snapshot(home)
        with pytest.raises(EngramError):
            mem.ingest("one more memory about oscar")
        assert _snapshot(home) == before
    finally:
        _close_after(mem, store)


def test_import_leaves_linked_work_dir_alone(tmp_path: Path, home: Path) -> None:
    """An import removes abandoned work directories beside its destination: a link named
    like one is neither followed (a lock file written there) nor its target emptied."""
    from engramdb.transfer import export_store, import_store

    src = tmp_path / "src.engram"
    _make_store(src, 20)
    exported = tmp_path / "src.jsonl"
    with engramdb.open(src, encoder=ENC) as mem:
        export_store(mem, exported)
    (tmp_path / ".dest.engram.import-deadbeef").symlink_to(home, target_is_directory=True)
    before = _snapshot(home)
    stats = import_store(tmp_path / "dest.engram", exported)
    assert stats["count"] == 20
    assert _snapshot(home) == before


# -- item 9: errors that name their real cause --------------------------------------------------


def test_relative_path_then_chdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opened by a relative path, then chdir: recall raised CorruptStore and close() wrote
    index files into the new directory."""
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    mem = engramdb.open("rel.engram", encoder=ENC,
                        settings={**SETTINGS, "prefault_vectors": False})
    try:
        mem.ingest_many([f"memory {k} about oscar" for k in range(100)])
        os.chdir(elsewhere)
        assert mem.recall("memory 3 oscar", top_k=3)
        mem.ingest("after the chdir")
        assert Path(mem.path).is_absolute()
    finally:
        mem.close()
    assert list(elsewhere.iterdir()) == []
    with engramdb.open(tmp_path / "rel.engram", encoder=ENC) as again:
        assert again.count == 101


@pytest.mark.parametrize("journal_only", [False, True])
def test_full_disk_on_create_is_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              journal_only: bool) -> None:
    """DuckDB cannot write the new catalog (ENOSPC): StorageError, not CorruptStore.

    DuckDB's own I/O does not go through Python, so its connect (or the ATTACH of the
    catalog file, depending on the version) is made to fail as it does on a full disk. A
    store made with its catalog meets it on creation; one made without (``journal_only``)
    at its first fold, which then leaves its turns in the journal for the next try.
    """
    real = duckdb.connect
    enospc = duckdb.IOException(f'IO Error: Could not write file "catalog.duckdb": '
                                f"{os.strerror(errno.ENOSPC)}")
    names = ("catalog.duckdb", "catalog.duckdb.new")

    class FullDisk:
        def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
            self._con = con

        def __getattr__(self, name: str) -> object:
            return getattr(self._con, name)

        def execute(self, sql: str, *args: object, **kw: object) -> object:
            if sql.lstrip().upper().startswith("ATTACH") and any(
                    f"{n}'" in sql for n in names):
                raise enospc
            return self._con.execute(sql, *args, **kw)

    def full(database: str = ":memory:", *args: object, **kw: object) -> object:
        if str(database).endswith(names):
            raise enospc
        return FullDisk(real(database, *args, **kw))

    path = tmp_path / "new.engram"
    settings = {"journal_only_turns": 64 if journal_only else 0}
    if journal_only:
        with engramdb.open(path, encoder=ENC, settings=settings) as mem:
            mem.ingest("a turn kept in the journal")
    monkeypatch.setattr(duckdb, "connect", full)
    with pytest.raises(StorageError) as info:
        with engramdb.open(path, encoder=ENC, settings=settings) as mem:
            mem.catalog  # noqa: B018 - the first fold, which makes the catalog
    assert not isinstance(info.value, CorruptStore)
    monkeypatch.setattr(duckdb, "connect", real)
    with engramdb.open(path, encoder=ENC) as mem:  # creation (or the first fold) is redone
        assert mem.count == (1 if journal_only else 0)
        assert mem.catalog is not None


def test_full_disk_making_segments_dir_is_storage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC creating ``segments/`` of a new store: StorageError, not a raw OSError."""
    real = Path.mkdir

    def mkdir(self: Path, *args: object, **kw: object) -> None:
        if self.name == "segments":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        real(self, *args, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(StorageError):
        engramdb.open(tmp_path / "new.engram", encoder=ENC)
    monkeypatch.setattr(Path, "mkdir", real)
    with engramdb.open(tmp_path / "new.engram", encoder=ENC) as mem:
        assert mem.count == 0


def test_metadata_filter_keys(tmp_path: Path) -> None:
    """An empty key raised CorruptStore ("restore from backup"); a non-ASCII one matched
    nothing. Every key ingest stores can be filtered on."""
    keys = ["", "é", "日本", "a/b", "~1", "a.b", 'x"y', "$", "[0]"]
    with engramdb.open(tmp_path / "m.engram", encoder=ENC) as mem:
        hits = {}
        for k, key in enumerate(keys):
            hits[key] = mem.ingest(f"guinea pig number {k}", metadata={key: 1, "other": k}).id
            mem.ingest(f"guinea pig also number {k}", metadata={key: 2})
        for key in keys:
            got = mem.recall("guinea pig", top_k=50, where={"metadata": {key: 1}})
            assert [h.id for h in got] == [hits[key]], key


def test_metadata_filter_bad_key_is_invalid_input(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "m.engram", encoder=ENC) as mem:
        mem.ingest("hello")
        for key in ("\ud800", 3):
            with pytest.raises(InvalidInput):
                mem.recall("hello", where={"metadata": {key: 1}})
