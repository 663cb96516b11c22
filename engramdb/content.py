"""Content identity and input validation: what an engram *is* before it is stored.

Everything here is pure (no I/O), so every argument is checked before a single byte is
written: bad input can never leave a half-applied batch behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import zstandard

from engramdb.errors import DimensionMismatch, InvalidInput

MAX_TEXT_BYTES = 1 << 20  # 1 MiB of UTF-8 per engram: a memory, not a document store
# Levels of dicts and lists in one occurrence's metadata (or a where= metadata value). JSON
# encoders and decoders recurse: past ~1,000 levels Python's raise RecursionError, and no
# honest metadata comes near 32.
MAX_METADATA_DEPTH = 32
_ZSTD_LEVEL = 3  # about 4x on conversational text at a negligible cost (docs/format.md)


def normalize_text(text: object, *, what: str = "text") -> str:
    """Return the canonical form of ``text`` (NFC, unified line ends, outer blanks stripped).

    Raises InvalidInput for a non-str, empty or whitespace-only text, a lone surrogate, or
    text over 1 MiB.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a str, got {type(text).__name__}")
    norm = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not norm:
        raise InvalidInput(f"{what} is empty or only whitespace")
    try:
        size = len(norm.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} is not valid Unicode (lone surrogate): {exc}") from None
    if size > MAX_TEXT_BYTES:
        raise InvalidInput(
            f"{what} is {size} bytes; an engram holds at most {MAX_TEXT_BYTES}",
            hint="split long documents into passages and ingest them with ingest_many",
        )
    return norm


def fingerprint_of(spec: dict[str, Any]) -> str:
    """Return the hex sha256 of an encoder spec's canonical JSON: the store's model identity.

    It lives here, not with the encoders, because the manifest and exports check it without
    needing any encoder code.
    """
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def content_id(fingerprint: str, normalized: str) -> str:
    """The engram id: sha256 over the encoder fingerprint and the normalised content."""
    h = hashlib.sha256()
    h.update(fingerprint.encode("ascii"))
    h.update(b"\x00")
    h.update(normalized.encode("utf-8"))
    return h.hexdigest()


def encode_metadata(metadata: object, *, max_depth: int | None = MAX_METADATA_DEPTH
                    ) -> str | None:
    """Serialise occurrence metadata to canonical JSON; InvalidInput if it is not a JSON dict
    or nests dicts and lists more than ``max_depth`` levels (the dict itself is level 1;
    None: no bound but the interpreter's, for metadata a store already holds)."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must be a dict, got {type(metadata).__name__}")
    for key in metadata:
        if not isinstance(key, str):
            raise InvalidInput(f"metadata keys must be str, got {key!r}")
    if max_depth is not None:
        check_depth(metadata, max_depth, "metadata")
    try:
        encoded = json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False)
        # A lone surrogate passes json.dumps (ensure_ascii=False) but not the catalog's UTF-8.
        encoded.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError included
        raise InvalidInput(
            f"metadata is not JSON-serialisable: {exc}",
            hint="use str, int, float (finite), bool, None, lists and dicts of those",
        ) from None
    return encoded


def check_depth(value: object, max_depth: int, what: str) -> None:
    """InvalidInput if ``value`` nests dicts, lists and tuples more than ``max_depth`` levels
    (a cycle nests without end). Iterative: a hostile value cannot exhaust Python's stack
    here, as it did in ``json.dumps`` (RecursionError) before this check."""
    level: list[object] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise InvalidInput(
                f"{what} nests more than {max_depth} levels of dicts and lists",
                hint=f"flatten it: at most {max_depth} levels, e.g. "
                     "{'a': {'b': 1}} is 2",
            )
        nxt: list[object] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(v for v in item.values() if isinstance(v, (dict, list, tuple)))
            elif isinstance(item, (list, tuple)):
                nxt.extend(v for v in item if isinstance(v, (dict, list, tuple)))
        level = nxt


def check_label(value: object, what: str) -> str | None:
    """Validate an optional role or session label."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty str or None, got {value!r}")
    return value


def check_vectors(vectors: object, dim: int, n: int, *, what: str = "vector") -> np.ndarray:
    """Return ``vectors`` as an (n, dim) float32 array of unit rows; raise on bad values.

    Vectors are normalised here so that inner product is cosine similarity everywhere. The
    same bits as ``unit_rows(validate_vectors(...))``, in one pass: each block's norms are
    computed once, for the check and the scaling (a query vector, recall's fixed cost, is
    checked in ~14 us instead of ~43 us).
    """
    arr = _shaped(vectors, dim, n, what)
    out = np.empty(arr.shape, np.float32)
    start = 0
    for block in _blocks(arr):
        out[start:start + len(block)] = block / _checked_norms(block, what)[:, None]
        start += len(block)
    return out


def validate_vectors(vectors: object, dim: int, n: int, *, what: str = "vector") -> np.ndarray:
    """Check ``vectors`` (shape ``(n, dim)``, numeric, finite, no zero row) and return them as
    an array, without copying a float or integer ndarray; raise ``InvalidInput`` /
    ``DimensionMismatch`` otherwise.

    The checks run in float64 on ~8 MiB blocks of rows, so validating a large batch costs no
    copy of it (10,000 activations of 4,096-d once took 1.1 GB of float64 temporaries here).
    """
    arr = _shaped(vectors, dim, n, what)
    for block in _blocks(arr):
        _checked_norms(block, what)
    return arr


def unit_rows(arr: np.ndarray) -> np.ndarray:
    """Rows of a :func:`validate_vectors` array scaled to unit length, as a new float32 array
    (computed in float64, block by block)."""
    out = np.empty(arr.shape, np.float32)
    start = 0
    for block in _blocks(arr):
        out[start:start + len(block)] = block / _norms(block)[:, None]
        start += len(block)
    return out


def _shaped(vectors: object, dim: int, n: int, what: str) -> np.ndarray:
    """``vectors`` as an (n, dim) numeric array (a float or integer ndarray is not copied)."""
    arr = vectors if isinstance(vectors, np.ndarray) else None
    if arr is None or not (np.issubdtype(arr.dtype, np.floating)
                           or np.issubdtype(arr.dtype, np.integer)):
        try:
            arr = np.asarray(vectors, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{what} is not numeric: {exc}") from None
    if arr.ndim == 1 and n == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise InvalidInput(f"expected {n} {what}(s) of dim {dim}, got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise DimensionMismatch(f"{what} has dim {arr.shape[1]}, the store's dim is {dim}")
    return arr


def _norms(block: np.ndarray) -> np.ndarray:
    """Euclidean length of each float64 row: ``np.linalg.norm(block, axis=1)``'s arithmetic
    (and bits) without its Python layers."""
    return np.sqrt(np.add.reduce(block * block, axis=1))


def _checked_norms(block: np.ndarray, what: str) -> np.ndarray:
    """:func:`_norms` of a float64 block; ``InvalidInput`` for a non-finite value or a zero
    (or overflowing) length. A NaN or inf anywhere makes its row's norm non-finite, so the
    element-wise check runs only when some norm is."""
    norms = _norms(block)
    if np.isfinite(norms).all() and norms.all():
        return norms
    if not np.isfinite(block).all():
        raise InvalidInput(f"{what} contains NaN or infinite values")
    raise InvalidInput(f"{what} has zero (or overflowing) length and no direction")


def _blocks(arr: np.ndarray) -> Iterator[np.ndarray]:
    """``arr``'s rows as float64 blocks of ~8 MiB."""
    step = max(1, (8 << 20) // (8 * max(1, arr.shape[1])))
    for start in range(0, arr.shape[0], step):
        yield np.asarray(arr[start:start + step], dtype=np.float64)


def check_top_k(top_k: object) -> int:
    """Validate a result count."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise InvalidInput(f"top_k must be a positive int, got {top_k!r}")
    return top_k


def check_finite(value: object, what: str) -> float:
    """Validate a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number, got {value!r}")
    return float(value)


# One zstd context per thread: python-zstandard's compressors and decompressors are not
# thread safe, and two stores written from two threads (a Pool) shared one module-level
# compressor and crashed the process with a segfault in the 1,000-user load test.
_local = threading.local()


def compress_text(text: str) -> bytes:
    """zstd-compress UTF-8 text for the catalog."""
    cctx = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return cctx.compress(text.encode("utf-8"))


def decompress_text(blob: bytes | str) -> str:
    """Inverse of :func:`compress_text`; a text not compressed yet (a ``str``) is returned
    as it is."""
    if isinstance(blob, str):
        return blob
    # A decompressor costs ~40 us to create and may not be shared between threads.
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx.decompress(blob).decode("utf-8")


def vector_checksum(row: np.ndarray) -> int:
    """A 63-bit checksum of a stored vector's bytes, so verify() can detect bit rot."""
    digest = hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# -- arguments of the public API (the front door's checks) ---------------------------------------


def is_id(ident: object) -> bool:
    """Whether ``ident`` has the form of an engram id (64 lowercase hex digits)."""
    return isinstance(ident, str) and len(ident) == 64 and all(
        ch in "0123456789abcdef" for ch in ident)


def check_id(ident: object) -> None:
    """InvalidInput unless ``ident`` has the form of an engram id."""
    if not is_id(ident):
        raise InvalidInput(f"not an engram id: {ident!r}",
                           hint="ids are the 64-hex-digit strings ingest() returns")


def id_list(ids: str | Iterable[str]) -> list[str]:
    """One id or many, as a checked list."""
    out = [ids] if isinstance(ids, str) else list(ids)
    for i in out:
        check_id(i)
    return out


def check_bool(value: Any, what: str) -> bool:
    """``value`` as a bool (None: False); InvalidInput for anything but a bool."""
    if value is None:
        return False
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInput(f"{what} must be a bool, got {value!r}")
    return bool(value)


def per_item(values: Any, n: int, what: str, check: Any) -> list[Any]:
    """A per-text argument of a batch call: None (the default for every text: False for a
    bool, else None) or one checked entry per text."""
    if values is None:
        return [check(None, what) if check is check_bool else None] * n
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidInput(f"{what} must be a list with one entry per text")
    if len(values) != n:
        raise InvalidInput(f"{what} has {len(values)} entries for {n} texts")
    return [check(v, f"{what}[{i}]") for i, v in enumerate(values)]


#: A caller key is an exact string (never normalised) of at most this many characters.
MAX_KEY_CHARS = 1024


def check_key(key: object, what: str = "key") -> str:
    """Validate a caller key: a non-empty str of at most :data:`MAX_KEY_CHARS` characters
    without NUL (keys are matched exactly: "a" and "a " are two keys)."""
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"{what} must be a non-empty str, got {key!r}")
    if len(key) > MAX_KEY_CHARS or "\x00" in key:
        raise InvalidInput(f"{what} must be at most {MAX_KEY_CHARS} characters without NUL, "
                           f"got {len(key)} characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no file or catalog can hold it
        raise InvalidInput(f"{what} is not valid Unicode: {exc.reason}") from exc
    return key


def key_list(keys: str | Iterable[str], what: str = "keys") -> list[str]:
    """One key or many, as a checked list of distinct keys (a key twice is refused: each key
    names one occurrence, so one call cannot write or remove it twice)."""
    if isinstance(keys, str):
        return [check_key(keys, what)]
    if isinstance(keys, bytes) or not isinstance(keys, Iterable):
        raise InvalidInput(f"{what} must be a str or a list of str")
    out = [check_key(k, f"{what}[{i}]") for i, k in enumerate(keys)]
    check_distinct(out, what)
    return out


def check_distinct(keys: Sequence[str | None], what: str = "keys") -> None:
    """Refuse a key given twice in one call."""
    seen: set[str] = set()
    for k in keys:
        if k is not None:
            if k in seen:
                raise InvalidInput(f"{what} holds {k!r} twice",
                                   hint="each key names one occurrence: give it once per call")
            seen.add(k)
