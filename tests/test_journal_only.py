"""Stores without a catalog file: a new store keeps its turns in journal.bin alone.

Until ``Settings.journal_only_turns`` turns wait, or a write or read needs the catalog,
a store has no ``catalog.duckdb``: an open replays its journal instead of opening DuckDB, and
close does not fold. Its first fold builds the catalog under a temporary name, renames it
into place and records it in the manifest (``Manifest.catalog``). An open holds the vectors
in memory until then; a read-only open that needs a catalog makes one, with its vector
files, outside the store. The answers are the same as a store
with a catalog from the start (tests/test_journal_keys.py drives both through the same
random operations, table by table).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.errors import CorruptStore
from engramdb.storage import catalog as catalog_module
from engramdb.storage.catalog import CATALOG_NAME, CATALOG_TEMP, make_catalog
from engramdb.storage.journal import JOURNAL_NAME, TurnJournal
from engramdb.storage.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest
from engramdb.transfer import export_store, import_store

ENC = HashingEncoder(dim=64)
TURNS = ["my cat is called oscar", "i live in lisbon by the river", "coffee with no sugar",
         "the piano lesson is on friday", "my sister plays the guitar",
         "what is my cat called", "who plays the guitar"]


def _files(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _answers(mem: engramdb.Store) -> list:
    hits = [[(r.id, round(r.score, 9), r.text, [(o.role, o.session, o.tick)
                                                 for o in r.occurrences])
             for r in mem.recall(q, top_k=4)] for q in ("cat", "guitar", "river coffee")]
    return [hits, [e.to_dict() for e in mem.engrams()], mem.count]


def _chat(path: Path, n: int = len(TURNS), **settings: object) -> list:
    with engramdb.open(path, encoder=ENC, settings=settings or None) as mem:
        for i, text in enumerate(TURNS[:n]):
            mem.integrate(text, role=("user", "bot")[i % 2], session="s1", top_k=3)
        return _answers(mem)


def test_a_new_store_keeps_its_turns_in_the_journal_alone(tmp_path: Path) -> None:
    path = tmp_path / "m"
    with engramdb.open(path, encoder=ENC):
        pass
    empty = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert empty < 4096, empty
    before = _chat(path)
    assert not (path / CATALOG_NAME).exists()
    assert (path / JOURNAL_NAME).exists()
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert manifest["catalog"] is False and manifest["format_version"] == FORMAT_VERSION
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.recovered == []  # replaying the journal is how it opens, not a recovery
        assert _answers(mem) == before
    assert not (path / CATALOG_NAME).exists()
    # The same turns in a store with a catalog from the start give the same answers.
    assert _chat(tmp_path / "c", journal_only_turns=0) == before
    assert (tmp_path / "c" / CATALOG_NAME).exists()


def test_the_first_fold_writes_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "m"
    before = _chat(path, journal_only_turns=4)
    assert (path / CATALOG_NAME).exists()
    assert Manifest.read(path).catalog is True
    assert not (path / CATALOG_TEMP).exists()
    with engramdb.open(path, encoder=ENC) as mem:
        assert _answers(mem) == before
        assert mem.verify().ok


@pytest.mark.parametrize("op", ["where", "forget", "export", "gc", "bulk", "verify"])
def test_a_write_or_read_that_needs_the_catalog_makes_it(tmp_path: Path, op: str) -> None:
    path = tmp_path / "m"
    _chat(path, 4)
    with engramdb.open(path, encoder=ENC) as mem:
        if op == "where":
            assert len(mem.engrams(where={"role": "user"})) == 2
        elif op == "forget":
            mem.forget(mem.recall("oscar", top_k=1)[0].id)
            assert mem.count == 3
        elif op == "export":
            assert export_store(mem, tmp_path / "out.jsonl")["engrams"] == 4
        elif op == "gc":
            mem.gc()
        elif op == "bulk":  # past journal_only_bytes (512 KiB): the journal folds
            mem.ingest_many([f"bulk note {i}" for i in range(2000)])
        else:
            assert mem.verify().ok
        assert (path / CATALOG_NAME).exists()
        count = mem.count
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.count == count
        assert mem.verify().ok


def test_a_read_only_open_writes_only_files_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _chat(path)
    with engramdb.open(path, encoder=ENC) as mem:
        expected = _answers(mem)
    files = _files(path)
    mem = engramdb.open(path, encoder=ENC, read_only=True)
    scratch = mem._parts.scratch.path
    assert path not in scratch.parents
    assert _answers(mem) == expected
    assert mem.verify().ok  # reads the catalog: built in the scratch directory
    with mem.snapshot() as snap:
        assert snap.query("SELECT count(*) FROM engrams")[0][0] == expected[2]
    with pytest.raises(engramdb.errors.ReadOnlyStore):
        mem.ingest("a write")
    mem.close()
    assert not scratch.exists()
    assert _files(path) == files  # not a byte of the store changed


def test_a_missing_catalog_is_damage_once_the_store_has_one(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _chat(path, journal_only_turns=2)
    (path / CATALOG_NAME).unlink()
    with pytest.raises(CorruptStore, match="missing"):
        engramdb.open(path, encoder=ENC)


def test_a_first_fold_killed_after_its_rename(tmp_path: Path) -> None:
    """The catalog is in place, empty, but the manifest does not record it yet: the open
    uses it (the journal replays into it) and records it."""
    path = tmp_path / "m"
    before = _chat(path)
    make_catalog(path)
    assert Manifest.read(path).catalog is False
    with engramdb.open(path, encoder=ENC) as mem:
        assert _answers(mem) == before
    assert Manifest.read(path).catalog is True
    assert not (path / JOURNAL_NAME).exists() or (path / JOURNAL_NAME).stat().st_size == 0


def test_a_first_fold_killed_before_its_rename(tmp_path: Path) -> None:
    """A half-built catalog under the temporary name is ignored, and replaced by the next
    first fold."""
    path = tmp_path / "m"
    before = _chat(path)
    (path / CATALOG_TEMP).write_bytes(b"half a catalog")
    with engramdb.open(path, encoder=ENC) as mem:
        assert _answers(mem) == before
        assert mem.verify().ok  # a read of the catalog: the first fold
    assert not (path / CATALOG_TEMP).exists()
    with engramdb.open(path, encoder=ENC) as mem:
        assert _answers(mem) == before


def test_fast_durability_keeps_the_journal_on_close(tmp_path: Path) -> None:
    path = tmp_path / "m"
    before = _chat(path, durability="fast")
    assert not (path / CATALOG_NAME).exists()
    with engramdb.open(path, encoder=ENC) as mem:
        assert _answers(mem) == before


def test_a_damaged_catalog_flag_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _chat(path, 2)
    doc = json.loads((path / MANIFEST_NAME).read_text())
    doc["catalog"] = "no"
    (path / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(CorruptStore, match="catalog flag"):
        engramdb.open(path, encoder=ENC)


def test_a_reopened_store_fsyncs_its_segment_directory_at_the_first_fold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The segment files of a store without a catalog were made by handles that never
    synced their names; the first fold of a later handle fsyncs the directory before the
    catalog points into it."""
    from engramdb.storage import segments as segments_module

    path = tmp_path / "m"
    _chat(path, 3)
    synced: list[Path] = []
    real = segments_module.fsync_dir
    monkeypatch.setattr(segments_module, "fsync_dir", lambda d: (synced.append(d), real(d)))
    with engramdb.open(path, encoder=ENC) as mem:
        assert synced == []  # an open that only replays syncs nothing
        mem.catalog  # noqa: B018 - the first fold
    assert path / "segments" in synced


def _crashed(path: Path, n: int) -> list:
    """A store of ``n`` turns with a segment file left behind, as a first fold that died
    before its catalog leaves one (or an older engramdb's handle that never closed): the
    vectors of the journal, and bytes past them."""
    before = _chat(path, n)
    row = b"\x00" * (4 * ENC.dim)  # (their content is never read)
    (path / "segments" / "00000001.vec").write_bytes(row * n + b"\x01" * 256)
    return before


def test_a_closed_store_holds_each_vector_once(tmp_path: Path) -> None:
    """A store without a catalog keeps its vectors in the journal alone: an open's replay
    holds them in memory, never in segment files; its first fold writes the files."""
    path = tmp_path / "m"
    before = _chat(path, 5)
    assert list((path / "segments").iterdir()) == []
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.recovered == [] and _answers(mem) == before
        assert list((path / "segments").iterdir()) == []
    with engramdb.open(tmp_path / "n", encoder=ENC) as mem:  # nor does a handle's turn
        mem.integrate("a turn about the garden", top_k=3)
        assert list((tmp_path / "n" / "segments").iterdir()) == []
    assert list((path / "segments").iterdir()) == []
    # Folded into a catalog, the files stay (the scores in the answers are the vectors').
    with engramdb.open(path, encoder=ENC, settings={"journal_only_turns": 0}) as mem:
        assert mem.verify().ok and _answers(mem) == before
    assert (path / CATALOG_NAME).exists()
    assert len(list((path / "segments").iterdir())) == 1
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.verify().ok and _answers(mem) == before


def test_a_small_bulk_load_stays_in_the_journal(tmp_path: Path) -> None:
    """ingest_many into a store without a catalog takes the journal in records of at most
    64 texts until journal_only_bytes wait; the answers are those of a catalog store."""
    texts = [f"note {i} about {TURNS[i % len(TURNS)]}" for i in range(150)]
    answers = []
    for name, settings in (("j", None), ("c", {"journal_only_turns": 0})):
        with engramdb.open(tmp_path / name, encoder=ENC, settings=settings) as mem:
            results = mem.ingest_many(texts, roles=["user"] * len(texts))
            assert [r.is_new for r in results] == [True] * len(texts)
        with engramdb.open(tmp_path / name, encoder=ENC) as mem:
            answers.append(_answers(mem))
    assert not (tmp_path / "j" / CATALOG_NAME).exists()
    assert answers[0] == answers[1]
    with engramdb.open(tmp_path / "j", encoder=ENC) as mem:
        assert mem.verify().ok  # (which makes the catalog)
    # Past journal_only_bytes the journal folds, and the rest goes to the catalog.
    path = tmp_path / "b"
    with engramdb.open(path, encoder=ENC, settings={"journal_only_bytes": 8192}) as mem:
        mem.ingest_many(texts)
        assert (path / CATALOG_NAME).exists() and mem.count == 150
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.count == 150 and mem.verify().ok


def test_a_bulk_load_past_the_journal_budget_goes_to_the_catalog_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that would make the first fold due on its own gets the catalog before its first
    batch: no journal record is written (and then written again by the fold); a call within
    the budget writes only journal records."""
    appended: list[int] = []
    real_append = TurnJournal.append

    def counting(self: TurnJournal, payload: bytes) -> None:
        appended.append(len(payload))
        real_append(self, payload)

    monkeypatch.setattr(TurnJournal, "append", counting)
    texts = [f"note {i} about {TURNS[i % len(TURNS)]}" for i in range(400)]
    path = tmp_path / "big"  # 400 x 64-d float32: 100 KiB of vectors against a 64 KiB budget
    with engramdb.open(path, encoder=ENC, settings={"journal_only_bytes": 65536}) as mem:
        mem.ingest_many(texts)
        assert (path / CATALOG_NAME).exists() and appended == []
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.count == 400 and mem.verify().ok
    path = tmp_path / "small"
    with engramdb.open(path, encoder=ENC, settings={"journal_only_bytes": 65536}) as mem:
        mem.ingest_many(texts[:100])
        assert not (path / CATALOG_NAME).exists() and len(appended) == 2


def test_a_catalog_made_for_a_large_bulk_load_gets_large_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first fold made by a bulk load of LARGE_LOAD_ROWS rows or more gives the catalog
    LARGE_BLOCK_SIZE blocks (its checkpoints write fewer); smaller loads and turns keep the
    small blocks. Either store reopens and verifies clean."""
    monkeypatch.setattr(catalog_module, "LARGE_LOAD_ROWS", 300)
    texts = [f"note {i} about {TURNS[i % len(TURNS)]}" for i in range(400)]
    sizes = {}
    for name, rows in (("large", 400), ("small", 299)):
        with engramdb.open(tmp_path / name, encoder=ENC, settings={"journal_only_bytes": 4096}
                           ) as mem:
            mem.ingest_many(texts[:rows])
            sizes[name] = catalog_module.block_size(mem.catalog.con)
        with engramdb.open(tmp_path / name, encoder=ENC) as mem:
            assert mem.count == rows and mem.verify().ok
    assert sizes == {"large": catalog_module.LARGE_BLOCK_SIZE,
                     "small": catalog_module.BLOCK_SIZE}
    path = tmp_path / "turns"
    _chat(path, journal_only_turns=2)
    with engramdb.open(path, encoder=ENC) as mem:
        assert catalog_module.block_size(mem.catalog.con) == catalog_module.BLOCK_SIZE


def test_a_bulk_upsert_past_the_budget_replaces_journaled_keys_in_the_catalog(
        tmp_path: Path) -> None:
    """Keys stored in the journal alone, then replaced by an upsert too large for it: the
    upsert makes the catalog, folds the journaled turns first and replaces their keys; a
    keyed ingest of a stored key is refused before anything is written."""
    path = tmp_path / "m"
    settings = {"journal_only_bytes": 65536}
    with engramdb.open(path, encoder=ENC, settings=settings) as mem:
        mem.ingest_many([f"old note {i}" for i in range(10)], keys=[f"k{i}" for i in range(10)])
        assert not (path / CATALOG_NAME).exists()
        with pytest.raises(engramdb.errors.InvalidInput, match="already stored"):
            mem.ingest_many([f"other {i}" for i in range(400)],
                            keys=[f"k{i}" for i in range(400)])
        assert not (path / CATALOG_NAME).exists() and mem.count == 10
        mem.upsert_many([f"k{i}" for i in range(400)], [f"new note {i}" for i in range(400)])
        assert (path / CATALOG_NAME).exists() and mem.count == 400
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.count == 400 and mem.verify().ok
        assert {e.text for e in mem.engrams(limit=1000)} == {f"new note {i}" for i in range(400)}


def test_a_read_only_handle_refuses_a_bulk_load_before_building_a_catalog(
        tmp_path: Path) -> None:
    path = tmp_path / "m"
    _chat(path, 4)
    with engramdb.open(path, encoder=ENC, read_only=True, settings={"journal_only_bytes": 4096}
                       ) as mem:
        with pytest.raises(engramdb.errors.ReadOnlyStore):
            mem.ingest_many([f"bulk {i}" for i in range(300)])
        assert mem._parts.catalog is None  # no scratch catalog was built for the refusal
    assert not (path / CATALOG_NAME).exists()


def test_a_large_import_and_a_large_rewrite_get_large_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog an import makes, and gc --rewrite's copy, take the block size of their
    engram count (storage.catalog.block_size_for)."""
    monkeypatch.setattr(catalog_module, "LARGE_LOAD_ROWS", 100)
    path = tmp_path / "m"
    with engramdb.open(path, encoder=ENC) as mem:
        mem.ingest_many([f"note {i}" for i in range(150)])  # in the journal: 150 x 256 B
        assert catalog_module.block_size(mem.catalog.con) == catalog_module.BLOCK_SIZE
        export_store(mem, tmp_path / "out.jsonl")
        mem.gc(rewrite=True)
        assert catalog_module.block_size(mem.catalog.con) == catalog_module.LARGE_BLOCK_SIZE
    import_store(tmp_path / "copy", tmp_path / "out.jsonl", encoder=ENC)
    with engramdb.open(tmp_path / "copy", encoder=ENC) as mem:
        assert mem.count == 150 and mem.verify().ok
        assert catalog_module.block_size(mem.catalog.con) == catalog_module.LARGE_BLOCK_SIZE
    monkeypatch.setattr(catalog_module, "LARGE_LOAD_ROWS", 1000)
    import_store(tmp_path / "small", tmp_path / "out.jsonl", encoder=ENC)
    with engramdb.open(tmp_path / "small", encoder=ENC) as mem:
        assert catalog_module.block_size(mem.catalog.con) == catalog_module.BLOCK_SIZE


def test_vector_files_left_behind_are_removed(tmp_path: Path) -> None:
    """A segment file left in a store without a catalog holds nothing the journal lacks:
    the next open removes it (and says so), answers from the journal, and verifies clean."""
    path = tmp_path / "m"
    before = _crashed(path, 3)
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.recovered == ["removed 1 vector files the turn journal holds"]
        assert list((path / "segments").iterdir()) == []
        assert _answers(mem) == before
        assert mem.verify().ok  # (the first fold: the files are written again)
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.recovered == [] and _answers(mem) == before


def test_a_read_only_open_of_a_store_whose_vectors_were_lost(tmp_path: Path) -> None:
    """Vector bytes never synced are lost at a power cut; the journal holds them: a
    read-only handle replays them into its own files and verifies clean, changing nothing."""
    path = tmp_path / "m"
    before = _crashed(path, 4)
    segment = next((path / "segments").iterdir())
    with segment.open("r+b") as fh:
        fh.truncate(segment.stat().st_size // 2)
    files = _files(path)
    with engramdb.open(path, encoder=ENC, read_only=True) as mem:
        assert mem.verify().ok and _answers(mem) == before
    assert _files(path) == files


def test_a_sweep_never_removes_a_scratch_directory_being_made(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """Read-only opens in several workers make scratch directories while each sweeps the
    others' dead ones: a directory is only ever found by a sweep with its lock held (its
    lock file is locked under another name, then renamed), so none is removed in use."""
    import tempfile
    import threading

    from engramdb.storage import scratch as scratch_module

    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    lost: list[str] = []

    def worker() -> None:
        for _ in range(150):
            made = scratch_module.make_scratch(tmp_path)  # sweeps, then makes its own
            if not (made.path / "owner.lock").exists():
                lost.append(str(made.path))
            made.remove()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lost == []
    assert list(root.iterdir()) == []


def test_no_scratch_directory_outlives_its_read_only_handle(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """A read-only open that fails removes its scratch directory; one whose owner was killed
    (its lock is free) is removed by the next read-only open of such a store, and one whose
    owner is alive, in whatever process, is not."""
    import subprocess
    import sys
    import tempfile

    from engramdb.storage import scratch as scratch_module

    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    path = tmp_path / "m"
    _chat(path, 3)
    # An owner killed: its directory and unlocked lock file stay behind.
    dead = root / f"{scratch_module.PREFIX}dead"
    dead.mkdir()
    (dead / "owner.lock").touch()
    # An owner alive in another process (its pid means nothing to the sweep).
    alive = root / f"{scratch_module.PREFIX}alive"
    alive.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|"
         "os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); "
         "time.sleep(60)", str(alive / "owner.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with engramdb.open(path, encoder=ENC, read_only=True) as mem:
            assert mem.count == 3
            own = mem._parts.scratch.path
            assert own.exists() and not dead.exists() and alive.exists()
        assert not own.exists()
        data = bytearray((path / JOURNAL_NAME).read_bytes())
        data[20] ^= 0xFF  # damage in the first of several records: the open is refused
        (path / JOURNAL_NAME).write_bytes(bytes(data))
        with pytest.raises(CorruptStore):
            engramdb.open(path, encoder=ENC, read_only=True)
        assert sorted(p.name for p in root.iterdir()) == [alive.name]
    finally:
        holder.kill()
        holder.wait()


def test_a_read_only_open_without_a_writable_temporary_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    path = tmp_path / "m"
    _chat(path, 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))
    with pytest.raises(engramdb.errors.StorageError, match="TMPDIR"):
        engramdb.open(path, encoder=ENC, read_only=True)


def test_sync_keeps_a_store_without_its_catalog(tmp_path: Path) -> None:
    path = tmp_path / "m"
    with engramdb.open(path, encoder=ENC, settings={"durability": "fast"}) as mem:
        mem.integrate("a turn")
        mem.sync()
        assert not (path / CATALOG_NAME).exists()


def test_reopened_with_journal_only_turns_0_the_store_gets_its_catalog(tmp_path: Path) -> None:
    path = tmp_path / "m"
    before = _chat(path, 3)
    with engramdb.open(path, encoder=ENC, settings={"journal_only_turns": 0}) as mem:
        assert (path / CATALOG_NAME).exists()
        assert _answers(mem) == before


def test_a_directory_in_place_of_the_temporary_catalog_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _chat(path, 2)
    (path / CATALOG_TEMP).mkdir()
    with engramdb.open(path, encoder=ENC) as mem:
        with pytest.raises(CorruptStore):
            mem.catalog  # noqa: B018 - the first fold
    assert not (path / CATALOG_NAME).exists()


def test_a_refused_keyed_bulk_load_writes_nothing(tmp_path: Path) -> None:
    """A keyed ingest_many checks every key of the call before its first record: one key
    already stored refuses the whole call, though it spans several 64-text records."""
    with engramdb.open(tmp_path / "m", encoder=ENC) as mem:
        mem.ingest("held", key="k69")
        with pytest.raises(engramdb.errors.InvalidInput, match="k69"):
            mem.ingest_many([f"text {i}" for i in range(70)], keys=[f"k{i}" for i in range(70)])
        assert mem.count == 1


def _read_until_closed(mem: engramdb.Store, start: threading.Barrier,
                       errors: list[BaseException]) -> None:
    start.wait()
    try:
        for _ in range(200):
            mem.recall("cat", top_k=3)
            mem.vectors([mem.recall("guitar", top_k=1)[0].id])
            mem.stats()
    except engramdb.errors.StoreClosed:
        pass
    except BaseException as exc:  # noqa: BLE001 - any other error fails the test
        errors.append(exc)


def test_recalls_racing_a_close_see_it_closed(tmp_path: Path) -> None:
    """Close drops the vectors a store without a catalog holds: recalls in flight finish
    first, and later ones raise StoreClosed, never a damaged-store error."""
    path = tmp_path / "m"
    _chat(path)
    for _ in range(10):
        mem = engramdb.open(path, encoder=ENC)
        errors: list[BaseException] = []
        start = threading.Barrier(5)
        threads = [threading.Thread(target=_read_until_closed, args=(mem, start, errors))
                   for _ in range(4)]
        for t in threads:
            t.start()
        start.wait()
        mem.close()
        for t in threads:
            t.join()
        assert errors == []


def test_close_deletes_only_the_segment_files_it_names(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _chat(path, 3)
    strays = ["000000001.vec", "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668.vec",
              "00000001.vec.bak", "notes.txt"]
    with engramdb.open(path, encoder=ENC):
        for name in strays:
            (path / "segments" / name).write_bytes(b"x")
    assert sorted(p.name for p in (path / "segments").iterdir()) == sorted(strays)


def test_a_fast_first_fold_syncs_the_vectors_before_its_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"fast" durability: the first fold's turns were durable in the journal alone, so
    their vector files are fsynced before the fold commits (a power cut that kept the commit
    and lost the vectors would drop the turns, the journal counting them as folded)."""
    from engramdb.engine import commit as commit_module

    path = tmp_path / "m"
    before = _chat(path, 3, durability="fast")
    unsynced_at_commit: list[set[int]] = []
    real = commit_module.Commit.finish

    def finish(self) -> None:
        if self.folding:
            unsynced_at_commit.append(set(self.committer.parts.segments.dirty))
        real(self)

    monkeypatch.setattr(commit_module.Commit, "finish", finish)
    with engramdb.open(path, encoder=ENC, settings={"durability": "fast"}) as mem:
        mem.catalog  # noqa: B018 - the first fold
        assert unsynced_at_commit and unsynced_at_commit[0] == set()
        assert _answers(mem) == before
