"""What a turn journal record holds, and its checks when it is read back.

A record is the turn as the caller gave it (texts, roles, sessions, metadata, pins, kind),
the tick it moved the clock to, the eids of the memories ``integrate`` recalled for it (None
for a plain ``ingest``) and the vectors of the engrams it created. Replaying it through the
same write path, on the same catalog, gives the same engrams, occurrences, rewards and links:
eids, ticks and lifespans follow from the counters and the record alone.

A record may also name caller keys whose occurrences it removes first (``removed``): an
``upsert`` of stored keys (its texts are then stored under the same keys) or a
``forget(keys=)`` (no texts). Replay removes what those keys hold at that point, which is
what they held when the record was written: records are replayed in order, on the state they
were written on.

Payload: ``head length (u32 LE) | head | vector bytes`` (the store's dtype, row-major). The
head is the JSON, or (format 5 on) the JSON compressed with zlib when that saves bytes: then
the length's top bit is set. A bulk record's texts take less than half their size that way
(a store without a catalog file keeps its vectors in the journal alone). The JSON carries no
content id: ids are recomputed from the texts on replay, so a record cannot
file a text under another text's id. A record read back is checked like a caller's input;
anything wrong raises CorruptStore (a store received from someone else may hold anything).

Versions: a record that removes no key is written as version 1, as before removals took the
journal, so an engramdb of that time still reads it; one that removes keys is version 2,
which such an engramdb refuses (CorruptStore, "unknown record version", before it changes
anything) instead of replaying it as a plain keyed ingest. A version above 2 raises
FormatTooNew.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from engramdb.content import (
    check_distinct,
    check_key,
    check_label,
    encode_metadata,
    normalize_text,
)
from engramdb.errors import CorruptStore, EngramError, FormatTooNew
from engramdb.storage.journal import MAX_RECORD
from engramdb.types import KIND_NAMES

_LEN = struct.Struct("<I")
_ZLIB = 1 << 31  # the head length's flag: the head is compressed
_COMPRESS_FROM = 512  # bytes of JSON: a one-text turn's head is smaller, and gains little
VERSION = 2  # the newest record version, written by a record that removes keys
PLAIN_VERSION = 1  # a record that removes no key (uncompressed, an engramdb before removals
# reads it; compressed heads are format 5, which such an engramdb refuses from the manifest)
MAX_TEXTS = 64  # the turn path takes batches of at most this many texts (store.py)


@dataclass
class TurnRecord:
    """One acknowledged turn-path write."""

    seq: int  # the journal's record number (the catalog's ``journal_seq`` is the last folded)
    texts: list[str]
    roles: list[str | None]
    sessions: list[str | None]
    metas: list[str | None]  # canonical JSON, as stored
    pins: list[bool]
    kind: int
    now: int | None  # the tick integrate moved the clock to; None: ingest (clock unchanged)
    hits: list[int] | None  # integrate: the recalled engrams' eids, best first
    rows: list[int]  # the batch positions of the texts that were new: the vectors' owners
    vectors: np.ndarray  # the new engrams' stored vectors, in that order
    keys: list[str | None] | None = None  # the occurrences' caller keys
    # Keys whose occurrences go before the texts are stored: an upsert of stored keys (a
    # subset of ``keys``), or a forget(keys=) (then the record has no texts).
    removed: list[str] | None = None

    def encode(self) -> bytes:
        """The record's payload."""
        fields = {
            "v": PLAIN_VERSION if self.removed is None else VERSION, "q": self.seq,
            "t": self.texts, "r": self.roles, "s": self.sessions, "m": self.metas,
            "p": self.pins, "k": self.kind, "n": self.now, "h": self.hits, "i": self.rows,
        }
        if self.keys is not None:  # optional: a record without keys reads as before
            fields["y"] = self.keys
        if self.removed is not None:
            fields["x"] = self.removed
        head = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        size = len(head)
        if size >= _COMPRESS_FROM:
            packed = zlib.compress(head, 6)
            if len(packed) < size:
                head, size = packed, len(packed) | _ZLIB
        return _LEN.pack(size) + head + np.ascontiguousarray(self.vectors).tobytes()


def decode(payload: bytes, dim: int, dtype: str) -> TurnRecord:
    """A record read back from the journal, checked; CorruptStore if anything is off."""
    try:
        return _decode(payload, dim, np.dtype(dtype))
    except FormatTooNew:
        raise
    except (EngramError, ValueError, TypeError, KeyError, struct.error, zlib.error,
            RecursionError) as exc:
        raise CorruptStore(f"a turn journal record is damaged: {exc}",
                           hint="restore the store from an export or backup") from exc


def _decode(payload: bytes, dim: int, dtype: np.dtype) -> TurnRecord:
    (n,) = _LEN.unpack_from(payload, 0)
    packed, n = bool(n & _ZLIB), n & ~_ZLIB
    if _LEN.size + n > len(payload):
        raise ValueError(f"a head of {n} bytes in a record of {len(payload)}")
    raw_head = payload[_LEN.size:_LEN.size + n]
    head = json.loads((_inflate(raw_head) if packed else raw_head).decode("utf-8"))
    version = head.get("v") if isinstance(head, dict) else None
    if version not in (PLAIN_VERSION, VERSION):
        if type(version) is int and version > VERSION:
            raise FormatTooNew(f"the turn journal holds a record of version {version}, "
                               f"written by a newer engramdb (this one reads up to {VERSION})")
        raise ValueError("unknown record version")
    removed = None
    if version == PLAIN_VERSION and "x" in head:
        raise ValueError("a version-1 record removes keys")
    if version == VERSION and head.get("x") is not None:
        removed = [check_key(k) for k in _list(head["x"])]
        check_distinct(removed)
        if not 1 <= len(removed) <= MAX_TEXTS:
            raise ValueError(f"{len(removed)} removed keys in one record")
    count = len(_list(head["t"]))  # (checked before a text is read: a crafted head may be huge)
    if not (0 if removed else 1) <= count <= MAX_TEXTS:
        raise ValueError(f"{count} texts in one record")
    texts = [normalize_text(t) for t in head["t"]]
    roles = [check_label(r, "role") for r in _list(head["r"], count)]
    sessions = [check_label(s, "session") for s in _list(head["s"], count)]
    metas = [None if m is None else encode_metadata(json.loads(_str(m)))
             for m in _list(head["m"], count)]
    pins = [_bool(p) for p in _list(head["p"], count)]
    kind = _int(head["k"])
    if kind not in KIND_NAMES:
        raise ValueError(f"unknown kind {kind}")
    now = None if head["n"] is None else _int(head["n"])
    hits = None if head["h"] is None else [_int(h) for h in _list(head["h"])]
    if hits is not None and (len(set(hits)) != len(hits) or now is None or count != 1):
        raise ValueError("the recalled engrams of a record that is not one integrate turn")
    rows = [_int(r) for r in _list(head["i"])]
    if len(set(rows)) != len(rows) or any(r >= count for r in rows):
        raise ValueError(f"vector rows {rows} for {count} texts")
    raw = payload[_LEN.size + n:]
    if len(raw) != len(rows) * dim * dtype.itemsize:
        raise ValueError(f"{len(raw)} vector bytes for {len(rows)} rows of dim {dim}")
    vectors = np.frombuffer(raw, dtype).reshape(len(rows), dim)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1) if len(rows) else np.ones(0)
    if not np.isfinite(vectors).all() or np.any(np.abs(norms - 1.0) > 1e-2):
        raise ValueError("a vector is not of unit length")
    keys = None
    if head.get("y") is not None:
        keys = [None if k is None else check_key(k) for k in _list(head["y"], count)]
        check_distinct(keys)
    if removed is not None and count and not set(removed) <= set(keys or ()):
        raise ValueError("an upsert record removes keys it does not store again")
    if removed is not None and not count and (now is not None or hits is not None):
        raise ValueError("a record that only removes keys carries a turn")
    return TurnRecord(_int(head["q"]), texts, roles, sessions, metas, pins, kind, now, hits,
                      rows, vectors, keys, removed)


def _inflate(data: bytes) -> bytes:
    """A compressed head, inflated to at most the size a record may have."""
    inflater = zlib.decompressobj()
    head = inflater.decompress(data, MAX_RECORD)
    if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise ValueError("a compressed record head is damaged or too large")
    return head


def _list(value: Any, n: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (n is not None and len(value) != n) or not value and n:
        raise ValueError(f"expected a list of {n} entries")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise ValueError(f"expected an int >= 0, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected a bool, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a str, got {value!r}")
    return value
