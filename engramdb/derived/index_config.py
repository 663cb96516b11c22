"""The vector index's configuration: graph shape and search settings, chosen by measurement.

:class:`IndexConfig` is recorded in the store's manifest and in the index's own ``index.json``;
:mod:`engramdb.derived.index` builds and searches graphs by it. This module imports only the
standard library and :mod:`engramdb.errors`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from engramdb.errors import InvalidInput

__all__ = ["IndexConfig"]

# Measured defaults (benchmarks/bench_index.py); see IndexConfig.choose.
_FULL_DIM_MAX = 1024
_FULL_EF_SEARCH = 64
_PREFIX_DIM = 256
_PREFIX_EF_SEARCH = 64
_PREFIX_MULTIPLIER = 10


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
        (docs/benchmarks.md) the measured choice did not change with the size, so it does not yet
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
            # 384-d x 100k: full graph, ef 32/64/128 -> recall 0.949/0.984/0.993 at 0.18/0.28/0.52
            # ms p50, building 1,520 vectors/s. A 96-d PCA prefix + exact re-rank (m=10) scored
            # 0.990 at 0.29 ms and built 3.2x faster, but only because this synthetic spectrum puts
            # 79% of the variance in the prefix. With isotropic clusters (--decay 0, 384-d x 50k)
            # the same prefix scored 0.641/0.858/0.992 at m=5/10/20 against 0.998 for the full graph
            # (docs/benchmarks.md, "Vector index configurations"; 0.937 vs 0.983 at 1M). The full
            # graph does not depend on the spectrum, its scores are exact (no memmap reads at query
            # time) and 384-1024-d graphs fit in RAM, so it is the default up to 1024-d (not
            # measured between 384 and 2048: the bound is where the full graph's build rate is
            # expected to fall to about half of the 384-d one).
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
            if not isinstance(value, int) or isinstance(value, bool) or not \
                    1 <= value <= _INT_MAX:
                raise InvalidInput(f"{name} must be a positive integer, got {value!r}")
        if not 2 <= self.M <= _M_MAX:
            raise InvalidInput(f"M must be in [2, {_M_MAX}], got {self.M}")
        for name in ("exact_threshold", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not \
                    0 <= value <= _INT_MAX:
                raise InvalidInput(f"{name} must be an integer >= 0, got {value!r}")
        crossover = self.filter_crossover
        if isinstance(crossover, bool) or not isinstance(crossover, numbers.Real) or not (
            0.0 <= float(crossover) < math.inf  # also refuses NaN
        ):
            raise InvalidInput(f"filter_crossover must be a finite number >= 0, "
                               f"got {crossover!r}")

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

        Raises ``InvalidInput`` naming the field and the value if ``levels`` is missing or a
        field has the wrong type: whole-number fields take ints (not ``64.0``, not ``True``),
        ``filter_crossover`` a finite number. Unknown keys (strings) are kept (a newer
        engramdb may have written them) but otherwise ignored.

        Example: ``IndexConfig.from_dict({"levels": [384], "ef_search": 96})``
        """
        if not isinstance(d, dict) or "levels" not in d:
            raise InvalidInput("an index config needs at least 'levels'")
        names = {f.name for f in dataclasses.fields(cls) if f.name[0] != "_"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        for key in extra:
            if not isinstance(key, str):  # the manifest is JSON: its keys are strings
                raise InvalidInput(f"index config keys must be str, got {key!r}")
        levels = known["levels"]
        if not isinstance(levels, (list, tuple)):
            raise InvalidInput(f"index config levels must be a list of ints, got {levels!r:.60}")
        known["levels"] = [_as_int(x, "levels") for x in levels]
        for name in ("M", "ef_construction", "ef_search", "candidate_multiplier",
                     "exact_threshold", "seed"):
            if name in known:
                known[name] = _as_int(known[name], name)
        if "filter_crossover" in known:
            known["filter_crossover"] = _as_float(known["filter_crossover"], "filter_crossover")
        return cls(**known, _extra=extra)


# hnswlib takes these as size_t and caps M at 10,000 itself (a larger M built a graph that no
# longer matched its own configuration); nothing meaningful comes near 2**62.
_M_MAX = 10_000
_INT_MAX = 2**62


def _as_int(value: Any, name: str) -> int:
    """``value`` as an int; InvalidInput naming ``name`` for a float, a bool or a non-number
    (no rounding: ``levels=[16.7]`` once became a 16-d level)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInput(f"index config {name} must be an int, got {value!r:.60}")
    return int(value)


def _as_float(value: Any, name: str) -> float:
    """``value`` as a finite float; InvalidInput naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInput(f"index config {name} must be a number, got {value!r:.60}")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise InvalidInput(f"index config {name} must be finite, got {value!r:.60}")
    return out
