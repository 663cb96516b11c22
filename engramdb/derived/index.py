"""The vector index: one hnswlib graph per resolution level, searched coarse to fine.

The store keeps every engram's full-resolution, L2-normalised vector in memmap segments and names
it by an int64 label (its eid). This index is *derived state*: it can always be rebuilt from those
vectors, so a damaged index file raises :class:`IndexDamaged` (internal) and the store rebuilds.

How a search works (docs/recall.md, "Dense search"):

1. Each indexed level is a prefix of the rotated vector (see :mod:`engramdb.derived.rotation`),
   re-normalised so that hnswlib's inner product is the cosine on that prefix.
2. The coarsest level's graph returns ``k * candidate_multiplier`` candidates.
3. Finer indexed levels re-rank the candidates with the prefix vectors their graphs hold.
4. Unless the finest level is the full dimension (then its scores are already exact), the
   survivors are re-ranked exactly on full vectors gathered by the caller's ``fetch(labels)``.

Small stores and selective filters skip the graph and scan exactly. Searches take a shared lock
and writes an exclusive one (:mod:`engramdb.derived.index_lock`).

The caller's ``fetch`` is called without any index lock held, with at most ~1 MiB of vectors'
labels at a time during an exact scan (so it should be a vectorised gather, e.g. a memmap
fancy-index), and may return float16 or float32 rows.

The configuration is :mod:`engramdb.derived.index_config`; the files on disk are
:mod:`engramdb.derived.index_files` (manifest, save, load), :mod:`engramdb.derived.index_hnsw`
(hnswlib's graph files) and :mod:`engramdb.derived.index_checksums`. This module imports only
numpy, hnswlib, the standard library, :mod:`engramdb.errors` and those derived modules.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from engramdb.derived.index_checksums import IndexDamaged
from engramdb.derived.index_config import IndexConfig
from engramdb.derived.index_files import IndexWriter, read_index
from engramdb.derived.index_lock import RWLock
from engramdb.derived.label_states import MAX_LABEL, LabelStates
from engramdb.derived.rotation import Rotation, matvec
from engramdb.errors import DimensionMismatch, InvalidInput

__all__ = ["IndexConfig", "IndexDamaged", "Rotation", "VectorIndex"]

Fetch = Callable[[np.ndarray], np.ndarray]
"""``fetch(labels) -> (len(labels), dim)`` full vectors, in the order of ``labels``."""

# An exact scan gathers and scores ~1 MiB of vectors at a time: the chunk stays in cache between
# the gather and the dot products, a small buffer is reused instead of page-faulting a new one,
# and the product stays single-threaded (see rotation.matvec). Measured at 384-d x 100k on 2 busy
# cores: 19 ms in 1024-row chunks vs 106 ms in one gather.
_SCAN_BYTES = 1 << 20


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _block_rows(dim: int) -> int:
    """Rows per ~8 MiB float32 block: the unit of work of checks that must not copy a whole
    batch at once."""
    return max(1, (8 << 20) // (4 * max(1, dim)))


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0).astype(x.dtype)


class VectorIndex:
    """An approximate nearest-neighbour index over labelled unit vectors, one graph per level.

    Thread-safe: any number of threads may :meth:`search` while another thread calls
    :meth:`add`, :meth:`mark_deleted` or :meth:`save`; searches wait while a write batch (at
    most ``batch_size`` rows) is inserted, and run on during a save. Labels are non-negative
    int64 (the store's eids).

    Raises ``InvalidInput`` for a bad configuration and ``DimensionMismatch`` for vectors of the
    wrong dimension.

    Example::

        idx = VectorIndex(384, IndexConfig.choose(384, 10_000))
        idx.add(np.arange(3), vectors)                       # vectors: (3, 384) float32
        labels, scores, level_scores = idx.search(q, 2, fetch=lambda ls: vectors[ls])
    """

    def __init__(
        self,
        dim: int,
        config: IndexConfig | None = None,
        rotation: Rotation | None = None,
        *,
        capacity: int = 1024,
        fitted_on: int | None = None,
    ) -> None:
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim <= 0:
            raise InvalidInput(f"dim must be a positive integer, got {dim!r}")
        dim = int(dim)
        # A private copy: set_ef_search must not change a config object the caller shares.
        config = IndexConfig.choose(dim) if config is None else dataclasses.replace(
            config, levels=list(config.levels), _extra=dict(config._extra))
        config.validate(dim)
        self._dim = dim
        self._config = config
        self._levels = [int(x) for x in config.levels]
        # A single full-resolution level needs no rotation: an orthonormal rotation keeps every
        # dot product, so skipping it saves a dim x dim product per vector and keeps the graph's
        # scores bit-identical to a plain dot product.
        if self._levels[0] < dim:
            if rotation is None:
                rotation = Rotation.random(dim, config.seed, keep=self._levels[-1])
                fitted_on = 0
            if rotation.dim != dim:
                raise DimensionMismatch(f"rotation is {rotation.dim}-d, index is {dim}-d")
            if rotation.rows < self._levels[-1]:
                raise InvalidInput(f"the rotation keeps {rotation.rows} components, level "
                                   f"{self._levels[-1]} needs that many")
        else:
            rotation = fitted_on = None
        self._rotation = rotation
        # How many vectors the rotation's PCA was fitted on: 0 for a random rotation (an index
        # built before there was data), None when unknown (a caller's rotation, an index saved
        # by engramdb before this was recorded) or when there is no rotation.
        self._fitted_on = None if fitted_on is None else int(fitted_on)
        self._threads = _cpu_count()
        self._capacity = max(1, int(capacity))
        self._graphs = [self._new_graph(lv, self._capacity) for lv in self._levels]
        # Live labels, and dead ones: marked deleted in every graph, their bytes still there.
        self._labels = LabelStates()
        self._lock = RWLock()
        self._save_lock = threading.Lock()  # one save at a time (they share temp naming)
        self._stale_format = False  # loaded from an older index format

    # ---- properties -------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """The full vector dimension."""
        return self._dim

    @property
    def config(self) -> IndexConfig:
        """The configuration this index was built with (treat as read-only)."""
        return self._config

    @property
    def rotation_fitted_on(self) -> int | None:
        """How many vectors the rotation was fitted on (PCA); 0: still the random rotation an
        empty index starts with; None: unknown, or no rotation (a single full-dim level)."""
        return self._fitted_on

    @property
    def fit_size(self) -> int:
        """How many vectors a PCA fit samples: 8x the finest prefix level, at least 2,048
        (0 without a prefix level).

        PCA only has to find the top ``levels[-1]`` (< dim) directions well, and a sample of 8x
        that many vectors does while keeping the fit to about a second at 4,096-d. A random
        rotation's prefix is only a random projection (at 4,096-d a 256-d prefix keeps 1/16 of
        the variance: recall@10 0.92 at 250k vectors against 1.00 with the PCA prefix,
        ``benchmarks/bench_highdim.py``), so the store refits once it holds this many vectors.
        """
        prefixes = [lv for lv in self._levels if lv < self._dim]
        return max(2048, 8 * max(prefixes)) if prefixes else 0

    def set_search_config(self, config: IndexConfig) -> None:
        """Adopt ``config``'s search fields (ef, candidate multiplier, thresholds) at run time.

        Raises ``InvalidInput`` unless ``config`` builds the same graphs (:meth:`IndexConfig.
        same_graphs`): changing a graph field needs a rebuild.

        Example: ``idx.set_search_config(IndexConfig.from_dict({**cfg, "ef_search": 128}))``
        """
        config.validate(self._dim)
        if not self._config.same_graphs(config):
            raise InvalidInput("levels, M, ef_construction and seed need a rebuild")
        with self._lock.write():
            for name in ("candidate_multiplier", "exact_threshold", "filter_crossover"):
                setattr(self._config, name, getattr(config, name))
            self._config.ef_search = int(config.ef_search)
            for g in self._graphs:
                g.set_ef(int(config.ef_search))

    @property
    def stale_format(self) -> bool:
        """Whether :meth:`load` read an older index format: :meth:`save` it to upgrade."""
        return self._stale_format

    def __len__(self) -> int:
        """The number of live (not deleted) labels."""
        return len(self._labels)

    def __contains__(self, label: object) -> bool:
        """Whether ``label`` is live in the index."""
        try:
            return self._labels.is_live(int(label))  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):
            return False

    def labels(self) -> np.ndarray:
        """All live labels, sorted int64: the caller diffs it with its catalog after a load.

        Example: ``missing = np.setdiff1d(catalog_eids, idx.labels())``
        """
        with self._lock.read():
            return self._labels.live()

    # ---- vectors to level vectors -----------------------------------------------------------

    def _level_vectors(self, x: np.ndarray) -> list[np.ndarray]:
        """Per level, the unit-normalised prefix of the rotated rows of unit vectors ``x``."""
        if self._rotation is None:
            return [x]
        if x.ndim == 2 and x.shape[0] == 1:  # a query: the single-vector (unthreaded) product
            z = self._rotation.apply(x[0], self._levels[-1])[None, :]
        else:
            z = self._rotation.apply(x, self._levels[-1])
        return [np.ascontiguousarray(_normalise_rows(z[..., :lv])) for lv in self._levels]

    def _check_vectors(self, vectors: np.ndarray, n: int) -> np.ndarray:
        """Check ``vectors`` (shape, finite, non-zero) block by block without copying them
        whole; returns them as an array (rows are normalised later, per insert block)."""
        v = np.asarray(vectors)
        if v.ndim != 2 or v.shape[1] != self._dim:
            raise DimensionMismatch(
                f"expected vectors of shape ({n}, {self._dim}), got {v.shape}"
            )
        if v.shape[0] != n:
            raise InvalidInput(f"{n} labels but {v.shape[0]} vectors")
        step = _block_rows(self._dim)
        for start in range(0, n, step):
            block = v[start:start + step].astype(np.float32, copy=False)
            if not np.isfinite(block).all():
                raise InvalidInput("vectors must be finite (no NaN or inf)")
            if (np.linalg.norm(block, axis=1) == 0).any():
                raise InvalidInput("a zero vector has no direction: it cannot be indexed")
        return v

    @staticmethod
    def _check_labels(labels: Any) -> np.ndarray:
        lab = np.asarray(labels)
        if lab.ndim != 1 or (lab.size and not np.issubdtype(lab.dtype, np.integer)):
            raise InvalidInput(f"labels must be a 1-d integer array, got {lab.dtype} {lab.shape}")
        lab = lab.astype(np.int64, copy=False)
        if lab.size and lab.min() < 0:
            raise InvalidInput("labels must be non-negative")
        return lab

    def _new_graph(self, level_dim: int, capacity: int) -> hnswlib.Index:
        g = hnswlib.Index(space="ip", dim=level_dim)
        g.init_index(
            max_elements=capacity,
            M=self._config.M,
            ef_construction=self._config.ef_construction,
            random_seed=self._config.seed,
        )
        g.set_ef(self._config.ef_search)
        g.set_num_threads(self._threads)
        return g

    # ---- writes -----------------------------------------------------------------------------

    def add(self, labels: np.ndarray, vectors: np.ndarray, *, batch_size: int = 4096) -> None:
        """Insert (or replace) vectors under ``labels``; a deleted label added again is revived.

        ``vectors`` is (n, dim), normalised here (the store already normalises). Large calls are
        inserted ``batch_size`` rows per exclusive lock hold, so searches interleave with a big
        insert. Raises ``InvalidInput`` (duplicate, negative or non-integer labels; NaN or zero
        vectors) and ``DimensionMismatch``; nothing is inserted then.

        Example: ``idx.add(np.array([10, 11]), np.eye(2, 384, dtype=np.float32))``
        """
        lab = self._check_labels(labels)
        if lab.size and lab.max() > MAX_LABEL:
            raise InvalidInput(f"labels must be at most {MAX_LABEL}")
        vec = self._check_vectors(vectors, len(lab))
        if len(np.unique(lab)) != len(lab):
            raise InvalidInput("labels within one add() must be distinct")
        for start in range(0, len(lab), max(1, batch_size)):
            part = lab[start:start + batch_size]
            block = _normalise_rows(vec[start:start + batch_size].astype(np.float32, copy=False))
            per_level = self._level_vectors(np.ascontiguousarray(block))  # outside the lock
            with self._lock.write():
                self._insert_locked(part, per_level)

    def _insert_locked(self, lab: np.ndarray, per_level: list[np.ndarray]) -> None:
        states = self._labels
        states.reserve(int(lab.max()))  # may fail (memory): before any graph changes
        new = states.count_new(lab)
        n_known = states.n_live + states.n_dead
        need = n_known + new
        if need > self._capacity:
            # Amortised doubling: resize_index copies every graph, so grow geometrically.
            cap = max(need, 2 * self._capacity, 1024)
            for g in self._graphs:
                g.resize_index(cap)
            self._capacity = cap
        ids = lab.astype(np.uint64)
        first = 1 if n_known == 0 else 0
        for g, v in zip(self._graphs, per_level):
            # The first point of an empty graph becomes its entry point: insert it alone.
            if first:
                g.add_items(v[:1], ids[:1], num_threads=1)
            # hnswlib replaces the vector of an existing label, and un-marks a deleted one.
            if len(ids) > first:
                g.add_items(v[first:], ids[first:], num_threads=self._threads)
        states.set_live(lab)

    def mark_deleted(self, labels: np.ndarray) -> int:
        """Make ``labels`` invisible to every later search; returns how many were live.

        Idempotent; a label the index never had is ignored. The vector bytes stay in the graph
        (hnswlib only flags them) until the index is rebuilt, which is what verifiable erasure
        (`forget` + `gc`) must do.

        Example: ``idx.mark_deleted(np.array([10]))``
        """
        lab = self._check_labels(labels)
        with self._lock.write():
            hit = self._labels.live_among(lab)
            for x in hit.tolist():
                for g in self._graphs:
                    g.mark_deleted(x)
            self._labels.set_dead(hit)
        return len(hit)

    def set_ef_search(self, ef: int) -> None:
        """Change the query beam width of every graph (and ``config.ef_search``) at run time.

        Waits for running searches (hnswlib keeps ef in the graph, shared by all queries).
        Raises ``InvalidInput`` for ef < 1.

        Example: ``idx.set_ef_search(128)   # more recall, slower queries``
        """
        if not isinstance(ef, (int, np.integer)) or ef < 1:
            raise InvalidInput(f"ef must be a positive integer, got {ef!r}")
        with self._lock.write():
            self._config.ef_search = int(ef)
            for g in self._graphs:
                g.set_ef(int(ef))

    # ---- search -----------------------------------------------------------------------------

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        fetch: Fetch,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` live labels most similar (cosine) to ``query``, best first.

        ``fetch(labels)`` must return the full vectors of ``labels`` (any float dtype, rows in
        the order asked). ``allowed`` (int64 labels, e.g. from a metadata filter) restricts the
        answer to those labels, inside the search: a selective filter is answered by an exact
        scan of the allowed vectors, a broad one by a filtered graph walk. Below
        ``config.exact_threshold`` live vectors every search is an exact scan.

        Returns ``(labels int64 (h,), scores float32 (h,), level_scores float32 (h, levels))``
        with ``h = min(k, candidates)``; ``scores`` are exact cosines, ``level_scores[:, j]``
        the cosine on level ``j``'s prefix. ``fetch`` is called without any index lock held.

        Raises ``DimensionMismatch`` for a query of the wrong size and ``InvalidInput`` for a
        NaN or zero query, a negative ``k`` or a ``fetch`` that returns the wrong shape.

        Example::

            labels, scores, per_level = idx.search(q, 10, fetch=segments.gather)
        """
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self._dim:
            raise DimensionMismatch(f"query has {q.shape[0]} dims, index has {self._dim}")
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0.0:
            raise InvalidInput("the query must be a finite, non-zero vector")
        q = q / norm
        if not isinstance(k, (int, np.integer)) or k < 0:
            raise InvalidInput(f"k must be a non-negative integer, got {k!r}")
        k = int(k)
        allow = None if allowed is None else self._check_labels(allowed)
        q_levels = [v.reshape(-1) for v in self._level_vectors(q[None, :])]
        if k == 0 or (allow is not None and allow.size == 0):
            return self._empty()

        with self._lock.read():
            n_live = len(self._labels)
            if n_live == 0:
                return self._empty()
            cfg = self._config
            exact_labels: np.ndarray | None = None
            if n_live <= cfg.exact_threshold or (allow is not None and (
                allow.size <= cfg.exact_threshold
                or allow.size * allow.size * self._dim
                < cfg.filter_crossover * self._levels[0] * n_live
            )):
                exact_labels = self._live_subset(allow)
            else:
                cand = self._graph_candidates(q_levels, k, n_live, allow)
                if cand is None:  # hnswlib found fewer than asked: fall back to exact
                    exact_labels = self._live_subset(allow)
        # Outside the lock from here: fetch may take the store's locks, and a writer waiting
        # on ours while holding the store's would otherwise deadlock with us.
        if exact_labels is not None:
            return self._exact(q, q_levels, exact_labels, k, fetch)
        labels, level_scores, exact_needed = cand
        if not exact_needed:
            return labels[:k], level_scores[:k, -1].copy(), level_scores[:k]
        full = self._fetch(fetch, labels)
        scores = matvec(full, q)
        order = np.lexsort((labels, -scores))[:k]
        return labels[order], scores[order], level_scores[order]

    def _live_subset(self, allow: np.ndarray | None) -> np.ndarray:
        """Live labels, or those of ``allow`` that are live, sorted (under the read lock)."""
        if allow is None:
            return self._labels.live()
        return self._labels.live_among(allow)

    def _graph_candidates(
        self, q_levels: list[np.ndarray], k: int, n_live: int, allow: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, bool] | None:
        """Coarse-to-fine candidates, sorted best first, with their per-level scores.

        Called under the read lock. Returns ``None`` when the graph cannot produce enough.
        """
        n_cand = min(k * self._config.candidate_multiplier, n_live)
        if allow is not None:
            n_cand = min(n_cand, allow.size)
        n_cand = max(n_cand, min(k, n_live))
        flt = None if allow is None else self._filter(allow)
        try:
            ids, dist = self._graphs[0].knn_query(q_levels[0], k=n_cand, num_threads=1,
                                                  filter=flt)
        except RuntimeError:
            # "Cannot return the results in a contiguous 2D array": fewer reachable allowed
            # live labels than asked (e.g. the filter admits mostly deleted labels).
            return None
        labels = ids[0].astype(np.int64)
        n_levels = len(self._levels)
        level_scores = np.full((len(labels), n_levels), np.nan, dtype=np.float32)
        level_scores[:, 0] = 1.0 - dist[0]
        # Re-rank on finer levels with the prefix vectors their graphs hold, halving the
        # candidates at each intermediate level; a full-dim last level is exact: keep k.
        for j in range(1, n_levels):
            vecs = np.asarray(self._graphs[j].get_items(labels), dtype=np.float32)
            s = matvec(vecs, q_levels[j])
            last_full = j == n_levels - 1 and self._levels[j] == self._dim
            keep = k if last_full else max(k, n_cand >> j)
            order = np.lexsort((labels, -s))[:keep]
            labels, level_scores = labels[order], level_scores[order]
            level_scores[:, j] = s[order]
        if n_levels == 1:
            order = np.lexsort((labels, -level_scores[:, 0]))
            labels, level_scores = labels[order], level_scores[order]
        exact_needed = self._levels[-1] < self._dim
        return labels, level_scores, exact_needed

    def _filter(self, allow: np.ndarray) -> Callable[[int], Any]:
        """A fast membership test for hnswlib's per-node filter callback.

        Labels are eids, dense from 0, so a byte mask indexed by label is small, cheap to build
        (~1 ms at 1M, vs ~25 ms for a Python set of 500k ints) and its ``__getitem__`` is a C
        call. Sparse or huge labels fall back to a frozenset.
        """
        top = self._labels.max_label
        if top < 4 * max(self._capacity, 1) + (1 << 20):
            mask = np.zeros(top + 1, dtype=np.uint8)
            mask[allow[allow <= top]] = 1
            return mask.tobytes().__getitem__
        return frozenset(allow.tolist()).__contains__

    def _fetch(self, fetch: Fetch, labels: np.ndarray) -> np.ndarray:
        out = np.asarray(fetch(labels))
        if out.shape != (len(labels), self._dim):
            raise InvalidInput(
                f"fetch returned shape {out.shape} for {len(labels)} labels of dim {self._dim}"
            )
        return out.astype(np.float32, copy=False)

    def _exact(
        self, q: np.ndarray, q_levels: list[np.ndarray], labels: np.ndarray, k: int, fetch: Fetch
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact top-k over ``labels`` by scanning their full vectors in chunks."""
        if labels.size == 0:
            return self._empty()
        labels = np.sort(labels)
        best_l = np.empty(0, dtype=np.int64)
        best_s = np.empty(0, dtype=np.float32)
        best_v = np.empty((0, self._dim), dtype=np.float32)
        chunk = max(16, _SCAN_BYTES // (4 * self._dim))
        for start in range(0, len(labels), chunk):
            part = labels[start:start + chunk]
            vecs = self._fetch(fetch, part)
            s = matvec(vecs, q)
            if len(s) > k:  # keep only this chunk's k best before merging
                top = np.argpartition(-s, k - 1)[:k]
                part, s, vecs = part[top], s[top], vecs[top]
            cl = np.concatenate([best_l, part])
            cs = np.concatenate([best_s, s])
            cv = np.concatenate([best_v, vecs])
            sel = np.lexsort((cl, -cs))[:k]
            best_l, best_s, best_v = cl[sel], cs[sel], cv[sel]
        # Level scores of the hits from their full vectors: prefix of the rotation, as indexed.
        per_level = self._level_vectors(_normalise_rows(best_v))
        level_scores = np.stack([matvec(v, ql) for v, ql in zip(per_level, q_levels)], axis=1)
        return best_l, best_s, level_scores.astype(np.float32, copy=False)

    def _empty(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.float32),
            np.empty((0, len(self._levels)), dtype=np.float32),
        )

    # ---- build ------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        labels: np.ndarray,
        vectors_or_fetch: np.ndarray | Fetch,
        config: IndexConfig | None = None,
        rotation: Rotation | None = None,
        *,
        dim: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        batch_size: int | None = None,
        fit_sample: int | None = None,
    ) -> VectorIndex:
        """A new index over ``labels``, with vectors given as an array or gathered by a fetch.

        If a prefix level is indexed and ``rotation`` is ``None``, a PCA rotation is fitted on
        ``fit_sample`` vectors drawn at random (default: 8x the finest prefix, at least 2048);
        a rebuild refits it (docs/recall.md).
        ``progress(done, total)`` is called after every batch (the store passes a tqdm update).
        Raises ``InvalidInput`` / ``DimensionMismatch`` like :meth:`add`.

        Example::

            idx = VectorIndex.build(eids, segments.gather, cfg, dim=384,
                                    progress=lambda done, total: bar.update(done - bar.n))
        """
        lab = cls._check_labels(labels)
        take: Callable[[Any], np.ndarray]  # rows of lab[sel] -> their vectors
        if callable(vectors_or_fetch):
            fetch: Fetch = vectors_or_fetch

            def take(sel: Any) -> np.ndarray:
                return np.asarray(fetch(lab[sel]))

            if dim is None:
                if not len(lab):
                    raise InvalidInput("pass dim= to build an empty index from a fetch function")
                dim = int(take(slice(0, 1)).shape[1])
        else:
            arr = np.asarray(vectors_or_fetch)
            if arr.ndim != 2 or arr.shape[0] != len(lab):
                raise InvalidInput(f"{len(lab)} labels but vectors of shape {arr.shape}")
            dim = arr.shape[1] if dim is None else dim

            def take(sel: Any) -> np.ndarray:
                return arr[sel]

        config = config if config is not None else IndexConfig.choose(dim, len(lab))
        config.validate(dim)
        fitted_on = None
        if rotation is None and config.levels[0] < dim and len(lab):
            finest = max(lv for lv in config.levels if lv < dim)
            size = min(len(lab), fit_sample if fit_sample else max(2048, 8 * finest))  # fit_size
            pick = np.sort(np.random.default_rng(config.seed).choice(len(lab), size, replace=False))
            sample = take(pick)
            rotation = Rotation.fit(_normalise_rows(sample.astype(np.float32)), seed=config.seed,
                                    keep=max(config.levels))
            fitted_on = size
        # Allocate once for the whole build (plus 1/8 headroom), so it never resizes.
        idx = cls(dim, config, rotation, capacity=len(lab) + len(lab) // 8 + 1,
                  fitted_on=fitted_on)
        # Batches of ~32 MiB of float32 (10,000 at 384-d, 2,048 at 4,096-d): the build's
        # memory stays flat whatever the dimension.
        batch_size = batch_size or max(1, min(10_000, (32 << 20) // (4 * dim)))
        for start in range(0, len(lab), batch_size):
            stop = min(start + batch_size, len(lab))
            idx.add(lab[start:stop], take(slice(start, stop)), batch_size=batch_size)
            if progress is not None:
                progress(stop, len(lab))
        return idx


    # ---- persistence ------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str], generation: int) -> None:
        """Write the index atomically into ``directory``, recording ``generation``.

        New files get fresh names and are fsynced; then ``index.json`` (config, counts,
        generation, each file's name, size and CRC-32) is written to a temp name, fsynced and
        renamed over the old one, and the directory is fsynced. Files of the previous save are
        deleted only after that rename, so a crash at any point leaves the old or the new index,
        whole. Searches continue during a save; writers wait. Raises ``OSError`` on I/O failure.

        Example: ``idx.save(store_dir / "index", generation=42)``
        """
        out = IndexWriter(Path(directory), generation, self._config.M)
        with self._save_lock, out:
            with self._lock.read():
                for j, (lv, g) in enumerate(zip(self._levels, self._graphs)):
                    out.graph(j, lv, g)
                out.array("labels", self._labels.live())
                out.array("deleted", self._labels.dead())
                if self._rotation is not None:
                    out.array("rotation", self._rotation.matrix)
                fields: dict[str, Any] = {
                    "dim": self._dim,
                    "levels": list(self._levels),
                    "config": self._config.to_dict(),
                    "count": self._labels.n_live,
                    "deleted": self._labels.n_dead,
                    "capacity": self._capacity,
                }
                if self._fitted_on is not None:
                    fields["rotation_fitted_on"] = self._fitted_on
            out.commit(fields)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], dim: int) -> tuple[VectorIndex, int]:
        """Read an index written by :meth:`save`; returns ``(index, generation)``.

        Every file's size and CRC-32 (sha256 in format-1 manifests) are checked against the
        manifest *before* hnswlib reads it (hnswlib trusts its input: a truncated or garbage
        file can crash the process or make it allocate wildly), then the graphs' headers,
        upper-level link lists and label sets are checked against each other. Each graph file
        is read once, through a memory map (see :mod:`engramdb.derived.index_hnsw`). Raises
        :class:`IndexDamaged` for anything missing, damaged or inconsistent, including an index
        of another dimension; the caller rebuilds (the index is derived).

        Example::

            try:
                idx, gen = VectorIndex.load(store_dir / "index", dim=384)
            except IndexDamaged:
                idx = VectorIndex.build(eids, segments.gather, cfg, dim=384)
        """
        threads = _cpu_count()
        got = read_index(Path(directory), dim, threads)
        # The constructor checks the parts and sets up the locks; its empty graphs give way.
        idx = cls(dim, got.config, got.rotation, capacity=1, fitted_on=got.fitted_on)
        idx._threads = threads
        idx._graphs = got.graphs
        idx._capacity = got.capacity
        idx._labels = got.labels
        idx._stale_format = got.stale_format
        return idx, got.generation
