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

import numpy as np
import pyarrow as pa

NEVER = np.inf  # expires_at of a pinned engram
HOT_COLUMNS = 'eid, seg, "row", kind, expires_at, created_tick'  # what from_arrow reads


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
        self._visible: tuple[float, int, np.ndarray] | None = None
        self.next_death = NEVER  # no visible engram dies before this tick (a lower bound)

    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        cap = max(need, 2 * self.capacity, 1024)

        def grown(arr: np.ndarray, fill: object) -> np.ndarray:
            out = np.full(cap, fill, arr.dtype)
            out[: len(arr)] = arr
            return out

        self.seg = grown(self.seg, -1)
        self.row = grown(self.row, -1)
        self.kind = grown(self.kind, 0)
        self.expires = grown(self.expires, 0.0)
        self.created = grown(self.created, 0)
        self.alive = grown(self.alive, False)
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
        for seg in np.unique(segs):
            sel = segs == seg
            self._map_rows(int(seg), rows[sel], eids[sel])
        self.alive[eids] = True
        self._changed(expires)

    def _changed(self, expires: np.ndarray | None = None) -> None:
        self.version += 1
        if expires is not None and len(expires):
            self.next_death = min(self.next_death, float(np.min(expires)))

    def remove(self, eids: np.ndarray) -> None:
        """Forget engrams: they vanish from every search at once."""
        eids = eids[eids < self.capacity]
        self.alive[eids] = False
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
        self._changed(expires)

    def visible(self, now: float) -> np.ndarray:
        """Mask over eids: stored, not forgotten, and with lifespan left at tick ``now``.

        Cached until the clock or the state changes (an O(N) pass per query would cost about
        a millisecond at 1M engrams); the returned array is read-only, copy it to modify.
        """
        cached = self._visible
        if cached is not None and cached[0] == now and cached[1] == self.version:
            return cached[2]
        mask = self.alive & (self.expires > now)
        mask.setflags(write=False)
        self._visible = (now, self.version, mask)
        return mask

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
    def from_arrow(cls, table: pa.Table) -> HotState:
        """Build from catalog rows with the columns named in ``HOT_COLUMNS``."""
        state = cls()
        if table.num_rows == 0:
            return state
        cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in
                ("eid", "seg", "row", "kind")}
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
        return state
