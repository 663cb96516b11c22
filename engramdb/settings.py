"""Every tunable of a store, with units and defaults in one place, persisted in the manifest.

A store keeps the settings it was created with; ``engramdb.open(path, settings=...)`` on an
existing store applies the given values and records them, so the next open (CLI included) sees
the same behaviour.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from engramdb.errors import InvalidInput


@dataclass
class Settings:
    """Store settings. Lifespans and ages are in ticks of the store's logical clock."""

    # -- storage --
    durability: str = "full"  # "full": fsync vectors + catalog before acknowledging a batch
    segment_bytes: int = 256 * 2**20  # 256 MiB per vector segment file
    vector_dtype: str = "float32"  # or "float16": half the disk, ~1e-3 relative error
    batch_rows: int = 4096  # ingest_many commits at most this many rows per transaction

    # -- recall --
    lexical_weight: float = 0.4  # share of BM25 in hybrid recall (0: dense only); see hybrid.py
    hybrid_pool: int = 100  # candidates taken from each of the dense and lexical rankings

    # -- lifespan engine (DESIGN section 4) --
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
        if self.durability not in ("full",):
            raise InvalidInput(f"durability must be 'full', got {self.durability!r}")
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
        if not 0.0 <= self.lexical_weight <= 1.0:
            raise InvalidInput(f"lexical_weight must be in [0, 1], got {self.lexical_weight!r}")
        if self.segment_bytes < 4096 or self.batch_rows < 1:
            raise InvalidInput("segment_bytes must be >= 4096 and batch_rows >= 1")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Build settings from a dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (validated)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise InvalidInput(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return Settings(**{**self.to_dict(), **changes})
