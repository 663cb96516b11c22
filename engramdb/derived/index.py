"""The vector index: one hnswlib graph per resolution level, searched coarse to fine.

The store keeps every engram's full-resolution, L2-normalised vector in memmap segments and names
it by an int64 label (its eid). This index is *derived state*: it can always be rebuilt from those
vectors, so a damaged index file raises :class:`IndexDamaged` (internal) and the store rebuilds.

How a search works (DESIGN §3):

1. Each indexed level is a prefix of the rotated vector (see :mod:`engramdb.derived.rotation`),
   re-normalised so that hnswlib's inner product is the cosine on that prefix.
2. The coarsest level's graph returns ``k * candidate_multiplier`` candidates.
3. Finer indexed levels re-rank the candidates with the prefix vectors their graphs hold.
4. Unless the finest level is the full dimension (then its scores are already exact), the
   survivors are re-ranked exactly on full vectors gathered by the caller's ``fetch(labels)``.

Small stores and selective filters skip the graph and scan exactly. hnswlib forbids a query
while an insert or resize runs (nmslib/hnswlib#29, #562: "mixing searches and insertions can
cause segfault"), so searches take a shared lock and writes an exclusive one.

The caller's ``fetch`` is called without any index lock held, with at most ~1 MiB of vectors'
labels at a time during an exact scan (so it should be a vectorised gather, e.g. a memmap
fancy-index), and may return float16 or float32 rows.

This module imports only numpy, hnswlib, the standard library, :mod:`engramdb.errors` and
:mod:`engramdb.derived.rotation`.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import mmap
import os
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from engramdb.derived.label_states import MAX_LABEL, LabelStates
from engramdb.derived.rotation import Rotation, matvec
from engramdb.errors import DimensionMismatch, InvalidInput

__all__ = ["IndexConfig", "IndexDamaged", "Rotation", "VectorIndex"]

Fetch = Callable[[np.ndarray], np.ndarray]
"""``fetch(labels) -> (len(labels), dim)`` full vectors, in the order of ``labels``."""

FORMAT = "engramdb-index"
# 3: each graph's element heights are saved beside it ("heights<j>"), so a load slices the
# upper-level link lists out instead of walking them (0.3 s at 1M). 2 (still read): files
# carry a CRC-32 ("crc32"). 1 (still read): a sha256, which cost 2.6 s per open at 1M.
FORMAT_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "index.json"

# Every file this module writes in an index directory matches this, so cleanup after a save
# never touches a file it did not write.
_OWN_FILE = re.compile(
    r"^(level\d+-\d+|heights\d+|rotation|labels|deleted)\.g\d+-[0-9a-f]+\.(hnsw|npy)$")
_OWN_TMP = re.compile(r"^index\.json\.tmp-[0-9a-f]+$")

# hnswlib's saveIndex header: offsetLevel0, max_elements, cur_element_count,
# size_data_per_element, label_offset, offsetData (size_t), maxlevel (int), enterpoint (uint32),
# maxM, maxM0, M (size_t), mult (double), ef_construction (size_t).
_HNSW_HEADER = struct.Struct("<QQQQQQiIQQQdQ")

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


class IndexDamaged(Exception):
    """An index file is missing, truncated, fails its checksum or disagrees with the manifest.

    Internal: the store catches it and rebuilds the index from the segments (derived state).
    """


@dataclass
class IndexConfig:
    """How the index is built and searched; recorded in the store's manifest.

    Fields:
        levels: prefix dimensions indexed, coarsest first, strictly increasing, each <= dim. One
            hnswlib graph per level. ``[dim]`` is a single full-resolution graph.
        M: hnswlib graph degree (memory ~ dim*4 + M*8 bytes per vector per level).
        ef_construction: hnswlib build-time beam width (higher: better graph, slower build).
        ef_search: hnswlib query beam width; the effective beam is
            ``max(ef_search, k * candidate_multiplier)``.
        candidate_multiplier: ``m``; the coarsest level returns ``k * m`` candidates that finer
            levels and the exact re-rank narrow to ``k``.
        exact_threshold: with at most this many live vectors, search is an exact scan.
        filter_crossover: a filter that allows ``a`` of ``n`` live vectors is answered by an
            exact scan of the allowed vectors when ``a * a * dim < filter_crossover * L0 * n``
            (``L0`` the coarsest level's dimension), else by a filtered graph walk. Measured on
            2 cores: the scan costs ~1.5 ns per float (``a * dim``); the walk visits ~1/p nodes
            per useful one, ~0.5-1.4 us per (L0 / p): the ratio of the two is ~500. At 384-d
            that is ~7% allowed at 100k and ~2% at 1M; at 2048-d x 50k with a full graph ~10%.
        seed: hnswlib's random seed (graph levels), for reproducible builds.

    Raises ``InvalidInput`` (from :meth:`validate`) for an inconsistent configuration.

    Example::

        cfg = IndexConfig.choose(dim=384, n_expected=100_000)
        cfg = IndexConfig.from_dict({**cfg.to_dict(), "ef_search": 128})   # user override
    """

    levels: list[int]
    M: int = 16
    ef_construction: int = 200
    ef_search: int = 64
    candidate_multiplier: int = 1
    exact_threshold: int = 5_000
    filter_crossover: float = 500.0
    seed: int = 100
    # Fields a future version may add are kept out of equality so an old manifest compares equal.
    _extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def choose(cls, dim: int, n_expected: int = 100_000) -> IndexConfig:
        """Pick defaults for ``dim``-d vectors and about ``n_expected`` of them, from measurement.

        Measured on the 2-core, 24 GiB development machine with ``benchmarks/bench_index.py``
        (clustered unit vectors, 200 centres, spectrum decaying as i**-0.5, 500 fresh queries,
        recall@10 against an exact scan, hnswlib 0.8.0, M=16, ef_construction=200). The
        figures below were taken while other jobs loaded the machine, so latencies and build
        rates are pessimistic; recall is not affected.

        ``n_expected`` is recorded for the manifest; between 100k (measured here) and 1M
        (DESIGN §3) the measured choice did not change with the size, so it does not yet
        change the result.

        Raises ``InvalidInput`` for a non-positive ``dim``.

        Example: ``IndexConfig.choose(4096, 250_000).levels == [256]``
        """
        if dim <= 0:
            raise InvalidInput(f"dim must be positive, got {dim}")
        # Below exact_threshold live vectors search scans exactly (recall 1.0). Exact scan
        # through fetch at 384-d: 2k 0.26 ms, 5k 0.65 ms, 10k 1.9 ms, 100k 28 ms (p50); at
        # 2048-d: 1k 0.63 ms, 2k 1.4 ms. A graph query costs 0.28 ms (384-d, ef 64), so scan
        # up to ~0.7 ms worth of floats: 5,000 x 384 = 1.92M floats, whatever the dimension.
        exact_threshold = max(256, min(20_000, (5_000 * 384) // dim))
        if dim <= _FULL_DIM_MAX:
            # 384-d x 100k: full graph, ef 32/64/128 -> recall 0.949/0.984/0.993 at 0.18/0.28/
            # 0.52 ms p50, building 1,520 vectors/s. A 96-d PCA prefix + exact re-rank (m=10)
            # scored 0.990 at 0.29 ms and built 3.2x faster, but only because this synthetic
            # spectrum puts 79% of the variance in the prefix. With isotropic clusters
            # (--decay 0, 384-d x 50k) the same prefix scored 0.641/0.858/0.992 at m=5/10/20
            # against 0.998 for the full graph (DESIGN §3: 0.937 vs 0.983 at 1M). The full
            # graph does not depend on the spectrum, its scores are exact (no memmap reads at
            # query time) and 384-1024-d graphs fit in RAM, so it is the default up to 1024-d
            # (not measured between 384 and 2048: the bound is where the full graph's build
            # rate is expected to fall to about half of the 384-d one).
            return cls(
                levels=[dim],
                ef_search=_FULL_EF_SEARCH,
                candidate_multiplier=1,
                exact_threshold=exact_threshold,
            )
        # 2048-d x 50k: full graph builds at 274 vectors/s (3 minutes for 50k, 1 hour for
        # 1M) and holds 8 KiB per vector in RAM; ef 64 -> 0.996 at 1.4 ms. A 256-d prefix +
        # exact re-rank of k*m candidates from the memmap: m=5 -> 0.995 at 0.37 ms, m=10 ->
        # 0.998 at 0.61 ms, building 2-2.6x faster (PCA fit included) with 1/8 of the graph
        # RAM. m=10 keeps a margin for spectra flatter than the synthetic one. A second,
        # intermediate level did not pay: re-ranking through hnswlib's get_items cost more
        # (2 ms at 384-d) than the exact re-rank it saves when the vectors are in page cache.
        # The re-rank reads k*m full vectors (k*m*dim*2 bytes from float16 segments), so its
        # cost grows with dim: at 4,096-d x 250k (bench_highdim.py, PCA fitted) m=10 -> 0.994
        # at 2.5-4.9 ms p50 (100 random 8 KiB rows cost ~1.5 ms here), m=5 -> 0.985 at
        # 1.7 ms, m=3 -> 0.979 at 1.5 ms. Above 2,048-d the multiplier halves, so the bytes
        # read per query stay what m=10 reads at 2,048-d.
        return cls(
            levels=[min(_PREFIX_DIM, dim)],
            ef_search=_PREFIX_EF_SEARCH,
            candidate_multiplier=_PREFIX_MULTIPLIER if dim <= 2048 else _PREFIX_MULTIPLIER // 2,
            exact_threshold=exact_threshold,
        )

    def validate(self, dim: int) -> None:
        """Raise ``InvalidInput`` unless this configuration can index ``dim``-d vectors.

        Example: ``IndexConfig(levels=[64, 32]).validate(64)`` raises (levels must increase).
        """
        lv = list(self.levels)
        if not lv:
            raise InvalidInput("levels must name at least one prefix dimension")
        if any(not isinstance(x, int) or isinstance(x, bool) or x <= 0 for x in lv):
            raise InvalidInput(f"levels must be positive integers, got {lv}")
        if any(b <= a for a, b in zip(lv, lv[1:])):
            raise InvalidInput(f"levels must be strictly increasing (coarsest first), got {lv}")
        if lv[-1] > dim:
            raise InvalidInput(f"level {lv[-1]} exceeds the vector dimension {dim}")
        for name in ("M", "ef_construction", "ef_search", "candidate_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"{name} must be a positive integer, got {value!r}")
        if self.M < 2:
            raise InvalidInput(f"M must be at least 2, got {self.M}")
        if not isinstance(self.exact_threshold, int) or self.exact_threshold < 0:
            raise InvalidInput(f"exact_threshold must be >= 0, got {self.exact_threshold!r}")
        if not float(self.filter_crossover) >= 0.0:  # also refuses NaN
            raise InvalidInput(f"filter_crossover must be >= 0, got {self.filter_crossover!r}")

    def same_graphs(self, other: IndexConfig) -> bool:
        """Whether graphs built under ``other`` are the graphs this configuration builds.

        Only ``levels``, ``M``, ``ef_construction`` and ``seed`` shape a graph; the search
        fields (``ef_search``, ``candidate_multiplier``, ``exact_threshold``,
        ``filter_crossover``) can change on a saved index without rebuilding it.

        Example: ``cfg.same_graphs(IndexConfig.from_dict({**cfg.to_dict(), "ef_search": 200}))``
        """
        return (list(self.levels), self.M, self.ef_construction, self.seed) == (
            list(other.levels), other.M, other.ef_construction, other.seed)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (unknown fields read by :meth:`from_dict` included).

        Example: ``IndexConfig.from_dict(cfg.to_dict()) == cfg``
        """
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name[0] != "_"}
        d["levels"] = [int(x) for x in self.levels]
        return {**self._extra, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexConfig:
        """Build from :meth:`to_dict` output; missing fields take their defaults.

        Raises ``InvalidInput`` if ``levels`` is missing or a field has the wrong type. Unknown
        keys are kept (a newer engramdb may have written them) but otherwise ignored.

        Example: ``IndexConfig.from_dict({"levels": [384], "ef_search": 96})``
        """
        if not isinstance(d, dict) or "levels" not in d:
            raise InvalidInput("an index config needs at least 'levels'")
        names = {f.name for f in dataclasses.fields(cls) if f.name[0] != "_"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        try:
            known["levels"] = [int(x) for x in known["levels"]]
            for name in ("M", "ef_construction", "ef_search", "candidate_multiplier",
                         "exact_threshold", "seed"):
                if name in known:
                    known[name] = _as_int(known[name], name)
            if "filter_crossover" in known:
                known["filter_crossover"] = float(known["filter_crossover"])
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"bad index config {d!r}: {exc}") from exc
        return cls(**known, _extra=extra)


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


# Measured defaults (benchmarks/bench_index.py); see IndexConfig.choose.
_FULL_DIM_MAX = 1024
_FULL_EF_SEARCH = 64
_PREFIX_DIM = 256
_PREFIX_EF_SEARCH = 64
_PREFIX_MULTIPLIER = 10


class _RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation).

    Not re-entrant: a thread holding it must not acquire it again.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _block_rows(dim: int) -> int:
    """Rows per ~8 MiB float32 block: the unit of work of checks that must not copy a whole
    batch at once."""
    return max(1, (8 << 20) // (4 * max(1, dim)))


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0).astype(x.dtype)


def _sha256(path: Path) -> str:
    """sha256 of a file: the checksum of format-1 manifests (still read, never written)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _crc32(data: Any) -> str:
    """CRC-32 (zlib's) of a buffer, as 8 hex digits.

    Why CRC-32 rather than sha256: the index files are derived state guarded against accidental
    damage (bit rot, torn or misdirected writes, truncation), not against an adversary who could
    as well rewrite ``index.json``. CRC-32 detects every burst of up to 32 bits and any other
    damage but for 1 case in 2**32; it runs at ~1.6 GB/s here against ~0.5 GB/s for sha256
    (1.7 GB of graph at 1M vectors: 1 s instead of 3.4 s).
    """
    # One call: zlib holds no GIL for the whole pass, so it can run beside hnswlib (which holds
    # it) in _load_graph.
    return f"{zlib.crc32(memoryview(data).cast('B')):08x}"


def _file_crc32(path: Path) -> str:
    """CRC-32 of a file, read 16 MiB at a time into one buffer (a whole-file read cost a
    transient copy of the graph at every save: 1.7 GB at 1M x 384-d)."""
    crc = 0
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def _check_sum(path: Path, info: dict[str, Any], data: Any = None) -> None:
    """Raise :class:`IndexDamaged` unless the file (or its bytes ``data``) matches ``info``."""
    if "crc32" in info:
        got = _crc32(data) if data is not None else _file_crc32(path)
        ok = got == str(info["crc32"])
    elif "sha256" in info:  # a format-1 manifest
        if data is not None:
            ok = hashlib.sha256(data).hexdigest() == info["sha256"]
        else:
            ok = _sha256(path) == info["sha256"]
    else:
        raise IndexDamaged(f"the manifest gives no checksum for {path.name}")
    if not ok:
        raise IndexDamaged(f"index file {path.name} fails its checksum")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # platforms that cannot open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        self._lock = _RWLock()
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
    def levels(self) -> list[int]:
        """The indexed prefix dimensions, coarsest first."""
        return list(self._levels)

    @property
    def rotation(self) -> Rotation | None:
        """The rotation that orders components, or ``None`` for a single full-dim level."""
        return self._rotation

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
    def capacity(self) -> int:
        """Slots allocated in each graph (live + deleted + free); grows by doubling."""
        return self._capacity

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

    def deleted_labels(self) -> np.ndarray:
        """Labels marked deleted (their bytes stay in the graph files until a rebuild), sorted.

        Example: ``assert 7 in idx.deleted_labels()`` after ``idx.mark_deleted([7])``
        """
        with self._lock.read():
            return self._labels.dead()

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
        a rebuild refits it, as DESIGN §3 says.
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
        if int(generation) < 0:
            raise InvalidInput(f"generation must be >= 0, got {generation}")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        token = f"g{int(generation)}-{secrets.token_hex(4)}"
        written: list[Path] = []
        replaced = False
        with self._save_lock:
            try:
                with self._lock.read():
                    files: dict[str, str] = {}
                    for j, (lv, g) in enumerate(zip(self._levels, self._graphs)):
                        name = f"level{j}-{lv}.{token}.hnsw"
                        written.append(d / name)
                        try:
                            g.save_index(str(d / name))
                        except RuntimeError as exc:  # hnswlib reports I/O errors this way
                            raise OSError(f"could not write {d / name}: {exc}") from exc
                        files[f"level{j}"] = name
                    arrays = {"labels": self._labels.live(), "deleted": self._labels.dead()}
                    if self._rotation is not None:
                        arrays["rotation"] = self._rotation.matrix
                    for key, arr in arrays.items():
                        name = f"{key}.{token}.npy"
                        written.append(d / name)
                        with open(d / name, "wb") as f:
                            np.save(f, arr, allow_pickle=False)
                        files[key] = name
                    count, n_dead = self._labels.n_live, self._labels.n_dead
                    capacity = self._capacity
                    config = self._config.to_dict()
                    fitted_on = self._fitted_on
                    m = self._config.M
                # Derived from the files just written (hnswlib has no call that returns them
                # without copying the whole graph), outside the lock: writers need not wait.
                for j in range(len(self._levels)):
                    name = f"heights{j}.{token}.npy"
                    written.append(d / name)
                    heights = _file_heights(d / files[f"level{j}"], m)
                    with open(d / name, "wb") as f:
                        np.save(f, heights, allow_pickle=False)
                    files[f"heights{j}"] = name
                manifest = {
                    "format": FORMAT,
                    "version": FORMAT_VERSION,
                    "dim": self._dim,
                    "generation": int(generation),
                    "levels": list(self._levels),
                    "config": config,
                    "count": count,
                    "deleted": n_dead,
                    "capacity": capacity,
                    "files": {},
                }
                if fitted_on is not None:
                    manifest["rotation_fitted_on"] = fitted_on
                for key, name in files.items():
                    _fsync_file(d / name)
                    manifest["files"][key] = {
                        "name": name,
                        "bytes": (d / name).stat().st_size,
                        "crc32": _file_crc32(d / name),
                    }
                tmp = d / f"{MANIFEST}.tmp-{secrets.token_hex(4)}"
                written.append(tmp)
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(manifest, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, d / MANIFEST)
                replaced = True
                _fsync_dir(d)
            except BaseException:
                if not replaced:  # nothing references them: the old manifest still rules
                    for p in written:
                        p.unlink(missing_ok=True)
                raise
            keep = set(files.values())
            for entry in os.listdir(d):
                if entry not in keep and (_OWN_FILE.match(entry) or _OWN_TMP.match(entry)):
                    (d / entry).unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], dim: int) -> tuple[VectorIndex, int]:
        """Read an index written by :meth:`save`; returns ``(index, generation)``.

        Every file's size and CRC-32 (sha256 in format-1 manifests) are checked against the
        manifest *before* hnswlib reads it (hnswlib trusts its input: a truncated or garbage
        file can crash the process or make it allocate wildly), then the graphs' headers,
        upper-level link lists and label sets are checked against each other. Each graph file
        is read once, through a memory map (see ``_load_graph``). Raises :class:`IndexDamaged`
        for anything missing, damaged or inconsistent, including an index of another
        dimension; the caller rebuilds (the index is derived).

        Example::

            try:
                idx, gen = VectorIndex.load(store_dir / "index", dim=384)
            except IndexDamaged:
                idx = VectorIndex.build(eids, segments.gather, cfg, dim=384)
        """
        d = Path(directory)
        try:
            with open(d / MANIFEST, encoding="utf-8") as f:
                man = json.load(f)
        except FileNotFoundError as exc:
            raise IndexDamaged(f"no {MANIFEST} in {d}") from exc
        except (OSError, ValueError) as exc:
            raise IndexDamaged(f"unreadable {d / MANIFEST}: {exc}") from exc
        try:
            return cls._load_checked(d, man, dim)
        except IndexDamaged:
            raise
        except (KeyError, TypeError, ValueError, OSError, RuntimeError, MemoryError) as exc:
            raise IndexDamaged(f"inconsistent index in {d}: {exc!r}") from exc

    @classmethod
    def _load_checked(cls, d: Path, man: dict[str, Any], dim: int) -> tuple[VectorIndex, int]:
        if not isinstance(man, dict) or man.get("format") != FORMAT:
            raise IndexDamaged(f"{d / MANIFEST} is not an engramdb index manifest")
        if man.get("version") not in _READABLE_VERSIONS:
            raise IndexDamaged(f"index format version {man.get('version')!r} is not supported")
        if int(man["dim"]) != dim:
            raise IndexDamaged(f"index is {man['dim']}-d, the store is {dim}-d")
        try:
            config = IndexConfig.from_dict(man["config"])
            config.validate(dim)
        except InvalidInput as exc:
            raise IndexDamaged(f"bad config in {d / MANIFEST}: {exc}") from exc
        levels = [int(x) for x in man["levels"]]
        if levels != config.levels:
            raise IndexDamaged("manifest levels disagree with its config")
        files = man["files"]
        expected = {f"level{j}" for j in range(len(levels))} | {"labels", "deleted"}
        if int(man["version"]) >= 3:
            expected |= {f"heights{j}" for j in range(len(levels))}
        if levels[0] < dim:
            expected.add("rotation")
        if set(files) != expected:
            raise IndexDamaged(f"manifest lists files {sorted(files)}, expected {sorted(expected)}")
        paths: dict[str, Path] = {}
        for key, info in files.items():
            name = str(info["name"])
            if not _OWN_FILE.match(name):
                raise IndexDamaged(f"manifest names a foreign file {name!r}")
            p = d / name
            try:
                size = p.stat().st_size
            except FileNotFoundError as exc:
                raise IndexDamaged(f"index file {name} is missing") from exc
            if size != int(info["bytes"]):
                raise IndexDamaged(f"index file {name} is {size} bytes, expected {info['bytes']}")
            if not key.startswith("level"):  # graphs are checked as they are mapped, below
                _check_sum(p, info)
            paths[key] = p

        live = np.load(paths["labels"], allow_pickle=False)
        dead = np.load(paths["deleted"], allow_pickle=False)
        for name, arr in (("labels", live), ("deleted", dead)):
            if arr.dtype != np.int64 or arr.ndim != 1:
                raise IndexDamaged(f"{name} file has dtype {arr.dtype} and shape {arr.shape}")
        if len(live) != int(man["count"]) or len(dead) != int(man["deleted"]):
            raise IndexDamaged("label files disagree with the manifest's counts")
        rotation = None
        if "rotation" in paths:
            try:
                rotation = Rotation.load(paths["rotation"])
            except ValueError as exc:
                raise IndexDamaged(f"bad rotation: {exc}") from exc
            if rotation.dim != dim or rotation.rows < levels[-1]:
                raise IndexDamaged(f"rotation is {rotation.rows} x {rotation.dim}, expected "
                                   f"at least {levels[-1]} x {dim}")

        n_total = len(live) + len(dead)
        try:
            states = LabelStates.from_arrays(live, dead)
        except ValueError as exc:
            raise IndexDamaged(f"bad label files: {exc}") from exc
        fitted_on = man.get("rotation_fitted_on") if rotation is not None else None
        if fitted_on is not None and (not isinstance(fitted_on, int) or fitted_on < 0):
            raise IndexDamaged(f"bad rotation_fitted_on {fitted_on!r}")
        # placeholder graphs, replaced below
        idx = cls(dim, config, rotation, capacity=1, fitted_on=fitted_on)
        graphs = []
        for j, lv in enumerate(levels):
            heights = None
            if f"heights{j}" in paths:
                heights = np.load(paths[f"heights{j}"], allow_pickle=False)
                if heights.dtype != np.uint8 or heights.shape != (n_total,):
                    raise IndexDamaged(f"heights file {j} has dtype {heights.dtype} and shape "
                                       f"{heights.shape}, expected uint8 ({n_total},)")
            g, ids = _load_graph(paths[f"level{j}"], files[f"level{j}"], lv, config.M, n_total,
                                 idx._threads, heights)
            if not states.holds_exactly(ids):
                raise IndexDamaged(f"level {j} graph holds other labels than the label files")
            g.set_ef(config.ef_search)
            g.set_num_threads(idx._threads)
            graphs.append(g)
        capacities = {g.get_max_elements() for g in graphs}
        if len(capacities) != 1:
            raise IndexDamaged(f"the level graphs have different capacities {capacities}")
        # Deleted flags live in the graph files: spot-check that they agree with the label files
        # (hnswlib's get_items refuses a deleted label).
        for j, g in enumerate(graphs):
            for x in dead[:32].tolist():
                try:
                    g.get_items([x])
                except RuntimeError:
                    continue
                raise IndexDamaged(f"label {x} is deleted in the manifest, live in level {j}")
            for x in live[:32].tolist():
                try:
                    g.get_items([x])
                except RuntimeError as exc:
                    raise IndexDamaged(f"label {x} is live in the manifest, not in level {j}") \
                        from exc
        idx._graphs = graphs
        idx._capacity = capacities.pop()
        idx._labels = states
        idx._stale_format = int(man["version"]) < FORMAT_VERSION
        return idx, int(man["generation"])


class _Header:
    """The fields of an hnswlib ``saveIndex`` header (see ``_HNSW_HEADER``)."""

    def __init__(self, raw: bytes) -> None:
        (self.offset_level0, self.max_elements, self.count, self.per_element, self.label_offset,
         self.offset_data, self.max_level, self.enterpoint, self.max_m, self.max_m0, self.m,
         self.mult, self.ef_construction) = _HNSW_HEADER.unpack(raw)


def _check_hnsw_header(name: str, head: bytes, size: int, level_dim: int, m: int,
                       n_total: int) -> _Header:
    """Sanity-check an hnswlib file's header against what this level must hold.

    A second line of defence after the checksum: a file whose checksum matches was written by
    us, but a manifest from another build could still pair it with the wrong level. Returns the
    header. Raises :class:`IndexDamaged`.
    """
    if len(head) != _HNSW_HEADER.size:
        raise IndexDamaged(f"{name} is shorter than an hnswlib header")
    h = _Header(head)
    expected_per_el = 4 + 2 * m * 4 + level_dim * 4 + 8  # links0 size + links + vector + label
    if (
        h.offset_level0 != 0 or h.m != m or h.max_m != m or h.max_m0 != 2 * m
        or h.per_element != expected_per_el or h.offset_data != 4 + 2 * m * 4
        or h.label_offset != h.offset_data + level_dim * 4
        or h.count != n_total or h.count > h.max_elements
        or size < _HNSW_HEADER.size + h.count * (h.per_element + 4)
        or h.max_elements > 4 * (n_total + 1024) + (1 << 20)
        or (h.count and not (0 <= h.max_level < 64 and h.enterpoint < h.count))
    ):
        raise IndexDamaged(f"{name} header does not match a {level_dim}-d M={m} graph "
                           f"of {n_total} vectors")
    return h


def _check_into(failed: list[BaseException], path: Path, info: dict[str, Any],
                data: Any) -> None:
    """:func:`_check_sum` for a thread: what it raises is appended to ``failed``."""
    try:
        _check_sum(path, info, data)
    except BaseException as exc:  # re-raised by the caller
        failed.append(exc)


def _map_file(f: Any, size: int) -> mmap.mmap:
    """Map a whole file read-only, populated up front where the platform can (one pass of
    read-ahead instead of a page fault per 4 KiB)."""
    try:
        return mmap.mmap(f.fileno(), size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                         prot=mmap.PROT_READ)
    except (AttributeError, TypeError):  # Windows: no flags/prot
        return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)


def _load_graph(path: Path, info: dict[str, Any], level_dim: int, m: int, n_total: int,
                threads: int, heights: np.ndarray | None = None,
                ) -> tuple[hnswlib.Index, np.ndarray]:
    """Map one level's graph file, check it and hand it to hnswlib.

    ``heights`` (each element's top layer, saved beside the graph since format 3) lets the
    upper-level link lists be sliced out directly; without it they are found by walking the
    file's records (:func:`_walk_heights`).

    Returns the graph and its labels (int64, in hnswlib's internal order, read from the file).
    The file is read once: its checksum, header, labels and upper-level link lists are checked
    on the mapping, and hnswlib copies its arrays from the same mapping (:func:`_graph_from`),
    which avoids ``load_index``'s second read and its per-element seek pass (with the CRC
    instead of a sha256: 1.7x less CPU at 100k vectors). Only if this hnswlib's pickling layout
    is not the one known here does it fall back to ``load_index`` on the checked file. Raises
    :class:`IndexDamaged`.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != int(info["bytes"]):
            raise IndexDamaged(f"index file {path.name} is {size} bytes, expected {info['bytes']}")
        if size < _HNSW_HEADER.size:
            raise IndexDamaged(f"{path.name} is shorter than an hnswlib header")
        mm = _map_file(f, size)
    try:
        h = _check_hnsw_header(path.name, mm[:_HNSW_HEADER.size], size, level_dim, m, n_total)
        # The checksum runs on a second thread while hnswlib copies the arrays: building from
        # unchecked bytes is safe (the header bounds every size, _upper_links checks the link
        # lists' layout, and building follows no link), and the graph is dropped unused if
        # the checksum then fails. At 1M vectors they cost ~0.45 s and ~1.3 s of CPU.
        failed: list[BaseException] = []
        checker = threading.Thread(target=_check_into, args=(failed, path, info, mm),
                                   name="engramdb-index-crc", daemon=True)
        checker.start()
        try:
            labels = np.ndarray((h.count,), np.uint64, buffer=mm,
                                offset=_HNSW_HEADER.size + h.label_offset,
                                strides=(h.per_element,)).astype(np.int64) if h.count else \
                np.empty(0, np.int64)
            g = _graph_from(mm, h, level_dim, labels, threads, heights)
        finally:
            checker.join()
        if failed:
            g = None
            raise failed[0]
    finally:
        try:
            mm.close()
        except BufferError:  # a view is still alive somewhere: let the GC unmap it
            pass
    if g is None:
        g = hnswlib.Index(space="ip", dim=level_dim)
        g.load_index(str(path), max_elements=h.max_elements)
    return g, labels


# The keys of hnswlib's pickled state (``Index.__getstate__``) as of hnswlib 0.8 (checked at
# run time on a tiny graph): _graph_from builds that state from a mapped file. Another layout
# (a future hnswlib): load_index.
_STATE_KEYS = frozenset({
    "ser_version", "space", "dim", "index_inited", "ep_added", "normalize", "num_threads", "seed",
    "offset_level0", "max_elements", "cur_element_count", "size_data_per_element",
    "label_offset", "offset_data", "max_level", "enterpoint_node", "max_M", "max_M0", "M",
    "mult", "ef_construction", "ef", "has_deletions", "size_links_per_element",
    "allow_replace_deleted", "label_lookup_external", "label_lookup_internal",
    "element_levels", "data_level0", "link_lists",
})
_state_template: list[dict[str, Any] | None] = []


def _hnswlib_state_template() -> dict[str, Any] | None:
    """The scalar fields of a tiny graph's pickled state, or None if the layout is unknown."""
    if not _state_template:
        template = None
        try:
            g = hnswlib.Index(space="ip", dim=4)
            g.init_index(max_elements=2, M=2, ef_construction=8)
            g.add_items(np.eye(1, 4, dtype=np.float32), np.array([0]))
            state = g.__getstate__()
            st = state[0] if isinstance(state, tuple) and len(state) == 1 else state
            if isinstance(st, dict) and set(st) == _STATE_KEYS and st["ser_version"] == 1:
                template = {k: v for k, v in st.items() if not isinstance(v, np.ndarray)}
        except Exception:  # any surprise means: use load_index
            template = None
        _state_template.append(template)
    return _state_template[0]


def _graph_from(mm: mmap.mmap, h: _Header, level_dim: int, labels: np.ndarray,
                threads: int, heights: np.ndarray | None = None) -> hnswlib.Index | None:
    """Build a graph from a mapped ``saveIndex`` file through hnswlib's unpickling path.

    hnswlib's file is: header, ``count`` fixed-size level-0 records (links, vector, label),
    then per element a uint32 byte count and that element's upper-level link lists. Its
    pickled state holds the same level-0 block, the upper lists concatenated, each element's
    level and the label map, so the state is views of the mapping plus two small arrays.
    Returns None (caller falls back to ``load_index``) for an empty graph or an unknown layout.
    """
    template = _hnswlib_state_template()
    if template is None or h.count == 0:
        return None
    size_links = 4 + 4 * h.m
    level0 = h.count * h.per_element
    words = _upper_words(mm, h)
    element_levels = _walk_heights(words, h.count, size_links) if heights is None \
        else heights.astype(np.int32)
    links = _upper_links(words, element_levels, size_links)
    if int(element_levels.max()) != h.max_level or element_levels[h.enterpoint] != h.max_level:
        raise IndexDamaged("the graph's levels disagree with its header")
    state = dict(template)
    state.update(
        dim=level_dim, num_threads=threads, seed=1, ef=10, normalize=False, space="ip",
        index_inited=True, ep_added=True, allow_replace_deleted=False, has_deletions=True,
        offset_level0=h.offset_level0, max_elements=h.max_elements, cur_element_count=h.count,
        size_data_per_element=h.per_element, label_offset=h.label_offset,
        offset_data=h.offset_data, max_level=h.max_level, enterpoint_node=h.enterpoint,
        max_M=h.max_m, max_M0=h.max_m0, M=h.m, mult=h.mult, ef_construction=h.ef_construction,
        size_links_per_element=size_links,
        label_lookup_external=labels.astype(np.uint64),
        label_lookup_internal=np.arange(h.count, dtype=np.uint32),
        element_levels=element_levels,
        data_level0=np.frombuffer(mm, np.int8, count=level0, offset=_HNSW_HEADER.size),
        link_lists=links.view(np.int8),
    )
    # seed=1: load_index leaves hnswlib's level generator at its default seed (1), so graphs
    # loaded either way grow identically afterwards.
    try:
        return hnswlib.Index(state)
    finally:
        state.clear()  # drop the views of the mapping before the caller unmaps it


def _upper_words(mm: Any, h: _Header) -> np.ndarray:
    """The upper-level section of a mapped graph file (after the level-0 records) as words."""
    tail = len(mm) - _HNSW_HEADER.size - h.count * h.per_element
    if tail % 4:
        raise IndexDamaged("the upper-level link lists are not whole 32-bit words")
    return np.frombuffer(mm, np.uint32, count=tail // 4,
                         offset=_HNSW_HEADER.size + h.count * h.per_element)


def _walk_heights(words: np.ndarray, count: int, size_links: int) -> np.ndarray:
    """Each element's height (top layer) from the upper-level section of a graph file.

    Each element has a uint32 byte count (0 for the ~15/16 of elements that live on level 0
    only) followed by that many bytes, so finding the records is a walk: only non-empty
    records cost a Python step (a bisect over the non-zero words finds the next one). Raises
    :class:`IndexDamaged` unless ``count`` records exactly fill the section.
    """
    n_words = len(words)
    nonzero = np.flatnonzero(words)
    at = nonzero.tolist()
    size = words[nonzero].tolist()
    chain: list[int] = []  # indexes into `at` of the non-empty records' size words
    i = 0
    while i < len(at):
        chain.append(i)
        i = bisect.bisect_left(at, at[i] + 1 + size[i] // 4, i + 1)
    levels = np.zeros(count, np.int32)
    if not chain:
        return levels
    st = nonzero[np.asarray(chain, np.int64)]  # where each non-empty record starts
    ln = words[st].astype(np.int64) // 4  # its payload, in words
    elems = st - (np.cumsum(ln) - ln)  # one word per record before it, plus earlier payloads
    if ((ln * 4) % size_links).any() or int(elems[-1]) >= count \
            or int(st[-1] + 1 + ln[-1]) > n_words:
        raise IndexDamaged("the upper-level link lists do not fill the graph file")
    levels[elems] = ln * 4 // size_links
    return levels


def _upper_links(words: np.ndarray, heights: np.ndarray, size_links: int) -> np.ndarray:
    """The upper-level link lists of a graph file, concatenated in element order, given each
    element's height. Raises :class:`IndexDamaged` unless every element's record holds the
    byte count its height implies and the records exactly fill the section."""
    ln = heights.astype(np.int64) * (size_links // 4)  # each record's payload, in words
    n_payload = int(ln.sum())
    if len(words) != len(heights) + n_payload:
        raise IndexDamaged("the upper-level link lists do not fill the graph file")
    st = np.arange(len(heights), dtype=np.int64)  # where each record's byte count sits
    st[1:] += np.cumsum(ln[:-1])
    if not np.array_equal(words[st], (ln * 4).astype(np.uint32)):
        raise IndexDamaged("the upper-level link lists disagree with the elements' heights")
    payload = np.ones(len(words), bool)
    payload[st] = False
    return words[payload]


def _file_heights(path: Path, m: int) -> np.ndarray:
    """Each element's height (uint8) in a graph file written by hnswlib's ``save_index``.

    hnswlib writes through an unchecked stream, so a full disk leaves a short file: anything
    that does not parse is reported as the I/O failure it is (``OSError``)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _HNSW_HEADER.size:
            raise OSError(f"{path.name} is {size} bytes: the graph was not written whole")
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    try:
        h = _Header(mm[:_HNSW_HEADER.size])
        if h.count == 0:
            return np.zeros(0, np.uint8)
        try:
            words = _upper_words(mm, h)
            heights = _walk_heights(words, h.count, 4 + 4 * h.m)
            del words
        except (IndexDamaged, ValueError) as exc:
            raise OSError(f"{path.name} was not written whole: {exc}") from exc
        if h.m != m or int(heights.max()) > 255:
            raise OSError(f"{path.name} is not the graph just written")
        return heights.astype(np.uint8)
    finally:
        try:
            mm.close()
        except BufferError:
            pass
