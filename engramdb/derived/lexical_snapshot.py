"""The file format of ``lexical.snapshot``: the BM25 postings as of the last close.

Reading ``lex_docs``/``lex_postings`` sorts every posting by term (4 s at 1M engrams), so the
store keeps a copy of the in-memory index in one file that maps back without sorting anything
(:meth:`engramdb.derived.lexical.LexicalIndex.save_snapshot` and ``load_snapshot`` wrap this
module). Layout: the line ``engramdb-lexical-snapshot``, an 8-byte little-endian header length,
a JSON header (``meta`` as the writer passed it; ``stats``, numbers to compare with the tables;
``arrays``, per array its dtype, count, offset and CRC-32), then the arrays, each 64-byte
aligned: the documents (``eids``, ``len``), the postings by term (``indptr``, ``pslot``,
``ptf``) and the vocabulary (``terms``, the UTF-8 of every term one after the other, cut at
``term_off``; ``term_hash``, their CRC-32s sorted, and ``term_by_hash``, the term of each).
"""

from __future__ import annotations

import json
import mmap
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Snapshot", "SnapshotVocab", "read_snapshot", "write_snapshot"]

_SNAPSHOT_MAGIC = b"engramdb-lexical-snapshot\n"
_ARRAYS = ("eids", "len", "indptr", "pslot", "ptf", "terms", "term_off", "term_hash",
           "term_by_hash")
#: Most snapshot term lookups :class:`SnapshotVocab` remembers (then it starts over).
_VOCAB_CACHE = 1 << 16


def _map_private(fd: int) -> mmap.mmap:
    """A copy-on-write map of a whole file, its pages mapped up front where the platform can
    (queries then take no page fault on first touching a posting list)."""
    try:
        return mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0),
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (AttributeError, TypeError):  # Windows: no flags/prot
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)


def _snapshot_stats(eids: np.ndarray, lens: np.ndarray, n_postings: int) -> dict[str, int]:
    """What a snapshot holds, in numbers the catalog tables can be compared with."""
    return {"docs": int(len(eids)), "postings": int(n_postings),
            "eid_sum": int(eids.sum(dtype=np.int64)), "len_sum": int(lens.sum(dtype=np.float64))}


class SnapshotVocab:
    """Term -> term id for an index read from a snapshot, with no Python object per term.

    ``dict(zip(terms, ids))`` over the 1M terms of a 1M-engram store costs ~0.5 s of CPU and
    ~100 MB at open; this finds a term by its CRC-32 (of the UTF-8) in the snapshot's sorted
    hashes and compares the bytes (~3 us a lookup, so a query pays microseconds). Terms added
    after the load (:meth:`setdefault`) go to a small dict. Supports what
    :class:`engramdb.derived.lexical.LexicalIndex` uses of a dict: ``get``, ``setdefault``,
    ``len`` and ``items``. Not thread-safe for writers (callers serialise writes).
    """

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, hashes: np.ndarray,
                 by_hash: np.ndarray) -> None:
        self._blob = memoryview(blob).cast("B")
        self._off = offsets
        self._hashes = hashes
        self._by_hash = by_hash
        self._n = len(by_hash)
        self._extra: dict[str, int] = {}
        # Lookups of snapshot terms (hit or miss), so a query pays the search once per term.
        # A term the snapshot lacks stays absent from it: one added later goes to ``_extra``,
        # which :meth:`get` consults first, so a cached miss never hides it.
        self._seen: dict[str, int] = {}

    def _find(self, term: str) -> int:
        key = term.encode("utf-8", "surrogatepass")
        h = np.uint32(zlib.crc32(key))  # the array's dtype: a Python int would copy it
        hashes, off = self._hashes, self._off
        i = int(hashes.searchsorted(h))
        while i < self._n and hashes[i] == h:
            tid = int(self._by_hash[i])
            if self._blob[int(off[tid]):int(off[tid + 1])] == key:
                return tid
            i += 1
        return -1

    def get(self, term: str, default: int | None = None) -> int | None:
        """The id of ``term``, or ``default``."""
        tid = self._extra.get(term)
        if tid is not None:
            return tid
        tid = self._seen.get(term) if isinstance(term, str) else -1
        if tid is None:
            if len(self._seen) >= _VOCAB_CACHE:
                self._seen.clear()
            tid = self._seen[term] = self._find(term)
        return default if tid < 0 else tid

    def setdefault(self, term: str, default: int) -> int:
        """The id of ``term``; a new term gets ``default``."""
        tid = self.get(term)
        if tid is None:
            self._extra[term] = tid = default
        return tid

    def __len__(self) -> int:
        return self._n + len(self._extra)

    def items(self) -> Iterator[tuple[str, int]]:
        """Every (term, id), the snapshot's first."""
        off = self._off.tolist()
        blob = self._blob
        for tid in range(self._n):
            yield bytes(blob[off[tid]:off[tid + 1]]).decode("utf-8", "surrogatepass"), tid
        yield from self._extra.items()


@dataclass(frozen=True)
class Snapshot:
    """The arrays of a snapshot file, as copy-on-write views of its memory map: documents
    (``eids`` int64, ``lens`` float32 token counts), postings by term (``indptr`` int64 over
    ``pslot`` int32 slots and ``ptf`` float32 term frequencies) and the ``vocab``."""

    eids: np.ndarray
    lens: np.ndarray
    indptr: np.ndarray
    pslot: np.ndarray
    ptf: np.ndarray
    vocab: SnapshotVocab


def write_snapshot(path: str | os.PathLike[str], meta: dict[str, Any], *, eids: np.ndarray,
                   lens: np.ndarray, indptr: np.ndarray, pslot: np.ndarray, ptf: np.ndarray,
                   terms: list[str]) -> None:
    """Write compacted postings to the file ``path`` (a temp file renamed over it).

    ``terms[t]`` is the text of term id ``t``, whose postings are ``pslot``/``ptf`` from
    ``indptr[t]`` to ``indptr[t + 1]``; terms without postings are left out of the file (no
    word of a deleted engram survives in it). Not fsynced: a torn file fails its CRC-32 on
    load. Raises ``OSError``.
    """
    counts = np.diff(indptr)
    keep = counts > 0
    encoded = [t.encode("utf-8", "surrogatepass")
               for t, k in zip(terms, keep.tolist()) if k]
    term_off = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=term_off[1:])
    hashes = np.fromiter(map(zlib.crc32, encoded), np.uint32, len(encoded))
    by_hash = np.argsort(hashes, kind="stable").astype(np.int32)
    kept_indptr = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(counts[keep], out=kept_indptr[1:])
    arrays = {"eids": eids.astype(np.int64, copy=False),
              "len": lens.astype(np.float32, copy=False), "indptr": kept_indptr,
              "pslot": pslot.astype(np.int32, copy=False),
              "ptf": ptf.astype(np.float32, copy=False),
              "terms": np.frombuffer(b"".join(encoded), np.uint8), "term_off": term_off,
              "term_hash": hashes[by_hash], "term_by_hash": by_hash}
    specs: dict[str, Any] = {}
    offset = 0
    for name, arr in arrays.items():
        specs[name] = {"dtype": arr.dtype.str, "count": int(arr.size), "offset": offset,
                       "crc32": zlib.crc32(memoryview(arr).cast("B"))}
        offset += -(-arr.nbytes // 64) * 64
    header = json.dumps({
        "format": _SNAPSHOT_MAGIC.decode().strip(), "version": 1, "meta": meta,
        "arrays": specs, "stats": _snapshot_stats(arrays["eids"], arrays["len"],
                                                   len(arrays["pslot"])),
    }).encode("utf-8")
    start = -(-(len(_SNAPSHOT_MAGIC) + 8 + len(header)) // 64) * 64
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            f.write(_SNAPSHOT_MAGIC + len(header).to_bytes(8, "little") + header)
            for name, arr in arrays.items():
                f.seek(start + specs[name]["offset"])
                f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
            f.truncate(start + offset)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_snapshot(path: str | os.PathLike[str]) -> tuple[Snapshot, dict[str, Any]]:
    """Map a file written by :func:`write_snapshot` and check it: ``(snapshot, info)``.

    ``info`` is the JSON header (``info["meta"]``, ``info["stats"]``). Costs one checked pass
    over the file and no copy. Raises ``ValueError`` for a damaged or foreign file (bad
    header, a size, a CRC-32 or an inconsistent array) and ``OSError``.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < len(_SNAPSHOT_MAGIC) + 8:
            raise ValueError(f"{path} is too short for a lexical snapshot")
        mm = _map_private(f.fileno())
    if mm[:len(_SNAPSHOT_MAGIC)] != _SNAPSHOT_MAGIC:
        raise ValueError(f"{path} is not a lexical snapshot")
    n_head = int.from_bytes(mm[len(_SNAPSHOT_MAGIC):len(_SNAPSHOT_MAGIC) + 8], "little")
    if n_head > size:
        raise ValueError(f"{path}: header of {n_head} bytes in a file of {size}")
    first = len(_SNAPSHOT_MAGIC) + 8
    info = json.loads(bytes(mm[first:first + n_head]))
    start = -(-(first + n_head) // 64) * 64
    a: dict[str, np.ndarray] = {}
    for name in _ARRAYS:
        spec = info["arrays"][name]
        dtype, count, offset = np.dtype(spec["dtype"]), int(spec["count"]), int(spec["offset"])
        if count < 0 or offset < 0 or start + offset + count * dtype.itemsize > size:
            raise ValueError(f"{path}: array {name} lies outside the file")
        arr = np.frombuffer(mm, dtype, count=count, offset=start + offset)
        if zlib.crc32(memoryview(arr).cast("B")) != spec["crc32"]:
            raise ValueError(f"{path}: array {name} fails its CRC-32")
        a[name] = arr
    _check(path, a, info)
    vocab = SnapshotVocab(a["terms"], a["term_off"], a["term_hash"], a["term_by_hash"])
    return Snapshot(a["eids"], a["len"], a["indptr"], a["pslot"], a["ptf"], vocab), info


def _check(path: str | os.PathLike[str], a: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    """Raise ValueError unless the arrays ``a`` (each past its CRC-32) fit together and agree
    with the header's stats: a CRC-32 proves an array intact, not written by this format."""
    n_docs, n_post, indptr = len(a["eids"]), len(a["pslot"]), a["indptr"]
    if (len(a["len"]) != n_docs or len(a["ptf"]) != n_post or len(indptr) < 1
            or indptr[0] != 0 or indptr[-1] != n_post or (np.diff(indptr) < 0).any()
            or (n_post and (int(a["pslot"].min()) < 0 or int(a["pslot"].max()) >= n_docs))):
        raise ValueError(f"{path}: inconsistent arrays")
    n_terms, off, by_hash = len(indptr) - 1, a["term_off"], a["term_by_hash"]
    if (len(off) != n_terms + 1 or off[0] != 0 or off[-1] != len(a["terms"])
            or (np.diff(off) < 0).any() or len(a["term_hash"]) != n_terms
            or len(by_hash) != n_terms or (np.diff(a["term_hash"]) < 0).any()
            or (n_terms and (int(by_hash.min()) < 0 or int(by_hash.max()) >= n_terms
                             or (np.bincount(by_hash, minlength=n_terms) != 1).any()))):
        raise ValueError(f"{path}: inconsistent vocabulary arrays")
    if info.get("stats") != _snapshot_stats(a["eids"], a["len"], n_post):
        raise ValueError(f"{path}: its stats disagree with its arrays")
