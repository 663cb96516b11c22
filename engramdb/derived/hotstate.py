"""The in-memory mirror of per-engram state that the read path needs on every query.

A DuckDB query costs a few hundred microseconds by itself, so recall cannot ask the catalog
which rows are alive, where their vectors are, or whether their lifespan has run out. This
mirror holds exactly that, in numpy arrays indexed by ``eid``, rebuilt from the catalog with one
Arrow query on open and updated after every commit. The catalog stays the truth.

Writers mutate it under the store's write lock; readers read it without a lock. Writes set the
pointer and lifespan fields before flipping ``alive``, so a concurrent reader sees an engram
either not at all or whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from engramdb.content import compress_text
from engramdb.errors import CorruptStore

NEVER = np.inf  # expires_at of a pinned engram
HOT_COLUMNS = 'eid, seg, "row", kind, expires_at, created_tick, id, text'  # from_arrow reads
_TAIL_FLUSH = 4096  # payloads kept as Python objects before they are packed into Arrow
# Eids are never reused and every array below is indexed by eid (~40 bytes each): 2**34 eids
# would need ~680 GB, so an eid or next_eid counter past this is damage, not a big store.
MAX_EIDS = 2**34


def eid_problem(low: int, high: int, next_eid: int | None = None) -> str | None:
    """Why stored eids from ``low`` to ``high`` cannot be a store's whose ``next_eid``
    counter is given (negative, at or past the counter, or past :data:`MAX_EIDS`); None if
    they can. verify() and :meth:`HotState.from_arrow` share it."""
    if low < 0:
        return f"a negative eid ({low})"
    if next_eid is not None and next_eid > MAX_EIDS:
        return f"the next_eid counter is {next_eid}, past the 2**34 eids any store can have"
    if next_eid is not None and high >= next_eid:
        return f"eid {high} is at or past the next_eid counter ({next_eid})"
    if high >= MAX_EIDS:
        return f"eid {high} is past the 2**34 eids any store can have"
    return None


def grown_capacity(need: int, capacity: int) -> int:
    """The capacity a per-eid array grows to: doubling, at least 1,024 and ``need``."""
    return max(need, 2 * capacity, 1024)


def grow_array(arr: np.ndarray, cap: int, fill: object) -> np.ndarray:
    """A copy of ``arr`` extended to ``cap`` entries, the new ones set to ``fill``."""
    out = np.full(cap, fill, arr.dtype)
    out[: len(arr)] = arr
    return out


class _Packed:
    """An Arrow string or binary column read one value at a time without Arrow scalars.

    ``array[i].as_py()`` builds a scalar object first and cost ~2.5 us a value, a tenth of a
    recall's own work at 10 hits; slicing the data buffer at the offsets costs ~0.5 us.
    """

    __slots__ = ("array", "offsets", "data")

    def __init__(self, array: pa.Array) -> None:
        self.array = array  # owns the buffers the views below read
        kind = array.type
        if array.null_count or not (pa.types.is_string(kind) or pa.types.is_binary(kind)
                                    or pa.types.is_large_string(kind)
                                    or pa.types.is_large_binary(kind)):
            array = pa.array(array.to_pylist(), pa.large_binary())  # rare: nulls, views
            self.array = array
        wide = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
        _, offsets, data = array.buffers()
        dtype = np.dtype(np.int64 if wide else np.int32)
        self.offsets = np.frombuffer(offsets, dtype, count=len(array) + 1,
                                     offset=array.offset * dtype.itemsize)
        self.data = memoryview(data) if data is not None else memoryview(b"")

    def get(self, pos: int) -> bytes:
        """The bytes of value ``pos``."""
        return self.data[int(self.offsets[pos]):int(self.offsets[pos + 1])].tobytes()


class HotState:
    """Per-eid arrays: pointer, kind, expiry, liveness; and per-segment row -> eid maps."""

    def __init__(self) -> None:
        self.capacity = 0
        self.seg = np.zeros(0, np.int32)
        self.row = np.zeros(0, np.int64)
        self.kind = np.zeros(0, np.int8)
        self.expires = np.zeros(0, np.float64)
        self.created = np.zeros(0, np.int64)
        self.alive = np.zeros(0, bool)  # stored and not forgotten (may still be expired)
        self.row_eid: dict[int, np.ndarray] = {}  # segment -> eid of each row, -1 if none
        self.version = 0  # bumped by every change; keys the cached visibility mask
        # Visibility at tick _vis_now, kept up to date by every change (see visible()).
        self._vis = np.zeros(0, bool)
        self._vis_now: float | None = None
        self.next_death = NEVER  # no visible engram dies before this tick (a lower bound)
        # Recall payload (id, text: compressed, or as given while in the tail) per eid, so a
        # recall needs no catalog query: packed Arrow chunks plus a tail of recent additions.
        self.pay_chunk = np.zeros(0, np.int32)  # chunk number, -1: in the tail
        self.pay_pos = np.zeros(0, np.int32)
        self._chunks: list[tuple[_Packed, _Packed]] = []
        self._tail_ids: list[str] = []
        self._tail_texts: list[bytes | str] = []

    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        cap = grown_capacity(need, self.capacity)

        def grown(arr: np.ndarray, fill: object) -> np.ndarray:
            return grow_array(arr, cap, fill)

        self.seg = grown(self.seg, -1)
        self.row = grown(self.row, -1)
        self.kind = grown(self.kind, 0)
        self.expires = grown(self.expires, 0.0)
        self.created = grown(self.created, 0)
        self.pay_chunk = grown(self.pay_chunk, -2)  # -2: no payload
        self.pay_pos = grown(self.pay_pos, 0)
        self.alive = grown(self.alive, False)
        self._vis = grown(self._vis, False)
        self.capacity = cap

    def _map_rows(self, seg: int, rows: np.ndarray, eids: np.ndarray) -> None:
        current = self.row_eid.get(seg, np.zeros(0, np.int64))
        need = int(rows.max()) + 1
        if need > len(current):
            grown = np.full(max(need, 2 * len(current)), -1, np.int64)
            grown[: len(current)] = current
            current = grown
        current[rows] = eids
        self.row_eid[seg] = current

    def add(
        self,
        eids: np.ndarray,
        segs: np.ndarray,
        rows: np.ndarray,
        kinds: np.ndarray,
        expires: np.ndarray,
        created: np.ndarray,
    ) -> None:
        """Record committed engrams (new ones, or ones moved by compaction)."""
        if len(eids) == 0:
            return
        self._grow(int(eids.max()) + 1)
        self.seg[eids] = segs
        self.row[eids] = rows
        self.kind[eids] = kinds
        self.expires[eids] = expires
        self.created[eids] = created
        for seg in set(segs.tolist()):  # (a turn's one segment: no np.unique)
            sel = segs == seg
            self._map_rows(seg, rows[sel], eids[sel])
        self.alive[eids] = True
        if self._vis_now is not None:
            self._vis[eids] = expires > self._vis_now
        self._changed(expires)

    def add_payload(self, eids: np.ndarray, ids: Sequence[str],
                    texts: Sequence[bytes] | Sequence[str]) -> None:
        """Record the id and text (compressed, or as given: compressed when the recent
        payloads are packed) of committed engrams (after :meth:`add`)."""
        start = len(self._tail_ids)
        self._tail_ids.extend(ids)
        self._tail_texts.extend(texts)
        self.pay_pos[eids] = np.arange(start, start + len(eids))
        self.pay_chunk[eids] = -1
        if len(self._tail_ids) >= _TAIL_FLUSH:
            self._flush_tail()

    def _flush_tail(self) -> None:
        tail = np.nonzero(self.pay_chunk == -1)[0]
        chunk = len(self._chunks)
        self._chunks.append((_Packed(pa.array(self._tail_ids, pa.string())),
                             _Packed(pa.array([compress_text(t) if isinstance(t, str) else t
                                               for t in self._tail_texts], pa.binary()))))
        # Rows of the tail keep their positions: the chunk is the tail, frozen.
        self.pay_chunk[tail] = chunk
        self._tail_ids, self._tail_texts = [], []

    def compressed(self, eids: np.ndarray, blobs: Sequence[bytes]) -> None:
        """The compressed texts of engrams whose rows were just written to the catalog: those
        still among the recent payloads keep these, and are not compressed again."""
        for eid, blob in zip(eids.tolist(), blobs, strict=True):
            if eid < len(self.pay_chunk) and self.pay_chunk[eid] == -1:
                pos = int(self.pay_pos[eid])
                if isinstance(self._tail_texts[pos], str):
                    self._tail_texts[pos] = blob

    def payload(self, eid: int) -> tuple[str, bytes | str]:
        """The id and text of a stored engram: compressed (for :func:`decompress_text`),
        or as given while it is among the recent payloads."""
        chunk, pos = int(self.pay_chunk[eid]), int(self.pay_pos[eid])
        if chunk < 0:
            return self._tail_ids[pos], self._tail_texts[pos]
        ids, texts = self._chunks[chunk]
        return ids.get(pos).decode("utf-8"), texts.get(pos)

    def _changed(self, expires: np.ndarray | None = None) -> None:
        self.version += 1
        if expires is not None and len(expires):
            self.next_death = min(self.next_death, float(np.min(expires)))

    def remove(self, eids: np.ndarray) -> None:
        """Forget engrams: they vanish from every search at once."""
        eids = eids[eids < self.capacity]
        self.alive[eids] = False
        self._vis[eids] = False
        self._changed()
        for eid in eids:
            table = self.row_eid.get(int(self.seg[eid]))
            if table is not None and self.row[eid] < len(table) and table[self.row[eid]] == eid:
                table[self.row[eid]] = -1

    def drop_segments(self, segs: list[int]) -> None:
        """Forget the row maps of segments removed by compaction."""
        for seg in segs:
            self.row_eid.pop(seg, None)

    def set_life(self, eids: np.ndarray, kinds: np.ndarray, expires: np.ndarray) -> None:
        """Record new kinds and expiry ticks (after a reward or promotion commits)."""
        self.kind[eids] = kinds
        self.expires[eids] = expires
        if self._vis_now is not None:
            self._vis[eids] = self.alive[eids] & (expires > self._vis_now)
        self._changed(expires)

    def visible(self, now: float) -> np.ndarray:
        """Mask over eids: stored, not forgotten, and with lifespan left at tick ``now``.

        Kept up to date in place by every change, and recomputed (an O(N) pass: about a
        millisecond at 1M engrams) only when the clock has reached ``next_death``, or moved
        back. In between it is exact: no visible engram dies before ``next_death``. Do not
        modify the returned array; combine it (``mask & other``) instead.
        """
        vis_now = self._vis_now
        if vis_now is not None and vis_now <= now and (now == vis_now or now < self.next_death):
            return self._vis
        self._vis = self.alive & (self.expires > now)
        self._vis_now = now
        return self._vis

    def deaths_due(self, now: float) -> np.ndarray | None:
        """If some engram's lifespan may have run out by ``now``, the eids of every stored but
        expired engram (and the lower bound is recomputed); else None, in O(1)."""
        if now < self.next_death:
            return None
        vis = self.visible(now)
        alive_exp = self.expires[vis]
        self.next_death = float(alive_exp.min()) if len(alive_exp) else NEVER
        return np.nonzero(self.alive & ~vis)[0]

    def live_eids(self, now: float) -> np.ndarray:
        """The eids visible at tick ``now``, ascending."""
        return np.nonzero(self.visible(now))[0]

    @classmethod
    def from_arrow(cls, table: pa.Table, *, next_eid: int | None = None,
                   max_row: int | None = None) -> HotState:
        """Build from catalog rows with the columns named in ``HOT_COLUMNS``.

        Raises CorruptStore, before allocating anything, for eids :func:`eid_problem` refuses
        (``next_eid``: the catalog's counter) and for a negative row or one at or past
        ``max_row`` (the longest committed segment): the arrays are as long as the largest
        eid and row, and one crafted value asked for terabytes.
        """
        state = cls()
        if next_eid is not None and next_eid > MAX_EIDS:  # the first ingest would allocate it
            raise CorruptStore(f"catalog: {eid_problem(0, 0, next_eid)}")
        if table.num_rows == 0:
            return state
        cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in
                ("eid", "seg", "row", "kind")}
        _check_bounds(cols["eid"], cols["row"], next_eid, max_row)
        expires = table.column("expires_at").to_numpy(zero_copy_only=False)
        expires = np.where(np.isnan(expires.astype(np.float64)), NEVER, expires)
        state.add(
            cols["eid"].astype(np.int64),
            cols["seg"].astype(np.int32),
            cols["row"].astype(np.int64),
            cols["kind"].astype(np.int8),
            expires.astype(np.float64),
            table.column("created_tick").to_numpy(zero_copy_only=False).astype(np.int64),
        )
        eids = cols["eid"].astype(np.int64)
        # One packed chunk per record batch, as the query returned them: combining them
        # first copied every id and text (0.1 s at 1M engrams, with the GIL held).
        start = 0
        for batch in table.to_batches():
            n = batch.num_rows
            if n == 0:
                continue
            at = eids[start:start + n]
            state.pay_chunk[at] = len(state._chunks)
            state.pay_pos[at] = np.arange(n)
            state._chunks.append((_Packed(batch.column("id")), _Packed(batch.column("text"))))
            start += n
        return state


def _check_bounds(eids: np.ndarray, rows: np.ndarray, next_eid: int | None,
                  max_row: int | None) -> None:
    """CorruptStore for eids or rows the hot arrays cannot (or must not) be sized by."""
    problem = eid_problem(int(eids.min()), int(eids.max()), next_eid)
    if problem is not None:
        raise CorruptStore(f"catalog: {problem}")
    low, high = int(rows.min()), int(rows.max())
    limit = MAX_EIDS if max_row is None else max_row
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        raise CorruptStore(f"catalog: an engram points at vector row {bad}, outside the "
                           f"committed segments")
