"""Background indexing: acknowledged rows are searchable before the graph holds them."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import engramdb
from engramdb.derived.index import VectorIndex
from engramdb.errors import StorageError

# Bulk batches go to the indexer whole, from a catalog: a store without one takes the
# journal in 64-text records, and a later record would find a failed worker already.
pytestmark = pytest.mark.usefixtures("catalog_from_the_start")

DIM = 32
GRAPH = {"exact_threshold": 50}  # search through the graph even in a small store


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def held_graph(monkeypatch: pytest.MonkeyPatch):
    """Make VectorIndex.add wait until the test releases it (the worker stalls, rows pend)."""
    gate = threading.Event()
    real_add = VectorIndex.add

    def add(self, labels, vectors, **kw):  # type: ignore[no-untyped-def]
        gate.wait(timeout=60)
        return real_add(self, labels, vectors, **kw)

    monkeypatch.setattr(VectorIndex, "add", add)
    yield gate
    gate.set()


def _exact_top(x: np.ndarray, alive: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    s = x @ q
    s[~alive] = -np.inf
    return [int(i) for i in np.argsort(-s, kind="stable")[:k]]


def test_pending_rows_are_found_exactly(tmp_path: Path, held_graph: threading.Event) -> None:
    x = _vectors(600, 0)
    with engramdb.open(tmp_path / "m", dim=DIM, index=GRAPH) as mem:
        held_graph.set()
        mem.ingest_many([f"old{i}" for i in range(300)], vectors=x[:300])
        mem.indexer.drain()
        held_graph.clear()  # from here the worker stalls: the next rows stay pending
        mem.ingest_many([f"new{i}" for i in range(300)], vectors=x[300:])
        assert len(mem.indexer) == 300
        alive = np.ones(600, bool)
        for qi in (5, 305, 450, 599):
            got = [h.text for h in mem.recall(vector=x[qi], top_k=5,
                                              associative=False)]
            want = [("old" if i < 300 else "new") + str(i % 300)
                    for i in _exact_top(x, alive, x[qi], 5)]
            assert got == want  # pending rows scanned exactly, merged with the graph's
        # A pending engram that is forgotten never comes back, before or after indexing.
        gone = mem.ingest("new450", vector=x[450]).id
        mem.forget(gone)
        assert gone not in {h.id for h in mem.recall(vector=x[450], top_k=10)}
        held_graph.set()
        mem.indexer.drain()
        assert gone not in {h.id for h in mem.recall(vector=x[450], top_k=10)}
        assert len(mem.indexer) == 0
        assert mem.verify().ok


def test_close_with_rows_pending_replays_them(tmp_path: Path,
                                              held_graph: threading.Event) -> None:
    x = _vectors(400, 1)
    path = tmp_path / "m"
    with engramdb.open(path, dim=DIM, index=GRAPH) as mem:
        held_graph.set()
        mem.ingest_many([f"a{i}" for i in range(200)], vectors=x[:200])
        mem.indexer.drain()
        held_graph.clear()
        ids = [r.id for r in mem.ingest_many([f"b{i}" for i in range(200)], vectors=x[200:])]
        before = [h.id for h in mem.recall(vector=x[250], top_k=5)]
        held_graph.set()  # close drains and saves
    with engramdb.open(path) as mem:
        assert all(i in mem for i in ids)
        assert [h.id for h in mem.recall(vector=x[250], top_k=5)][0] == before[0]
        assert mem.verify().ok


def test_failing_worker_keeps_rows_searchable(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    x = _vectors(300, 2)
    path = tmp_path / "m"
    with engramdb.open(path, dim=DIM, index=GRAPH) as mem:
        mem.ingest_many([f"a{i}" for i in range(100)], vectors=x[:100])
        mem.indexer.drain()

        def broken(self, labels, vectors, **kw):  # type: ignore[no-untyped-def]
            raise MemoryError("no room for the graph")

        monkeypatch.setattr(VectorIndex, "add", broken)
        res = mem.ingest_many([f"b{i}" for i in range(100)], vectors=x[100:200])
        assert mem.recall(vector=x[150], top_k=1)[0].text == "b50"
        with pytest.raises(StorageError, match="background indexing failed"):
            mem.indexer.drain()
        with pytest.raises(StorageError):
            mem.ingest_many([f"c{i}" for i in range(100)], vectors=x[200:])
        monkeypatch.undo()
        before = len(mem)
    # close could not save the index; the next open replays the rows it lacks
    with engramdb.open(path) as mem:
        assert len(mem) == before  # the refused batch wrote nothing
        assert all(r.id in mem for r in res)
        assert mem.recall(vector=x[150], top_k=1)[0].text == "b50"
        assert mem.verify().ok


def test_rebuild_restarts_a_failed_worker(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    x = _vectors(300, 5)
    with engramdb.open(tmp_path / "m", dim=DIM, index=GRAPH) as mem:
        real_add = VectorIndex.add
        monkeypatch.setattr(VectorIndex, "add", lambda *a, **k: (_ for _ in ()).throw(
            MemoryError("full")))
        mem.ingest_many([f"a{i}" for i in range(100)], vectors=x[:100])
        with pytest.raises(StorageError):
            mem.indexer.drain()  # the worker has failed by now
        with pytest.raises(StorageError):
            mem.ingest("refused", vector=x[100])
        monkeypatch.setattr(VectorIndex, "add", real_add)
        mem.rebuild()
        mem.ingest_many([f"b{i}" for i in range(200)], vectors=x[100:])
        mem.indexer.drain()
        assert len(mem.index) == 300
        assert mem.recall(vector=x[42], top_k=1)[0].text == "a42"
        assert mem.verify().ok


def test_synchronous_when_backlog_is_zero(tmp_path: Path) -> None:
    x = _vectors(200, 3)
    with engramdb.open(tmp_path / "m", dim=DIM, index=GRAPH,
                       settings=engramdb.Settings(index_backlog_mb=0)) as mem:
        mem.ingest_many([f"a{i}" for i in range(200)], vectors=x)
        assert len(mem.indexer) == 0 and len(mem.index) == 200


def test_recall_while_bulk_ingest_runs(tmp_path: Path) -> None:
    """Readers in other threads during a bulk load see every row acknowledged before them."""
    x = _vectors(4000, 4)
    errors: list[BaseException] = []
    with engramdb.open(tmp_path / "m", dim=DIM, index=GRAPH) as mem:
        acked = threading.Event()
        done = threading.Event()

        def reader() -> None:
            acked.wait(30)
            try:
                while not done.is_set():
                    hit = mem.recall(vector=x[7], top_k=1, associative=False)
                    assert hit and hit[0].text == "t7", hit
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        mem.ingest_many([f"t{i}" for i in range(500)], vectors=x[:500])
        acked.set()
        for start in range(500, 4000, 500):
            mem.ingest_many([f"t{i}" for i in range(start, start + 500)],
                            vectors=x[start:start + 500])
        done.set()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert mem.verify().ok
