"""Background indexing: committed vectors join the vector index on a worker thread.

hnswlib insertion is the slowest step of a write by far (docs/recall.md; everything else is about
40x faster), so a write is acknowledged once it is durable (segments + catalog) and its
vectors are handed to this indexer, which adds them to the graph behind the caller's back.
Until a vector is in the graph it is *pending*: :meth:`BackgroundIndexer.snapshot` gives the
pending rows so that a search can scan them exactly and miss nothing that was acknowledged.

Why this is safe: the index is derived state (docs/format.md). A crash with rows pending
loses nothing; the next open replays the catalog rows the saved index lacks. An index is only
saved after :meth:`drain`, so a saved index never claims a generation it does not cover.

The backlog is bounded by ``max_pending_bytes`` (``Settings.index_backlog_mb``): past it,
:meth:`submit` waits for the worker (backpressure), so a bulk load cannot grow memory without
limit, and a search never scans more than that many bytes exactly.

The worker takes at most ``chunk_rows`` rows per hnswlib call, so a search waiting for the
index's read lock waits for one small chunk, not for a whole batch. hnswlib releases the GIL
while it inserts, so the writer's next batch (DuckDB, fsync) overlaps with the insertion.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from engramdb.derived.index import VectorIndex
from engramdb.errors import StorageError

_CHUNK_ROWS = 512  # rows per hnswlib call: ~0.2-0.5 s of insertion at 384-d on 2 cores


class BackgroundIndexer:
    """Adds ``(eids, vectors)`` to a :class:`VectorIndex` on one daemon thread.

    Thread safe. ``submit`` may block (backpressure); ``snapshot`` never waits for the worker.
    ``on_indexed(n)`` is called (from the worker) after each chunk lands in the index.

    Example::

        ix = BackgroundIndexer(index, max_pending_bytes=64 << 20)
        ix.submit(eids, vectors)      # returns at once unless the backlog is full
        e, v = ix.snapshot()          # what a search must scan exactly
        ix.drain()                    # everything submitted is now in the index
        ix.close()
    """

    def __init__(self, index: VectorIndex, *, max_pending_bytes: int,
                 on_indexed: Callable[[int], None] | None = None,
                 chunk_rows: int = _CHUNK_ROWS) -> None:
        self._index = index
        self._max_bytes = max(0, int(max_pending_bytes))
        self._on_indexed = on_indexed
        self._chunk_rows = max(1, int(chunk_rows))
        self._cond = threading.Condition()
        self._eids: list[np.ndarray] = []  # pending chunks, oldest first
        self._vecs: list[np.ndarray] = []
        self._bytes = 0
        self._inflight: np.ndarray | None = None  # the chunk being inserted now
        self._inflight_vecs: np.ndarray | None = None
        self._late_deletes: list[np.ndarray] = []  # removed while in flight: delete after add
        self._pending_set: set[int] = set()
        self._snap: tuple[np.ndarray, np.ndarray] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._start_worker()

    def _start_worker(self) -> None:
        self._thread = threading.Thread(target=self._run, name="engramdb-indexer", daemon=True)
        self._thread.start()

    # -- the caller's side --------------------------------------------------------------------

    def submit(self, eids: np.ndarray, vectors: np.ndarray) -> None:
        """Queue committed ``eids`` with their unit ``vectors``; wait while the backlog is full.

        With ``max_pending_bytes == 0`` this returns only once the rows are in the index
        (synchronous indexing on the worker). Never raises for a failed worker: the rows are
        committed already, so they stay pending (searched exactly) until a rebuild; callers
        check :meth:`check` *before* they commit.
        """
        eids = np.asarray(eids, np.int64).reshape(-1)
        if len(eids) == 0:
            return
        # The store's own array (float16 in a float16 store) is queued as it is, in views: no
        # float32 copy of a whole batch; the worker and snapshot() convert a chunk at a time.
        vecs = vectors if isinstance(vectors, np.ndarray) and vectors.dtype in (
            np.float16, np.float32) else np.asarray(vectors, dtype=np.float32)
        with self._cond:
            for start in range(0, len(eids), self._chunk_rows):
                e = eids[start:start + self._chunk_rows]
                v = vecs[start:start + self._chunk_rows]
                self._eids.append(e)
                self._vecs.append(v)
                self._bytes += v.nbytes
                self._pending_set.update(e.tolist())
            self._snap = None
            self._cond.notify_all()
            while self._bytes > self._max_bytes and self._error is None and not self._closed:
                self._cond.wait()

    def check(self) -> None:
        """Raise ``StorageError`` if the worker failed (``rebuild()`` clears it)."""
        with self._cond:
            self._raise_if_failed()

    @property
    def failed(self) -> bool:
        """Whether the worker stopped on an error."""
        with self._cond:
            return self._error is not None

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Pending (and in-flight) rows: ``(eids int64 (n,), vectors float32 (n, dim))``.

        Take it *before* searching the index: a row that leaves the backlog after the snapshot
        is in the index by then, so it is found one way or the other (possibly both: dedupe).
        """
        with self._cond:
            if self._snap is None:
                es = ([] if self._inflight is None else [self._inflight]) + self._eids
                vs = ([] if self._inflight_vecs is None else [self._inflight_vecs]) + self._vecs
                if es:
                    self._snap = (np.concatenate(es), np.concatenate(vs, dtype=np.float32))
                else:
                    self._snap = (np.zeros(0, np.int64), np.zeros((0, self._index.dim),
                                                                  np.float32))
            return self._snap

    def is_pending(self, eid: int) -> bool:
        """Whether ``eid`` was submitted and is not in the index yet."""
        with self._cond:
            return int(eid) in self._pending_set

    def __len__(self) -> int:
        """Rows submitted and not yet in the index."""
        with self._cond:
            return len(self._pending_set)

    def discard(self, eids: np.ndarray) -> None:
        """Removed engrams: drop them from the backlog, or delete them once their chunk lands."""
        gone = np.asarray(eids, np.int64).reshape(-1)
        if len(gone) == 0:
            return
        with self._cond:
            if not self._pending_set.intersection(gone.tolist()):
                return
            kept_e, kept_v = [], []
            for e, v in zip(self._eids, self._vecs, strict=True):
                keep = ~np.isin(e, gone)
                if keep.all():
                    kept_e.append(e)
                    kept_v.append(v)
                    continue
                self._bytes -= v.nbytes
                if keep.any():
                    kept_e.append(e[keep])
                    kept_v.append(v[keep])
                    self._bytes += kept_v[-1].nbytes
            self._eids, self._vecs = kept_e, kept_v
            if self._inflight is not None:
                late = self._inflight[np.isin(self._inflight, gone)]
                if len(late):
                    self._late_deletes.append(late)
            self._pending_set.difference_update(gone.tolist())
            self._snap = None
            self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every submitted row is in the index. Raises ``StorageError`` if the
        worker failed (the rows stay pending: searches still see them)."""
        with self._cond:
            while (self._eids or self._inflight is not None) and self._error is None:
                self._cond.wait()
            self._raise_if_failed()

    def idle(self) -> bool:
        """Whether nothing is pending or in flight."""
        with self._cond:
            return not self._eids and self._inflight is None

    def reset(self, index: VectorIndex) -> None:
        """Send future rows to ``index``, freshly built from every live row: the backlog is
        dropped (the new index holds it) and a failed worker starts again."""
        with self._cond:
            self._index = index
            self._eids, self._vecs = [], []
            self._bytes = 0 if self._inflight_vecs is None else self._inflight_vecs.nbytes
            self._pending_set = set() if self._inflight is None else set(
                self._inflight.tolist())
            self._late_deletes = []
            self._snap = None
            self._error = None
            self._cond.notify_all()
            if not self._thread.is_alive() and not self._closed:
                self._start_worker()

    def close(self) -> None:
        """Stop the worker without draining (pending rows are replayed on the next open)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()

    # -- the worker ---------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise StorageError(f"background indexing failed: {self._error}") from self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._eids and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                eids, vecs = self._eids.pop(0), self._vecs.pop(0)
                self._inflight, self._inflight_vecs = eids, vecs
                index = self._index
            try:
                index.add(eids, vecs, batch_size=self._chunk_rows)
            except BaseException as exc:  # noqa: BLE001 - kept, and raised to the caller
                with self._cond:
                    self._eids.insert(0, eids)
                    self._vecs.insert(0, vecs)
                    self._inflight = self._inflight_vecs = None
                    self._snap = None
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                late = self._late_deletes
                self._late_deletes = []
            for gone in late:
                index.mark_deleted(gone)
            with self._cond:
                self._bytes -= vecs.nbytes
                self._pending_set.difference_update(eids.tolist())
                self._inflight = self._inflight_vecs = None
                self._snap = None
                self._cond.notify_all()
            if self._on_indexed is not None:
                self._on_indexed(len(eids))
