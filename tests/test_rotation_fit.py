"""A prefix-level store fits its PCA rotation once it has data; search settings change freely.

An index built while the store is empty starts with a random rotation, whose prefix is only a
random projection; the store refits (PCA on its own vectors) once it holds ``fit_size`` of
them. Changing only search settings (ef, candidate multiplier, thresholds) on reopen must not
rebuild the graphs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import engramdb
from engramdb.derived.index import VectorIndex

DIM = 96
# One 8-d prefix level (fit_size 2,048), searched through the graph from 50 vectors on.
PREFIX = {"levels": [8], "exact_threshold": 50, "candidate_multiplier": 10}


def _vectors(n: int, seed: int) -> np.ndarray:
    """Clustered unit vectors whose variance sits in a few directions (as activations do),
    in a random basis, so only a fitted rotation puts it in the prefix."""
    rng = np.random.default_rng(seed)
    scale = np.r_[np.full(6, 3.0), np.full(DIM - 6, 0.15)]
    basis, _ = np.linalg.qr(np.random.default_rng(99).standard_normal((DIM, DIM)))
    centres = rng.standard_normal((40, DIM)) * scale
    x = (centres[rng.integers(0, 40, n)] + rng.standard_normal((n, DIM)) * scale * 0.3) @ basis
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall_at_10(mem: engramdb.Store, x: np.ndarray, ids: list[str], queries: np.ndarray) -> float:
    found = 0
    for q in queries:
        exact = {ids[i] for i in np.argsort(-(x @ q), kind="stable")[:10]}
        found += len(exact & {h.id for h in mem.recall(vector=q, top_k=10, associative=False)})
    return found / (10 * len(queries))


def test_rotation_is_fitted_once_the_store_has_enough_vectors(tmp_path: Path) -> None:
    path = tmp_path / "fit.engram"
    x = _vectors(3000, 0)
    queries = _vectors(40, 1)
    with engramdb.open(path, dim=DIM, index=PREFIX) as mem:
        assert mem.index.rotation_fitted_on == 0  # empty: the random rotation
        assert mem.index.fit_size == 2048
        res = mem.ingest_many([f"a{i}" for i in range(1000)], vectors=x[:1000])
        mem.drain_index()
        assert mem.index.rotation_fitted_on == 0  # not enough data yet
        random_prefix = mem.index._rotation
        res += mem.ingest_many([f"b{i}" for i in range(2000)], vectors=x[1000:])
        assert mem.index.rotation_fitted_on == 2048
        assert mem.index._rotation is not random_prefix
        ids = [r.id for r in res]
        fitted = _recall_at_10(mem, x, ids, queries)
        # The fitted prefix holds the variance: the 8-d graph finds the true neighbours.
        assert fitted >= 0.95, fitted
        # Later writes do not refit again.
        more = mem.ingest_many(["c0", "c1"], vectors=_vectors(2, 5))
        assert mem.index.rotation_fitted_on == 2048
        assert mem.recall(vector=mem.vectors([more[0].id])[0], top_k=1)[0].id == more[0].id
    with engramdb.open(path) as mem:  # the fit is saved with the index
        assert mem.index.rotation_fitted_on == 2048
        assert not any("rebuilt" in r for r in mem.recovered), mem.recovered
        assert _recall_at_10(mem, x, ids, queries) >= 0.95
        assert mem.verify().ok


def test_fitted_rotation_beats_the_random_one(tmp_path: Path, monkeypatch) -> None:
    """What the fit is for: with the random rotation the same store misses neighbours."""
    x = _vectors(3000, 0)
    queries = _vectors(40, 1)
    scores = {}
    for name in ("fitted", "random"):
        if name == "random":  # hold the fit off: it would need more vectors than exist
            monkeypatch.setattr(VectorIndex, "fit_size", property(lambda self: 10**9))
        few = {**PREFIX, "candidate_multiplier": 3}  # a thin re-rank shows the prefix's quality
        with engramdb.open(tmp_path / f"{name}.engram", dim=DIM, index=few) as mem:
            res = mem.ingest_many([f"a{i}" for i in range(3000)], vectors=x)
            assert (mem.index.rotation_fitted_on == 0) == (name == "random")
            scores[name] = _recall_at_10(mem, x, [r.id for r in res], queries)
    assert scores["fitted"] >= 0.95 and scores["fitted"] > scores["random"] + 0.1, scores


def test_search_settings_change_without_a_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "tune.engram"
    x = _vectors(600, 3)
    with engramdb.open(path, dim=DIM, index={"exact_threshold": 50}) as mem:
        res = mem.ingest_many([f"t{i}" for i in range(600)], vectors=x)
    graph = sorted(p.name for p in (path / "index").glob("*.hnsw"))
    with engramdb.open(path, index={"ef_search": 200, "candidate_multiplier": 3}) as mem:
        assert not any("rebuilt" in r for r in mem.recovered), mem.recovered
        assert mem.index.config.ef_search == 200
        assert mem.index.config.candidate_multiplier == 3
        assert mem.recall(vector=x[5], top_k=1)[0].id == res[5].id
    assert sorted(p.name for p in (path / "index").glob("*.hnsw")) == graph  # same files
    with engramdb.open(path, index={"M": 8}) as mem:  # a graph field: rebuilt
        assert any("rebuilt the vector index" in r for r in mem.recovered), mem.recovered
        assert mem.index.config.M == 8
        assert mem.recall(vector=x[5], top_k=1)[0].id == res[5].id
