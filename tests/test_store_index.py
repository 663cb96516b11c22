"""The vector index inside a store: replay on open, deletions, filters equal to an exact scan."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import engramdb

DIM = 32
# A tiny exact_threshold makes small test stores search through the graph, as large ones do.
GRAPH = {"exact_threshold": 50}


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# The saved index of a store with a catalog (without one, every open rebuilds it by
# replaying the journal).
@pytest.mark.usefixtures("catalog_from_the_start")
def test_reopen_after_ingest_without_index_save_replays(tmp_path: Path) -> None:
    path = tmp_path / "r.engram"
    x = _vectors(3000, 0)
    with engramdb.open(path, dim=DIM, index=GRAPH) as mem:
        first = mem.ingest_many([f"a{i}" for i in range(1500)], vectors=x[:1500])
    saved = tmp_path / "index-then"
    shutil.copytree(path / "index", saved)  # the index as it was before the next writes
    with engramdb.open(path) as mem:
        second = mem.ingest_many([f"b{i}" for i in range(1500)], vectors=x[1500:])
        mem.forget([first[0].id])
    shutil.rmtree(path / "index")
    shutil.copytree(saved, path / "index")  # as if those writes' index save never happened
    with engramdb.open(path) as mem:
        assert any("replayed 1500" in r for r in mem.recovered), mem.recovered
        ids = [r.id for r in first[1:] + second]
        for i in np.random.default_rng(1).choice(len(ids), 50, replace=False):
            hit = mem.recall(vector=mem.vectors([ids[i]])[0], top_k=1, associative=False)[0]
            assert hit.id == ids[i]
        assert first[0].id not in {h.id for h in mem.recall(vector=x[0], top_k=20)}
        assert mem.verify().ok


# The saved index of a store with a catalog (without one, every open rebuilds it by
# replaying the journal).
@pytest.mark.usefixtures("catalog_from_the_start")
def test_damaged_index_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "d.engram"
    x = _vectors(500, 2)
    with engramdb.open(path, dim=DIM, index=GRAPH) as mem:
        mem.ingest_many([f"t{i}" for i in range(500)], vectors=x)
    graph = next((path / "index").glob("*.hnsw"))
    graph.write_bytes(graph.read_bytes()[:1000])
    with engramdb.open(path) as mem:
        assert any("rebuilt the vector index" in r for r in mem.recovered)
        assert mem.recall(vector=x[7], top_k=1)[0].text == "t7"


@pytest.mark.parametrize("share", [0.02, 0.5])
def test_filtered_recall_equals_exact_filtered_scan(tmp_path: Path, share: float) -> None:
    n = 4000
    x = _vectors(n, 3)
    rng = np.random.default_rng(4)
    sessions = ["wanted" if rng.random() < share else f"s{i % 7}" for i in range(n)]
    with engramdb.open(tmp_path / "f.engram", dim=DIM, index=GRAPH) as mem:
        res = mem.ingest_many([f"e{i}" for i in range(n)], vectors=x, sessions=sessions)
        allowed = np.array([s == "wanted" for s in sessions])
        stored = mem.vectors([r.id for r in res])
        for q in _vectors(20, 5):
            exact = np.argsort(-(stored @ q) + np.where(allowed, 0, 10))[:10]
            hits = mem.recall(vector=q, top_k=10, where={"session": "wanted"},
                              associative=False)
            assert all(h.session == "wanted" for h in hits)
            got = {h.id for h in hits}
            want = {res[i].id for i in exact}
            if share < 0.1:  # a selective filter is answered by an exact scan: identical
                assert got == want
            else:  # a broad one by a filtered graph walk: approximate
                assert len(got & want) >= 8
