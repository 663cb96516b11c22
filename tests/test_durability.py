"""Durability modes: "full" fsyncs every write; "fast" syncs at sync points and, after a power
cut, loses at most the writes since the last one, never the store's consistency.

A power cut is simulated on a copy of an open store (what the page cache held at that moment:
every commit, in the WAL) whose vector bytes past the sync point are then zeroed, partly
zeroed or cut off, as if they had never reached the disk while the catalog rows that point at
them had.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engramdb
from engramdb.content import check_vectors, normalize_text
from engramdb.encoders import HashingEncoder
from engramdb.errors import InvalidInput
from engramdb.settings import Settings
from engramdb.storage import segments as segments_mod
from engramdb.storage.segments import SEGMENT_DIR, segment_name
from engramdb.transfer import export_store, import_store

# These tests are about a store with its catalog file (its journal folded at close,
# its files damaged or counted): new stores here are made with it.
pytestmark = pytest.mark.usefixtures("catalog_from_the_start")

DIM = 16
ENC = HashingEncoder(dim=DIM)
ROW_BYTES = DIM * 4
# 64 rows per segment file and commits of 8 rows: the writes span several files.
# The catalog path (the journal off): the journal's "fast" mode is tested in test_journal.py.
FAST = {"durability": "fast", "sync_interval": 3600.0, "segment_bytes": 4096, "batch_rows": 8,
        "journal_max_engrams": 0}


def _snapshot(src: Path, dest: Path) -> Path:
    """What a power cut (or a kill) leaves of an open store, as far as the page cache goes."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("LOCK"))
    return dest


def _expected_vectors(texts: dict[str, str], ids: list[str]) -> np.ndarray:
    return check_vectors(ENC.encode([texts[i] for i in ids]), DIM, len(ids))


def _check_kept(mem: Any, texts: dict[str, str]) -> None:
    """Every id in ``texts`` is stored with its text and its exact vector."""
    ids = sorted(texts)
    assert all(i in mem for i in ids)
    np.testing.assert_array_equal(mem.vectors(ids), _expected_vectors(texts, ids))
    for i in ids:
        assert mem.get(i).text == texts[i]


def _write_history(path: Path) -> tuple[dict[str, str], dict[str, str], dict[int, int],
                                        set[str], Any]:
    """A fast store with synced writes, then unsynced ones, left open for a snapshot.

    Returns (synced texts by id, unsynced new texts by id, committed rows per segment at the
    sync point, forgotten ids, the open store).
    """
    mem = engramdb.open(path, encoder=ENC, settings=FAST)
    before = [f"synced memory {k} about the garden" for k in range(100)]
    synced = {r.id: normalize_text(t) for r, t in zip(mem.ingest_many(before), before)}
    turn = mem.integrate("what about the garden memory 3?", top_k=3)
    synced[turn.id] = normalize_text("what about the garden memory 3?")
    gone = sorted(synced)[:2]
    mem.forget(gone)
    for i in gone:
        synced.pop(i)
    mem.sync()
    marks = mem.segments.committed
    after = [f"unsynced memory {k} about the kitchen" for k in range(50)]
    # Some old content said again: its engram stays, only the reference count grows.
    again = list(synced.values())[:3]
    res = mem.ingest_many(after + again)
    unsynced = {r.id: normalize_text(t) for r, t in zip(res[:50], after)}
    assert all(r.is_new for r in res[:50]) and not any(r.is_new for r in res[50:])
    turn = mem.integrate("and the kitchen memory 7?", top_k=2)  # links to unsynced engrams
    unsynced[turn.id] = normalize_text("and the kitchen memory 7?")
    return synced, unsynced, marks, set(gone), mem


def _zero_after(store: Path, marks: dict[int, int], *, every: int = 1) -> None:
    """Zero the rows past each segment's sync-point length (every ``every``-th of them)."""
    for f in sorted((store / SEGMENT_DIR).iterdir()):
        seg = int(f.stem)
        start = marks.get(seg, 0)
        data = bytearray(f.read_bytes())
        for row in range(start, len(data) // ROW_BYTES, every):
            data[row * ROW_BYTES:(row + 1) * ROW_BYTES] = bytes(ROW_BYTES)
        f.write_bytes(bytes(data))


def _truncate_to(store: Path, marks: dict[int, int]) -> None:
    """Cut every segment file back to its sync-point length; files made after it vanish."""
    for f in sorted((store / SEGMENT_DIR).iterdir()):
        seg = int(f.stem)
        if seg not in marks:
            f.unlink()
        else:
            os.truncate(f, marks[seg] * ROW_BYTES)


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "every_other_row"])
def test_power_loss_after_sync_point_loses_only_unsynced_writes(tmp_path: Path,
                                                                damage: str) -> None:
    synced, unsynced, marks, gone, mem = _write_history(tmp_path / "a.engram")
    snap = _snapshot(tmp_path / "a.engram", tmp_path / "cut.engram")
    mem.close()
    if damage == "zeroed":
        _zero_after(snap, marks)
    elif damage == "truncated":
        _truncate_to(snap, marks)
    else:
        _zero_after(snap, marks, every=2)
    with engramdb.open(snap, encoder=ENC, create=False) as mem:
        report = mem.verify()
        assert report.ok, report.problems
        lost = {i for i in unsynced if i not in mem}
        if damage == "every_other_row":
            assert 0 < len(lost) < len(unsynced)
            _check_kept(mem, {i: t for i, t in unsynced.items() if i not in lost})
        else:
            assert lost == set(unsynced)
        assert any(f"lost {len(lost)} engrams" in r for r in mem.recovered), mem.recovered
        _check_kept(mem, synced)  # every write before the sync point, text and vector
        assert not any(i in mem for i in gone)
        log = [e for e in mem.forgetting_log(limit=1000) if e["reason"] == "lost"]
        assert {e["id"] for e in log} == lost
        if damage == "truncated":
            assert any("cut segment" in r for r in mem.recovered)
        # Recall by vector finds what survived, and the store takes new writes.
        probe = sorted(synced)[5]
        hits = mem.recall(vector=_expected_vectors(synced, [probe])[0], top_k=1)
        assert hits[0].id == probe
        more = mem.ingest_many([f"after the cut {k}" for k in range(20)])
        mem.gc()  # erases the garbage rows of the lost engrams
        assert mem.verify().ok
        new_ids = [r.id for r in more]
    with engramdb.open(snap, encoder=ENC) as mem:  # settled: nothing more to recover
        assert not any("lost" in r for r in mem.recovered), mem.recovered
        assert mem.verify().ok
        assert all(i in mem for i in new_ids)
        _check_kept(mem, synced)


def test_killed_fast_writer_keeps_everything_in_the_page_cache(tmp_path: Path) -> None:
    """SIGKILL, not a power cut: nothing is lost, and the reopen makes it all durable."""
    synced, unsynced, _marks, _gone, mem = _write_history(tmp_path / "k.engram")
    snap = _snapshot(tmp_path / "k.engram", tmp_path / "killed.engram")
    mem.close()
    with engramdb.open(snap, encoder=ENC) as mem:
        assert mem.verify().ok
        assert not any("lost" in r for r in mem.recovered)
        assert any("checked 51 engrams" in r for r in mem.recovered), mem.recovered
        _check_kept(mem, {**synced, **unsynced})
        counters = mem.catalog.counters()
        assert counters["synced_eid"] == counters["next_eid"]


class _FsyncCounter:
    """Stands in for ``os`` in engramdb.storage.segments and counts fsyncs of vector files."""

    def __init__(self) -> None:
        self.fsyncs = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        os.fsync(fd)


def _fsync_mode(mem: Any) -> str:
    return mem.catalog.query("SELECT current_setting('fsync_mode')")[0][0]


def test_full_mode_fsyncs_every_batch_and_keeps_the_mark_current(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _FsyncCounter()
    monkeypatch.setattr(segments_mod, "os", counter)
    path = tmp_path / "full.engram"
    settings = {**FAST, "durability": "full"}
    with engramdb.open(path, encoder=ENC, settings=settings) as mem:
        assert _fsync_mode(mem) == "STANDARD"
        mem.ingest_many([f"full memory {k}" for k in range(40)])  # 5 commits
        assert counter.fsyncs >= 5
        counters = mem.catalog.counters()
        assert counters["synced_eid"] == counters["next_eid"] == 41
        assert not mem.segments.dirty and not mem.catalog.pending
        before = counter.fsyncs
        mem.sync()  # nothing pending: no fsync
        assert counter.fsyncs == before
        snap = _snapshot(path, tmp_path / "full-copy.engram")
    with engramdb.open(snap, encoder=ENC) as mem:
        assert not any("sync point" in r for r in mem.recovered), mem.recovered
        assert mem.verify().ok and mem.count == 40


def test_fast_mode_defers_fsyncs_to_sync_points(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _FsyncCounter()
    monkeypatch.setattr(segments_mod, "os", counter)
    path = tmp_path / "fast.engram"
    with engramdb.open(path, encoder=ENC, settings=FAST) as mem:
        assert _fsync_mode(mem) == "NONE"
        mem.ingest_many([f"fast memory {k}" for k in range(40)])
        assert counter.fsyncs == 0
        assert mem.segments.dirty and mem.catalog.pending
        assert mem.catalog.counters()["synced_eid"] == 1
        mem.sync()
        assert counter.fsyncs >= 1
        assert not mem.segments.dirty and not mem.catalog.pending
        assert mem.catalog.counters()["synced_eid"] == 41
        assert _fsync_mode(mem) == "NONE"  # back to fast after the sync point
        victims = [r.id for r in mem.ingest_many([f"victim {k}" for k in range(10)])]
        mem.forget(victims[:5])
        mem.gc()  # a sync point; its own writes are durable
        assert mem.catalog.counters()["synced_eid"] == mem.catalog.counters()["next_eid"]
        assert not mem.catalog.pending and _fsync_mode(mem) == "NONE"
        mem.ingest_many(["written last"])
    with engramdb.open(path, encoder=ENC) as mem:  # close() was a sync point
        assert mem.recovered == [] and mem.verify().ok
        counters = mem.catalog.counters()
        assert counters["synced_eid"] == counters["next_eid"]


def test_sync_interval_syncs_at_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "interval.engram"
    with engramdb.open(path, encoder=ENC, settings={**FAST, "sync_interval": 0.0}) as mem:
        first = mem.ingest("first")
        assert mem.catalog.counters()["synced_eid"] == 1  # acknowledged, not yet synced
        mem.ingest("second")  # its transaction first syncs what came before
        assert mem.catalog.counters()["synced_eid"] == 2
        assert first.id in mem


def test_fast_store_switched_to_full_is_settled_on_open(tmp_path: Path) -> None:
    synced, unsynced, _marks, _gone, mem = _write_history(tmp_path / "s.engram")
    snap = _snapshot(tmp_path / "s.engram", tmp_path / "switch.engram")
    mem.close()
    full = {**FAST, "durability": "full"}
    with engramdb.open(snap, encoder=ENC, settings=full) as mem:
        assert _fsync_mode(mem) == "STANDARD"
        counters = mem.catalog.counters()
        assert counters["synced_eid"] == counters["next_eid"]
        _check_kept(mem, {**synced, **unsynced})
        mem.ingest("in full mode again")
        counters = mem.catalog.counters()
        assert counters["synced_eid"] == counters["next_eid"]


def test_store_without_a_sync_mark_opens(tmp_path: Path) -> None:
    """Stores written before "fast" durability existed have no synced_eid counter."""
    path = tmp_path / "old.engram"
    with engramdb.open(path, encoder=ENC) as mem:
        res = mem.ingest_many([f"old memory {k}" for k in range(20)])
        with mem.catalog.transaction() as con:
            con.execute("DELETE FROM counters WHERE name = 'synced_eid'")
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.recovered == []
        counters = mem.catalog.counters()
        assert counters["synced_eid"] == counters["next_eid"] == 21
        assert mem.verify().ok and all(r.id in mem for r in res)


def test_export_and_import_of_a_fast_store(tmp_path: Path) -> None:
    path = tmp_path / "src.engram"
    with engramdb.open(path, encoder=ENC, settings=FAST) as mem:
        res = mem.ingest_many([f"exported memory {k}" for k in range(30)])
        export_store(mem, tmp_path / "dump.jsonl")
    import_store(tmp_path / "dst.engram", tmp_path / "dump.jsonl")
    with engramdb.open(tmp_path / "dst.engram", encoder=ENC) as mem:
        assert mem.settings.durability == "fast"
        assert mem.recovered == [] and mem.verify().ok
        counters = mem.catalog.counters()
        assert counters["synced_eid"] == counters["next_eid"]
        assert all(r.id in mem for r in res)


@pytest.mark.parametrize("bad", [
    {"durability": "nosync"}, {"durability": None}, {"durability": 1},
    {"sync_interval": -1.0}, {"sync_interval": math.nan}, {"sync_interval": math.inf},
    {"sync_interval": "1s"},
])
def test_bad_durability_settings_are_refused(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as err:
        Settings(**bad)
    assert next(iter(bad)) in str(err.value)
    path = tmp_path / "never.engram"
    with pytest.raises(InvalidInput):
        engramdb.open(path, encoder=ENC, settings=bad)
    assert not path.exists()
    if bad.get("durability") == "nosync":
        assert "'full' or 'fast'" in str(err.value)


def test_segment_helpers_find_lost_rows(tmp_path: Path) -> None:
    """verify_rows reads from the files: a short or missing file counts as lost."""
    path = tmp_path / "rows.engram"
    with engramdb.open(path, encoder=ENC, settings=FAST) as mem:
        mem.ingest_many([f"row {k}" for k in range(70)])  # segments 1 (64 rows) and 2 (6)
        rows = mem.catalog.query('SELECT seg, "row", vec_sum FROM engrams ORDER BY eid')
        segs = np.array([r[0] for r in rows])
        rws = np.array([r[1] for r in rows])
        sums = [r[2] for r in rows]
        assert mem.segments.verify_rows(segs, rws, sums).all()
        os.truncate(path / SEGMENT_DIR / segment_name(1), 60 * ROW_BYTES)
        (path / SEGMENT_DIR / segment_name(2)).unlink()
        ok = mem.segments.verify_rows(segs, rws, sums)
        assert ok.sum() == 60 and ok[:60].all()
        assert mem.segments.rows_on_disk(1) == 60 and mem.segments.rows_on_disk(2) == 0


class _FailingFsync(_FsyncCounter):
    """fsync of vector files fails (EIO) while ``failing`` is set."""

    failing = False

    def fsync(self, fd: int) -> None:
        if self.failing:
            raise OSError(5, "injected EIO")
        super().fsync(fd)


def test_failed_sync_closes_the_handle_and_the_reopen_keeps_what_is_on_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed fsync the kernel may have dropped the pages: the handle gives up, and
    the reopen checks every engram past the sync mark instead of trusting a retry."""
    from engramdb.errors import StorageError, StoreClosed

    proxy = _FailingFsync()
    monkeypatch.setattr(segments_mod, "os", proxy)
    path = tmp_path / "eio.engram"
    mem = engramdb.open(path, encoder=ENC, settings=FAST)
    kept = [f"kept memory {k}" for k in range(20)]
    ids = [r.id for r in mem.ingest_many(kept)]
    mem.sync()
    more = [r.id for r in mem.ingest_many([f"pending memory {k}" for k in range(20)])]
    proxy.failing = True
    with pytest.raises(StorageError):
        mem.sync()
    with pytest.raises(StoreClosed):
        mem.ingest("refused: the handle is closed")
    mem.close()  # idempotent
    proxy.failing = False
    with engramdb.open(path, encoder=ENC) as again:
        assert any("checked 20 engrams" in r for r in again.recovered), again.recovered
        assert again.verify().ok
        assert all(i in again for i in ids + more)  # no power cut: the page cache had them


def test_sync_mark_past_the_eids_is_clamped(tmp_path: Path) -> None:
    """An older engramdb's import copies unknown counters as they are: a mark of another
    store's eids must not vouch for this store's future unsynced writes."""
    path = tmp_path / "clamp.engram"
    with engramdb.open(path, encoder=ENC) as mem:
        mem.ingest_many([f"clamped memory {k}" for k in range(10)])
        with mem.catalog.transaction() as con:
            con.execute("UPDATE counters SET value = 500 WHERE name = 'synced_eid'")
    with engramdb.open(path, encoder=ENC, settings=FAST) as mem:
        assert mem.catalog.counters()["synced_eid"] == 11
        mem.ingest_many([f"unsynced memory {k}" for k in range(5)])
        assert mem.catalog.counters()["synced_eid"] == 11  # the new writes are not vouched for
