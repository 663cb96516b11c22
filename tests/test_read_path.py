"""The read path's shortcuts give exactly what the general code gives."""

from __future__ import annotations

import re
import sys
import threading

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engramdb.content import check_vectors, unit_rows, validate_vectors
from engramdb.derived.hotstate import _Packed
from engramdb.errors import InvalidInput

DIM = 24


@settings(max_examples=300, deadline=None)
@given(
    arrays(st.sampled_from([np.float16, np.float32, np.float64]), DIM,
           elements=st.floats(-1e4, 1e4, width=16)),
    st.booleans(),
)
def test_single_query_check_is_bit_identical(vec: np.ndarray, as_row: bool) -> None:
    """A query's one-pass check returns the bits of the blockwise path, or raises as it does."""
    arg = vec[None, :] if as_row else vec
    try:
        expected = unit_rows(validate_vectors(arg, DIM, 1))
    except InvalidInput as exc:
        with pytest.raises(InvalidInput, match=re.escape(str(exc).split(" (hint")[0])):
            check_vectors(arg, DIM, 1)
        return
    got = check_vectors(arg, DIM, 1)
    assert got.dtype == np.float32 and got.shape == (1, DIM)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    row = np.asarray(arg, np.float64).reshape(1, DIM)  # numpy's own norm: the same bits
    reference = (row / np.linalg.norm(row, axis=1)[:, None]).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), reference.view(np.uint32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_single_query_rejects_non_finite(bad: float) -> None:
    """NaN and inf in a query get the general path's message."""
    vec = np.ones(DIM, np.float32)
    vec[3] = bad
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        check_vectors(vec, DIM, 1)


def test_single_query_rejects_zero_and_overflow() -> None:
    """A zero query, and one whose length overflows float64, have no direction."""
    with pytest.raises(InvalidInput, match="zero"):
        check_vectors(np.zeros(DIM), DIM, 1)
    with pytest.raises(InvalidInput, match="zero"):
        check_vectors(np.full(DIM, 1e200), DIM, 1)


@pytest.mark.parametrize("array", [
    pa.array(["engram", "", "é" * 3, "last"]),
    pa.array(["skip", "engram", "", "é" * 3, "last"])[1:],
    pa.array(["engram", "", "é" * 3, "last"], pa.large_string()),
    pa.array([b"\x00\x01", b"", b"zstd", b"\xff"], pa.binary()),
    pa.array([b"\x00\x01", b"", b"zstd", b"\xff"], pa.large_binary()),
])
def test_packed_column_reads_every_value(array: pa.Array) -> None:
    """Values read at the buffer offsets are the column's own, for slices and wide offsets."""
    packed = _Packed(array)
    want = [v.encode() if isinstance(v, str) else v for v in array.to_pylist()]
    assert [packed.get(i) for i in range(len(array))] == want


def test_hot_state_reads_payloads_from_every_record_batch() -> None:
    """The catalog's rows arrive in several record batches (eids in any order, a batch may
    be empty); each batch's ids and texts are read where they are, without a combined copy."""
    from engramdb.derived.hotstate import HotState

    eids = np.random.default_rng(7).permutation(10)
    cols = {"eid": eids, "seg": np.zeros(10, np.int32), "row": eids,
            "kind": np.zeros(10, np.int8), "expires_at": np.full(10, np.nan),
            "created_tick": np.zeros(10, np.int64),
            "id": [f"id{e}" for e in eids], "text": [f"text {e}".encode() for e in eids]}
    whole = pa.table({k: pa.array(v) for k, v in cols.items()})
    batch = whole.combine_chunks().to_batches()[0]
    table = pa.Table.from_batches([batch.slice(0, 3), batch.slice(3, 0), batch.slice(3, 7)])
    assert table.column("id").num_chunks == 3
    hot = HotState.from_arrow(table)
    for e in range(10):
        ident, blob = hot.payload(e)
        assert (ident, blob) == (f"id{e}", f"text {e}".encode())


def _small_store(path, n: int = 300, dim: int = 16):
    import engramdb

    vecs = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    settings = engramdb.Settings(segment_bytes=4096 * 4)  # several segments
    with engramdb.open(path, dim=dim, settings=settings) as mem:
        mem.ingest_many([f"engram {i}" for i in range(n)], vectors=vecs)
    return vecs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise prefault is Linux-only")
# A store with a catalog: one without replays its journal on open, which writes every
# vector it would map (so it starts no prefault).
@pytest.mark.usefixtures("catalog_from_the_start")
def test_prefault_maps_every_committed_row(tmp_path) -> None:
    """The prefault covers each segment's committed rows, and a set stop event halts it."""
    import engramdb

    _small_store(tmp_path / "m")
    with engramdb.open(tmp_path / "m") as mem:
        assert mem._prefault is not None
        mem._prefault.join()
        segs = mem.segments
        want = sum(rows * segs.row_bytes for rows in segs.committed.values())
        assert len(segs.committed) > 1
        assert segs.prefault(threading.Event()) >= want  # whole pages: at least the rows
        stopped = threading.Event()
        stopped.set()
        assert segs.prefault(stopped) == 0


# A store with a catalog: one without replays its journal on open, which writes every
# vector it would map (so it starts no prefault).
@pytest.mark.usefixtures("catalog_from_the_start")
def test_prefault_changes_no_answer(tmp_path) -> None:
    """Recall returns the same hits and bits with and without the prefault."""
    import engramdb

    vecs = _small_store(tmp_path / "m")
    answers = []
    for prefault in (True, False):
        settings = engramdb.Settings(segment_bytes=4096 * 4, prefault_vectors=prefault)
        with engramdb.open(tmp_path / "m", settings=settings) as mem:
            assert (mem._prefault is not None) == prefault
            answers.append([[(h.id, h.score) for h in mem.recall(vector=v, top_k=5)]
                            for v in vecs[:20]])
    assert answers[0] == answers[1]


def test_prefault_setting_is_checked() -> None:
    """A non-bool prefault_vectors is refused like any bad setting."""
    import engramdb

    with pytest.raises(InvalidInput, match="prefault_vectors"):
        engramdb.Settings(prefault_vectors=1)


@pytest.mark.parametrize("make", [
    lambda v: np.matrix(v),
    lambda v: np.repeat(v, 2)[::2],  # strided
    lambda v: v.astype(np.float16),
    lambda v: v[:, None].T,  # (1, dim) view
])
def test_single_query_shapes_and_subclasses(make) -> None:
    """Subclasses and strided views give plain float32 rows, the general path's bits."""
    vec = np.random.default_rng(9).standard_normal(DIM).astype(np.float32)
    arg = make(vec)
    got = check_vectors(arg, DIM, 1)
    assert type(got) is np.ndarray and got.shape == (1, DIM)
    assert np.array_equal(got, unit_rows(validate_vectors(arg, DIM, 1)))


def test_mapping_made_before_a_removal_is_not_cached(tmp_path, monkeypatch) -> None:
    """A view mapped while gc removes its segment (a prefault racing gc) is used once, never
    cached: the segment's number may come back with new rows of the same count."""
    import engramdb
    from engramdb.storage import segments as segments_module

    _small_store(tmp_path / "m")
    with engramdb.open(tmp_path / "m", settings=engramdb.Settings(
            segment_bytes=4096 * 4, prefault_vectors=False)) as mem:
        segs = mem.segments
        seg = max(segs.committed)
        segs._maps.clear()
        real_memmap = np.memmap

        def memmap_then_remove(*args, **kwargs):
            out = real_memmap(*args, **kwargs)
            with segs._maps_lock:  # what remove() does to the cache, mid-view
                segs._maps_epoch += 1
                segs._maps.pop(seg, None)
            return out

        monkeypatch.setattr(segments_module.np, "memmap", memmap_then_remove)
        view = segs.view(seg)
        monkeypatch.setattr(segments_module.np, "memmap", real_memmap)
        assert len(view) == segs.committed[seg]
        assert seg not in segs._maps


def test_scan_ignores_rows_committed_after_the_mask(tmp_path) -> None:
    """A small store's scan given a mask taken before a concurrent write neither fails on
    the new rows' eids nor returns them."""
    import engramdb

    vecs = _small_store(tmp_path / "m", n=1020)
    with engramdb.open(tmp_path / "m") as mem:
        mask = mem.hot.visible(mem.clock).copy()
        extra = np.random.default_rng(4).standard_normal((40, vecs.shape[1])).astype(np.float32)
        mem.ingest_many([f"late {i}" for i in range(40)], vectors=extra)
        q = check_vectors(extra[0], vecs.shape[1], 1)[0]
        eids, _ = mem._searcher.exact_search(q, 10, mask)
        assert len(eids) == 10 and (eids < len(mask)).all()


def test_scan_breaks_ties_by_eid(tmp_path) -> None:
    """Engrams with the same vector tied at the top-k cut come back in eid (insertion) order,
    whichever segments they sit in."""
    import engramdb

    dim = 16
    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((200, dim)).astype(np.float32)
    vecs[::20] = vecs[0]  # ten copies of one vector, spread over several segments
    settings = engramdb.Settings(segment_bytes=4096 * 2)
    with engramdb.open(tmp_path / "m", dim=dim, settings=settings) as mem:
        mem.ingest_many([f"engram {i}" for i in range(200)], vectors=vecs)
        assert len(mem.segments.committed) > 1
        for top_k in (1, 3, 7):
            hits = mem.recall(vector=vecs[0], top_k=top_k, associative=False)
            assert [h.text for h in hits] == [f"engram {i}" for i in range(0, 20 * top_k, 20)]
