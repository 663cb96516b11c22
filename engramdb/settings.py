"""Every tunable of a store, with units and defaults in one place, persisted in the manifest.

A store keeps the settings it was created with; ``engramdb.open(path, settings=...)`` on an
existing store applies the given values and records them, so the next open (CLI included) sees
the same behaviour.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from engramdb.errors import InvalidInput

DURABILITY_MODES = ("full", "fast")
# What recall did before these settings existed (see Settings.from_stored).
_BEFORE_COVERAGE = {"turn_lexical": 1.0, "coverage_prior": 0.0, "coverage_context": 0.0,
                    "context_lexical": 0.5, "speaker_prior": 0.5}


@dataclass
class Settings:
    """Store settings. Lifespans and ages are in ticks of the store's logical clock."""

    # -- storage --
    # "full": vectors and catalog are fsynced before a write is acknowledged. "fast": no fsync
    # per write; everything is made durable at sync points (Store.sync(), close, gc, rebuild,
    # and the first write after sync_interval). A power cut may lose the writes since the
    # last sync point, never corrupt the store (docs/reliability.md, "Durability").
    durability: str = "full"
    sync_interval: float = 1.0  # "fast" only: seconds after which a write first syncs
    segment_bytes: int = 256 * 2**20  # 256 MiB per vector segment file
    vector_dtype: str = "float32"  # or "float16": half the disk, ~1e-3 relative error
    batch_rows: int = 4096  # ingest_many commits at most this many rows per transaction
    # Map the stored vectors into memory on a thread after open (Linux), so that a recall's
    # re-scoring does not page-fault: at 1M x 384-d, p50 0.66 -> 0.57 ms (paired, one process).
    # It reads segment files that are not in the page cache; False leaves reads to fault.
    prefault_vectors: bool = True

    # -- recall --
    lexical_weight: float = 0.5  # share of BM25 in hybrid recall (0: dense only); see hybrid.py
    hybrid_pool: int = 100  # candidates taken from each of the dense and lexical rankings
    # Conversation context in hybrid recall (docs/recall.md; engramdb/context.py, hybrid.py).
    # Values chosen leave-one-conversation-out on LoCoMo (docs/quality.md).
    context: bool = True  # use turn order, sessions, speakers and dates (recall(context=...))
    # A turn's lexical evidence is how much of the query it holds (coverage: the idf-weighted
    # share of the query's terms, alone and with its previous turn), not its BM25, which
    # still chooses the lexical candidates; BM25 scores its session.
    turn_lexical: float = 0.0  # share of a turn's own BM25 in its lexical score
    context_lexical: float = 0.0  # share of the previous turn's BM25 in it
    session_prior: float = 1.0  # share of the session's BM25 (as one document) in it
    coverage_prior: float = 1.0  # added (in z units) x the turn's coverage of the query
    coverage_context: float = 2.5  # ... and x this x the coverage of the turn + previous turn
    context_dense: float = 0.5  # share of the previous turn's cosine added to a turn's cosine
    speaker_prior: float = 0.75  # added (in z units) when a turn's role is named in the query
    date_prior: float = 3.0  # added (in z units) x date affinity: 1 same day, 0.5 same month
    date_key: str = "date"  # metadata key holding an occurrence's date ("" : no dates)
    neighbour_seeds: int = 5  # best hits that pass score to the turns before and after them
    neighbour_weight: float = 0.8  # share of a seed's score (above the pool's lowest) passed
    # Acknowledged vectors wait at most this many MiB for the background indexer (searches scan
    # them exactly meanwhile); past it, ingest waits for the indexer. 0: index before returning.
    index_backlog_mb: float = 128.0

    # -- lifespan engine (docs/lifespan.md) --
    # A tick is usually one chatbot turn. 64 (Memoria-like) lost half of what LoCoMo asks
    # about (R@10 0.69 -> 0.32, docs/quality.md): a fact must outlive a long conversation.
    short_term_lifespan: float = 2048.0  # ticks a new engram lives unless used
    long_term_lifespan: float = 65536.0  # ticks granted on promotion to long-term
    recall_reward: float = 16.0  # lifespan earned by the top hit of a used recall; rank r: /(r+1)
    promote_after: float = 32.0  # earned lifespan that promotes short-term to long-term
    long_term_decay: float = 0.125  # long-term engrams age at this fraction of the clock rate
    short_term_capacity: int = 0  # 0: unbounded; else overflow is settled by rule (see docs)

    # -- links (Hebbian) --
    link_gain: float = 0.25  # weight added when two engrams fire together and it was useful
    link_max: float = 1.0  # weights are bounded to [0, link_max]
    link_half_life: float = 256.0  # ticks for an unused link's weight to halve
    associative_depth: int = 1  # link hops followed from each seed
    associative_fanout: int = 3  # strongest links followed per engram

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_MODES:
            raise InvalidInput(
                f"durability must be 'full' or 'fast', got {self.durability!r}",
                hint="'full' (the default) fsyncs every write; 'fast' syncs at sync points",
            )
        if self.vector_dtype not in ("float32", "float16"):
            raise InvalidInput(
                f"vector_dtype must be float32 or float16, got {self.vector_dtype!r}"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            ):
                raise InvalidInput(f"setting {f.name} must be a non-negative number, got {value!r}")
        if not math.isfinite(self.sync_interval):  # exported as JSON, which has no inf/NaN
            raise InvalidInput(
                f"sync_interval must be a finite number of seconds, got {self.sync_interval!r}",
                hint="a large value (e.g. 3600) leaves syncing to sync(), close() and gc()",
            )
        for flag in ("context", "prefault_vectors"):
            if not isinstance(getattr(self, flag), bool):
                raise InvalidInput(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if not isinstance(self.date_key, str):
            raise InvalidInput(f"date_key must be a str, got {self.date_key!r}")
        if self.neighbour_weight > 1.0:
            raise InvalidInput(
                f"neighbour_weight must be in [0, 1], got {self.neighbour_weight!r}")
        if not 0.0 <= self.lexical_weight <= 1.0:
            raise InvalidInput(f"lexical_weight must be in [0, 1], got {self.lexical_weight!r}")
        if self.segment_bytes < 4096 or self.batch_rows < 1:
            raise InvalidInput("segment_bytes must be >= 4096 and batch_rows >= 1")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Build settings from a dict, ignoring keys this version does not know; the rest
        take today's defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> Settings:
        """Settings recorded by a store (its manifest, an export): as :meth:`from_dict`, but
        a record from before query coverage existed (it names none of its settings) keeps
        the ranking it was made with: a turn's BM25 in full, no coverage, and the context
        weights of that time where it lacks them."""
        if not any(k in data for k in ("turn_lexical", "coverage_prior", "coverage_context")):
            data = {**_BEFORE_COVERAGE, **data}
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (validated)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise InvalidInput(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return Settings(**{**self.to_dict(), **changes})
