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
