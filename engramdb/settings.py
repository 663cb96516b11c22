"""Every tunable of a store, with units and defaults in one place, persisted in the manifest.

A store keeps the settings it was created with; ``engramdb.open(path, settings=...)`` on an
existing store applies the given values and records them, so the next open (CLI included) sees
the same behaviour.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

from engramdb.errors import CorruptStore, InvalidInput

DURABILITY_MODES = ("full", "fast")
# What recall did before these settings existed (see Settings.from_stored).
_BEFORE_COVERAGE = {"turn_lexical": 1.0, "coverage_prior": 0.0, "coverage_context": 0.0,
                    "context_lexical": 0.5, "speaker_prior": 0.5}
# What recall did before role_lexical existed (see Settings.from_stored).
_BEFORE_ROLE_LEXICAL = {"role_lexical": False, "role_free_query": False}
_STORED_HINT = ("the store's MANIFEST.json was edited or damaged: set a valid value in its "
                "\"settings\" (an int for a whole-number setting, e.g. 5 not 5.0)")
# Whole-number settings are used as counts, sizes and slice bounds: numpy and DuckDB take
# them up to 2**63 - 1, and nothing meaningful comes near that.
_INT_MAX = 2**62


@dataclass
class Settings:
    """Store settings. Lifespans and ages are in ticks of the store's logical clock.

    Every value is checked by its declared type when it is set (construction, assignment,
    :meth:`from_dict`, :meth:`from_stored`): an int setting takes an int (not ``5.0``, not
    ``True``), a float setting a finite number >= 0 (kept as a float), a bool setting True or
    False; InvalidInput names the setting and the value.
    """

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
    # The turn journal (docs/format.md, "Turn journal"): ingest() and integrate() on a store
    # of at most journal_max_engrams engrams (0: never) are made durable by one append to
    # journal.bin and folded into the catalog in one commit at close, before any other write
    # or catalog read, and once journal_fold_turns turns or journal_fold_bytes bytes wait.
    journal_max_engrams: int = 200_000
    journal_fold_turns: int = 256
    journal_fold_bytes: int = 8 * 2**20
    # A new store writes no catalog file at first: its turns live in journal.bin alone, and an
    # open replays them instead of opening DuckDB. Its first fold makes catalog.duckdb: once
    # this many turns wait, or at the first write or read that needs the catalog (forget by
    # id, gc, a filtered recall, export...), and at journal_fold_turns if that is smaller.
    # 0: the catalog is made with the store. Kept small because an open replays every
    # waiting turn (~0.3 ms each).
    journal_only_turns: int = 64
    # ... or once the journal holds this many bytes (a small bulk load, ingest_many, takes the
    # journal in records of 64 texts while the store has no catalog; an open replays them at
    # about 40 us a text). 0: the catalog is made at the first write or close.
    journal_only_bytes: int = 512 * 2**10

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
    # A turn's role (a speaker's name) counts as words of the turn in its query coverage, so
    # "Caroline" in a question is held by Caroline's turns as if each began "Caroline: ".
    role_lexical: bool = True
    # A query that names a speaker is encoded for the dense search with the name replaced by
    # "they" (recall/query_text.py): no stored vector holds a role, so the name only pulls
    # the query away from every turn alike. The lexical search keeps the name.
    role_free_query: bool = True
    # Metadata keys whose values are searched as words of the engram (comma-separated, e.g.
    # "image_caption,title"): BM25 indexes the text followed by those values of the
    # occurrence that first stored the text. A change re-indexes the store on its next
    # writable open.
    lexical_metadata: str = ""
    # ... and embedded with the text: a new engram's stored vector is that of its text
    # followed by those values in brackets (derived/metadata_text.py). Engrams stored before a
    # change keep their vectors; a vector given by the caller is stored as given.
    embed_metadata: bool = True
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

    def __setattr__(self, name: str, value: Any) -> None:
        # Every assignment is checked, the dataclass __init__'s included: a setting changed
        # after construction is recorded in the manifest as it is by the constructor.
        if name in _FIELD_TYPES:
            value = _checked(name, _FIELD_TYPES[name], value)
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Build settings from a dict, ignoring keys this version does not know; the rest
        take today's defaults. Raises InvalidInput for a value of the wrong type or range."""
        if not isinstance(data, dict):
            raise InvalidInput(f"settings must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> Settings:
        """Settings recorded by a store (its manifest, an export): as :meth:`from_dict`, but
        a record from before query coverage existed (it names none of its settings) keeps
        the ranking it was made with: a turn's BM25 in full, no coverage, and the context
        weights of that time where it lacks them; one from before ``role_lexical`` keeps
        roles out of query coverage; one from before ``embed_metadata`` keeps embedding the
        text alone.

        Raises CorruptStore for a record that is not a dict or holds a value of the wrong
        type or range (an import catches it and names its file).
        """
        if not isinstance(data, dict):
            raise CorruptStore(f"the recorded settings are not a JSON object: {data!r:.80}",
                               hint=_STORED_HINT)
        if not any(k in data for k in ("turn_lexical", "coverage_prior", "coverage_context")):
            data = {**_BEFORE_COVERAGE, **data}
        if "role_lexical" not in data:
            data = {**_BEFORE_ROLE_LEXICAL, **data}
        elif "role_free_query" not in data:
            data = {"role_free_query": False, **data}
        if "embed_metadata" not in data:  # recorded before it existed: text-only vectors
            data = {"embed_metadata": False, **data}
        try:
            return cls.from_dict(data)
        except InvalidInput as exc:
            raise CorruptStore(f"the recorded settings are invalid: {exc.message}",
                               hint=_STORED_HINT) from None

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (validated)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise InvalidInput(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return Settings(**{**self.to_dict(), **changes})


_FIELD_TYPES = {f.name: str(f.type) for f in fields(Settings)}  # "int", "float", "bool", "str"


def _checked(name: str, declared: str, value: Any) -> Any:
    """``value`` as setting ``name`` keeps it (an int for an int field, a float for a float
    field); InvalidInput naming the setting and the value if its type or range is wrong."""
    if declared == "bool":
        if not isinstance(value, bool):
            raise InvalidInput(f"setting {name} must be True or False, got {value!r}")
        return value
    if declared == "str":
        if not isinstance(value, str):
            raise InvalidInput(f"setting {name} must be a str, got {value!r}")
        return _checked_choice(name, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInput(f"setting {name} must be a number, got {value!r}")
    if declared == "int":
        # 5.0 is refused, not rounded: the value a user wrote is the value a store records.
        if not isinstance(value, numbers.Integral):
            raise InvalidInput(f"setting {name} must be an int, got {value!r}",
                               hint=f"write a whole number without a decimal point, "
                                    f"e.g. {name}={_whole(value)}")
        value = int(value)  # numpy integers too: the manifest is JSON
        if not 0 <= value <= _INT_MAX:
            raise InvalidInput(f"setting {name} must be an int in [0, 2**62], got {value!r}")
    else:
        given = value
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        # JSON (the manifest, an export's header) has no inf or NaN, and NaN compares false
        # to every bound below.
        if not math.isfinite(value) or value < 0:
            raise InvalidInput(
                f"setting {name} must be a finite number >= 0, got {given!r:.60}",
                hint="a large value (e.g. 3600) leaves syncing to sync(), close() and gc()"
                if name == "sync_interval" else None)
    return _checked_range(name, value)


def _whole(value: Any) -> str:
    try:
        return str(int(value))
    except (OverflowError, ValueError):
        return "5"


def _checked_choice(name: str, value: str) -> str:
    if name == "durability" and value not in DURABILITY_MODES:
        raise InvalidInput(
            f"durability must be 'full' or 'fast', got {value!r}",
            hint="'full' (the default) fsyncs every write; 'fast' syncs at sync points",
        )
    if name == "vector_dtype" and value not in ("float32", "float16"):
        raise InvalidInput(f"vector_dtype must be float32 or float16, got {value!r}")
    if name == "lexical_metadata":
        keys = value.split(",")
        if value and not all(k.strip() for k in keys):
            raise InvalidInput(f"lexical_metadata holds an empty key: {value!r}",
                               hint='name metadata keys separated by commas, e.g. '
                                    '"image_caption,title" ("" searches none)')
        return ",".join(k.strip() for k in keys) if value else value
    return value


def _checked_range(name: str, value: float) -> Any:
    if name in ("neighbour_weight", "lexical_weight") and value > 1.0:
        raise InvalidInput(f"{name} must be in [0, 1], got {value!r}")
    if name == "segment_bytes" and value < 4096:
        raise InvalidInput(f"segment_bytes must be >= 4096, got {value!r}")
    if name in ("batch_rows", "journal_fold_turns") and value < 1:
        raise InvalidInput(f"{name} must be >= 1, got {value!r}")
    return value
