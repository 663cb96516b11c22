"""hnswlib's graph files: checked, mapped and handed to hnswlib without a second read.

A graph file is what hnswlib's ``saveIndex`` writes: a fixed header, ``count`` fixed-size
level-0 records (links, vector, label), then per element a uint32 byte count and that
element's upper-level link lists. hnswlib trusts its input (a truncated or garbage file can
crash the process or make it allocate wildly), so :func:`load_graph` checks the header and
the link lists' layout against what the level must hold before hnswlib sees the bytes, and
:func:`file_heights` derives each element's height from a file just written, which
:mod:`engramdb.derived.index_files` saves beside it.

This module imports only numpy, hnswlib, the standard library and
:mod:`engramdb.derived.index_checksums`.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from engramdb.derived.index_checksums import IndexDamaged, check_sum

__all__ = ["file_heights", "load_graph"]

# hnswlib's saveIndex header: offsetLevel0, max_elements, cur_element_count,
# size_data_per_element, label_offset, offsetData (size_t), maxlevel (int), enterpoint (uint32),
# maxM, maxM0, M (size_t), mult (double), ef_construction (size_t).
_HNSW_HEADER = struct.Struct("<QQQQQQiIQQQdQ")


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
    """:func:`~engramdb.derived.index_checksums.check_sum` for a thread: what it raises is
    appended to ``failed``."""
    try:
        check_sum(path, info, data)
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


def load_graph(path: Path, info: dict[str, Any], level_dim: int, m: int, n_total: int,
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


def file_heights(path: Path, m: int) -> np.ndarray:
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
