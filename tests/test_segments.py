"""The vector segment files: a replay's writes held by ``deferring()`` and written once."""

from __future__ import annotations

import numpy as np

from engramdb.storage.segments import SegmentStore, segment_name


def _store(tmp_path, rows_per_segment: int = 8) -> SegmentStore:
    (tmp_path / "segments").mkdir()
    return SegmentStore(tmp_path, 4, "float32", rows_per_segment, durable=False)


def _vectors(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start * 4, (start + n) * 4, dtype=np.float32).reshape(n, 4)


def _append(seg: SegmentStore, vectors: np.ndarray) -> None:
    """Write and commit as a replayed turn does."""
    plan = seg.plan(len(vectors))
    seg.write(plan, vectors, keep_equal=True)
    seg.set_committed(plan.committed_after(seg.committed))


def test_deferred_writes_land_once_at_the_end_across_segment_boundaries(tmp_path) -> None:
    seg = _store(tmp_path)
    with seg.deferring():
        for i in range(0, 20, 3):  # 7 turns of 3 rows (the last of 2) over three files
            _append(seg, _vectors(min(3, 20 - i), i))
        assert not any((seg.directory / segment_name(s)).exists() for s in (1, 2, 3))
    data = np.concatenate([seg.view(s) for s in (1, 2, 3)])
    assert np.array_equal(data, _vectors(20))
    assert seg.dirty == {1, 2, 3}  # never synced: the fold syncs them


def test_a_read_while_deferring_writes_what_is_held_first(tmp_path) -> None:
    seg = _store(tmp_path)
    with seg.deferring():
        _append(seg, _vectors(3))
        assert np.array_equal(seg.view(1), _vectors(3))  # written for the read
        _append(seg, _vectors(2, 3))
        assert np.array_equal(seg.read(np.array([1, 1]), np.array([4, 0])),
                              _vectors(5)[[4, 0]])
    assert np.array_equal(seg.view(1), _vectors(5))


def test_a_rollback_while_deferring_cuts_the_held_rows_too(tmp_path) -> None:
    seg = _store(tmp_path)
    with seg.deferring():
        _append(seg, _vectors(3))
        seg.write(seg.plan(2), _vectors(2, 3), keep_equal=True)  # a commit that fails
        seg.rollback()
        _append(seg, _vectors(2, 10))  # the next turn takes the same rows
    assert np.array_equal(seg.view(1), np.concatenate([_vectors(3), _vectors(2, 10)]))
    assert seg.rows_on_disk(1) == 5


def test_only_replayed_unsynced_writes_are_held(tmp_path) -> None:
    seg = _store(tmp_path)
    with seg.deferring():
        plan = seg.plan(2)
        seg.write(plan, _vectors(2))  # a new write (not a replay): written at once
        assert seg.rows_on_disk(1) == 2
        seg.set_committed(plan.committed_after(seg.committed))
        plan = seg.plan(2)
        seg.write(plan, _vectors(2, 2), durable=True, keep_equal=True)  # synced: at once
        assert seg.rows_on_disk(1) == 4


def test_vectors_held_in_memory_never_touch_a_file_until_written(tmp_path) -> None:
    """A store without a catalog: appends, reads, a rolled back write, verification and
    the first fold's write_held, across segment boundaries."""
    from engramdb.content import vector_checksum

    seg = _store(tmp_path)
    seg.hold_in_memory()
    for i in range(0, 20, 3):  # turns of 3 rows over three segments
        _append(seg, _vectors(min(3, 20 - i), i))
        held = np.concatenate([seg.view(s) for s in sorted(seg.committed)])
        assert np.array_equal(held, _vectors(min(i + 3, 20)))
    assert list(seg.directory.iterdir()) == []
    assert not seg.view(1).flags.writeable
    # A write whose commit failed is cut; the next one takes its rows.
    plan = seg.plan(2)
    seg.write(plan, _vectors(2, 100))
    seg.rollback()
    assert seg.rows_on_disk(3) == 4
    _append(seg, _vectors(2, 20))
    segs, rows = np.array([1, 3, 3]), np.array([0, 5, 6])
    sums = [vector_checksum(_vectors(1, 0)[0]), vector_checksum(_vectors(1, 21)[0]), 0]
    assert seg.verify_rows(segs, rows, sums).tolist() == [True, True, False]
    before = seg.view(3)
    seg.write_held()
    assert not seg.in_memory and seg.dirty == {1, 2, 3}
    data = np.concatenate([seg.view(s) for s in (1, 2, 3)])
    assert np.array_equal(data, _vectors(22)) and np.array_equal(before, data[16:])
    assert (seg.directory / segment_name(3)).stat().st_size == 6 * 16


def test_recovery_in_memory_removes_files_left_behind(tmp_path) -> None:
    """Files in a store whose vectors are held in memory hold nothing its journal lacks:
    recovery removes them (and says so); a dry run changes nothing."""
    seg = _store(tmp_path)
    stale = seg.directory / segment_name(1)
    stale.write_bytes(b"\x01" * 100)
    seg.hold_in_memory()
    _append(seg, _vectors(3))
    assert seg.recover(seg.committed, dry_run=True) and stale.exists()
    assert seg.recover(seg.committed) == ["removed 1 vector files the turn journal holds"]
    assert not stale.exists() and np.array_equal(seg.view(1), _vectors(3))
