"""The parts of one open store, shared by the engine and the read path.

A :class:`Parts` holds the store's storage handles (catalog, segments), its derived state
(hot arrays, BM25, conversation context, vector index and its background indexer), the
read gate, and whether the handle is still open. The engine replaces some of them in place
(gc swaps the catalog, ``rebuild`` the index and the BM25 index), so every reader goes
through this object at call time instead of keeping its own reference.

Lock order (outermost first; see docs/architecture.md):
  1. the store's write lock (``Parts.write_lock``): one writer at a time;
  2. the read gate (:class:`ReadGate`): recalls in flight against gc moving vectors;
  3. the catalog's own locks (its close waits for reads in flight);
  4. the vector index's read/write lock, the BM25 index's mutex and the background indexer's
     condition, each held only inside its own module and never while taking another.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from engramdb.errors import ReadOnlyStore, StoreClosed
from engramdb.storage.catalog import Catalog, CatalogClosed

if TYPE_CHECKING:
    from engramdb.derived.context import TurnContext
    from engramdb.derived.hotstate import HotState
    from engramdb.derived.index import VectorIndex
    from engramdb.derived.indexer import BackgroundIndexer
    from engramdb.derived.lexical import LexicalIndex
    from engramdb.engine.mirror import TurnMirror
    from engramdb.settings import Settings
    from engramdb.storage.journal import TurnJournal
    from engramdb.storage.manifest import Manifest
    from engramdb.storage.scratch import ScratchDir
    from engramdb.storage.segments import SegmentStore

T = TypeVar("T")
# How long a reader retries while gc swaps the catalog under it before giving up.
_SWAP_WAIT = 60.0


class ReadGate:
    """Recalls in flight against gc's compaction, which moves vectors and deletes files.

    A recall reads vectors and their pointers without the write lock; it waits while a
    compaction runs (:meth:`moving_vectors`), and a compaction waits for the recalls in flight
    and holds new ones back until it is done.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._moving = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One recall's reads. Never nested (a nested one could wait for a compaction that
        waits for its caller)."""
        cond = self._cond
        with cond:
            while self._moving:
                cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with cond:
                self._readers -= 1
                if self._readers == 0:
                    cond.notify_all()

    @contextmanager
    def moving_vectors(self) -> Iterator[None]:
        """gc's compaction: waits for the recalls in flight, holds new ones back. Called
        under the write lock."""
        cond = self._cond
        with cond:
            self._moving = True
            cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with cond:
                self._moving = False
                cond.notify_all()


class Parts:
    """What one open store is made of; see the module docstring for who replaces what."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self.closed = True
        self.write_lock = threading.RLock()
        self.gate = ReadGate()
        self.manifest: Manifest
        self.settings: Settings
        self.dim: int
        self.fingerprint: str
        self.catalog: Catalog | None = None
        self.segments: SegmentStore
        self.journal: TurnJournal  # the turns acknowledged but not yet folded (storage.journal)
        # The turn path's image of the catalog (engine.mirror), loaded by the first turn and
        # dropped by any write straight to the catalog.
        self.mirror: TurnMirror | None = None
        self.hot: HotState
        self.lexical: LexicalIndex
        self.context: TurnContext
        self.index: VectorIndex | None = None
        self.indexer: BackgroundIndexer | None = None
        # Whether any link exists: a store without links skips the edge query on recall.
        self.has_links = False
        # Opened with read_only=True: no lock, no file is written (engramdb.open).
        self.read_only = False
        # A read-only handle of a store without a catalog file keeps the vectors (and, once a
        # read needs one, the catalog) its replay makes in this temporary directory.
        self.scratch: ScratchDir | None = None
        # Open is replaying the journal: a read-only handle applies the turns in memory.
        self.replaying = False

    def check_writable(self, what: str = "writing") -> None:
        """Raise ReadOnlyStore on a read-only handle (before anything is written)."""
        if self.read_only and not self.replaying:
            raise ReadOnlyStore(f"{self.path} is open read-only: {what} is refused")

    def check_open(self) -> None:
        """Raise StoreClosed if this handle is closed or belongs to the parent of a fork."""
        if self.closed:
            raise StoreClosed(f"{self.path} is closed")
        if os.getpid() != self.pid:
            raise StoreClosed(
                f"{self.path} was opened by process {self.pid}; this is a forked child",
                hint="open the store again in the child process",
            )

    def fetch_vectors(self, eids: np.ndarray) -> np.ndarray:
        """Stored vectors of ``eids`` as float32 rows, in that order."""
        return self.segments.read(self.hot.seg[eids], self.hot.row[eids])

    def stored(self, eid: int) -> bool:
        """Whether an engram is stored (not forgotten or collected; it may have expired)."""
        return 0 <= eid < self.hot.capacity and bool(self.hot.alive[eid])

    # -- catalog reads that hold no store lock ---------------------------------------------

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """:meth:`Catalog.query` on the current catalog, through :meth:`read`."""
        return self.read(lambda c: c.query(sql, params))

    def query_arrow(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        """:meth:`Catalog.query_arrow` on the current catalog, through :meth:`read`."""
        return self.read(lambda c: c.query_arrow(sql, params))

    def read_cursor(self, read: Callable[..., T], *args: Any) -> T:
        """``read(cursor, *args)`` on this thread's cursor of the current catalog, as a read
        its close waits for (:meth:`Catalog.reading`), through :meth:`read`."""
        def run(catalog: Catalog) -> T:
            with catalog.reading() as cur:
                return read(cur, *args)

        return self.read(run)

    def read(self, read: Callable[[Catalog], T]) -> T:
        """``read(catalog)`` for a reader that holds no store lock: if gc swaps the catalog
        under it, it runs again on the new one (the old one's close waits for reads in flight
        and refuses new ones)."""
        deadline = time.monotonic() + _SWAP_WAIT
        while True:
            catalog = self.catalog
            try:
                return read(catalog)
            except CatalogClosed:
                while self.catalog is catalog:  # the swap is a close and an open away
                    self.check_open()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.001)
