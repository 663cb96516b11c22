"""The turn path's image of the catalog, and the turns not yet folded into it.

A chat turn (``ingest``, ``integrate``) reads and writes a few engram rows and links: which
ids are stored, the lifespan fields of the engrams it rewards, the links it strengthens. Each
of those was a DuckDB statement costing about a millisecond, a dozen per turn. The
:class:`TurnMirror` holds them in memory instead (loaded once from the catalog, by the first
turn after an open or after a write that went straight to the catalog), the turn is made
durable by its journal record (:mod:`engramdb.storage.journal`), and the rows it adds wait
here until :meth:`TurnMirror.fold` writes all pending turns in one transaction, with one or
two statements per table.

Keyed removals (an ``upsert`` of a stored key, ``forget(keys=)``) are turns too: the removed
occurrences' sequence numbers, the engrams that lost their first occurrence (their context
row goes) and the engrams erased with their last occurrence wait here as well, and the fold
deletes those rows after inserting the pending ones. A write straight to the catalog that
only erases engrams (``forget``) or changes only counters (``tick``) is followed here
(:meth:`TurnMirror.forget_engrams`) instead of dropping the mirror, so the next turn does
not reload it.

Every method runs under the store's write lock, except the reads a recall makes without it
(:meth:`touching`, :meth:`occurrences`, :meth:`all_occurrences`), which copy what they read
in one step.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engramdb.content import compress_text, vector_checksum
from engramdb.derived.context import ContextRows, TurnContext
from engramdb.derived.hotstate import grow_array, grown_capacity
from engramdb.derived.lexical import LexicalIndex, LexicalRows
from engramdb.storage import catalog as cat
from engramdb.storage.schema import context_delete_sql

# The engram columns a turn changes after the row is written (the rest never change).
_MUTABLE = ("kind", "expires_at", "pinned", "refs", "recalls", "earned", "last_tick")
# Up to this many engrams the mirror also keeps every occurrence, loaded by the first recall
# that reads them: a recall's hits then need no catalog query (about 3 ms a turn).
OCCURRENCES_MAX = 50_000
OCCURRENCES_SQL = ("SELECT eid, seq, role, session, tick, metadata, key FROM occurrences "
                   "{} ORDER BY seq")
MIRROR_SQL = ("SELECT eid, id, kind, created_tick, expires_at, pinned, refs, recalls, earned, "
              "last_tick FROM engrams")
EDGES_SQL = "SELECT a, b, weight, tick FROM edges"
KEYS_SQL = "SELECT key, eid, seq FROM occurrences WHERE key IS NOT NULL"


OCCURRENCE_SCHEMA = pa.schema([
    ("eid", pa.int64()), ("seq", pa.int64()), ("role", pa.string()), ("session", pa.string()),
    ("tick", pa.int64()), ("metadata", pa.string()), ("key", pa.string())])


@dataclass
class NewEngramRows:
    """The ``engrams`` rows of a write's new engrams, as columns: a turn's one row costs far
    less this way than as an Arrow table (one is built per fold, or per catalog commit). The
    texts are compressed and the vectors' checksums taken only then: an open that replays a
    store's journal pays neither."""

    eids: np.ndarray
    ids: list[str]
    segs: np.ndarray
    rows: np.ndarray
    vectors: np.ndarray  # as stored: their checksums are taken when the rows are written
    texts: list[str]  # compressed when the rows are written
    kinds: np.ndarray
    created: np.ndarray
    expires: np.ndarray  # inf: never (pinned; NULL in the catalog)
    pinned: np.ndarray

    @classmethod
    def concat(cls, parts: list[NewEngramRows]) -> NewEngramRows:
        """The rows of several writes, in order."""
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts])
                     if isinstance(getattr(parts[0], f.name), np.ndarray)
                     else [v for p in parts for v in getattr(p, f.name)]
                     for f in fields(cls)))

    @cached_property
    def blobs(self) -> list[bytes]:
        """The texts compressed, as the catalog holds them (once per row)."""
        return [compress_text(t) for t in self.texts]

    def payloads(self) -> list[bytes] | list[str]:
        """The texts the in-memory state keeps: compressed if :attr:`blobs` was asked for
        already (rows written to the catalog), else as given (compressed later)."""
        return self.__dict__.get("blobs", self.texts)

    def table(self, mutable: dict[str, pa.Array] | None = None) -> pa.Table:
        """The rows as first written (no refs, recalls nor earnings yet), or with the
        ``mutable`` columns given."""
        n = len(self.eids)
        cols = {
            "eid": pa.array(self.eids, pa.int64()), "id": pa.array(self.ids, pa.string()),
            "seg": pa.array(self.segs, pa.int32()), "row": pa.array(self.rows, pa.int64()),
            "vec_sum": pa.array([vector_checksum(v) for v in self.vectors], pa.int64()),
            "text": pa.array(self.blobs, pa.binary()),
            "kind": pa.array(self.kinds, pa.int8()),
            "created_tick": pa.array(self.created, pa.int64()),
            "expires_at": pa.array(self.expires, pa.float64(), mask=np.isinf(self.expires)),
            "pinned": pa.array(self.pinned, pa.bool_()),
            "refs": pa.array(np.zeros(n, np.int32)),  # bumped with the occurrences
            "recalls": pa.array(np.zeros(n, np.int32)),
            "earned": pa.array(np.zeros(n, np.float64)),
            "last_tick": pa.array(self.created, pa.int64()),
        }
        return pa.table({**cols, **(mutable or {})})


class TurnMirror:
    """The engram fields and links the turn path uses, and the rows of unfolded turns."""

    def __init__(self) -> None:
        self.eid_of: dict[str, int] = {}
        self.capacity = 0
        self.kind = np.zeros(0, np.int8)
        self.created = np.zeros(0, np.int64)
        self.expires = np.zeros(0, np.float64)  # inf: never (pinned; NULL in the catalog)
        self.pinned = np.zeros(0, bool)
        self.refs = np.zeros(0, np.int64)
        self.recalls = np.zeros(0, np.int64)
        self.earned = np.zeros(0, np.float64)
        self.last_tick = np.zeros(0, np.int64)
        self.edges: dict[tuple[int, int], tuple[float, int]] = {}
        self.adjacent: dict[int, set[int]] = {}
        self._keys: dict[str, tuple[int, int]] | None = None  # see keys
        self._query_arrow: Callable[[str], pa.Table] | None = None
        self._folded_occurrences: dict[int, list[dict[str, Any]]] | None = None
        self._folds = 0
        self._nothing_folded = False  # no catalog yet: every occurrence is a pending one
        # A reader's occurrence load is kept only if no fold or removal came between.
        self._occurrences_version = 0
        self._occurrences_lock = threading.Lock()
        self._clear_pending()

    def _clear_pending(self) -> None:
        self.new_rows: list[NewEngramRows] = []  # engram rows as first written
        self.new_eids: set[int] = set()
        self.changed: set[int] = set()  # stored engrams whose mutable fields changed
        self.changed_edges: set[tuple[int, int]] = set()
        self.occurrence_rows: list[dict[str, Any]] = []
        self.pending_occurrences: dict[int, list[dict[str, Any]]] = {}
        self.lexical_rows: list[LexicalRows] = []
        self.context_rows: list[ContextRows] = []
        self.released_keys: list[int] = []  # seqs of folded occurrences that lose their key
        self._unfolded_keys: dict[str, tuple[int, int]] = {}  # keys of the pending turns
        # Keyed removals of the pending turns: the occurrences removed (replaced whole, so a
        # reader copies it in one step), the engrams whose context row goes (deleted before
        # the pending context rows are inserted), and the engrams erased (eid -> tick).
        self.removed: frozenset[int] = frozenset()
        self.dropped_context: set[int] = set()
        self.erased: dict[int, int] = {}

    @property
    def folds(self) -> int:
        """How many folds this mirror has seen (a reader that spans one reads again)."""
        return self._folds

    @property
    def pending(self) -> bool:
        """Whether turns wait to be folded into the catalog."""
        return bool(self.new_rows or self.changed or self.changed_edges
                    or self.occurrence_rows or self.released_keys or self.removed
                    or self.dropped_context or self.erased)

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def empty(cls) -> TurnMirror:
        """The mirror of a store with no catalog file yet (nothing folded, nothing to read)."""
        m = cls()
        m._folded_occurrences = {}
        m._nothing_folded = True
        return m

    @classmethod
    def load(cls, query_arrow: Callable[[str], pa.Table]) -> TurnMirror:
        """The mirror of a catalog (two scans: the engrams' small columns, the links)."""
        m = cls()
        rows = query_arrow(MIRROR_SQL)
        eids = rows.column("eid").to_numpy()
        if len(eids):
            m._grow(int(eids.max()) + 1)
            m.eid_of = dict(zip(rows.column("id").to_pylist(), eids.tolist(), strict=True))
            m._set_fields(eids, rows)
        edges = query_arrow(EDGES_SQL)
        for a, b, w, t in zip(*(edges.column(c).to_pylist() for c in ("a", "b", "weight",
                                                                       "tick")), strict=True):
            m._put_edge(int(a), int(b), float(w), int(t))
        m.changed_edges.clear()
        m._query_arrow = query_arrow
        return m

    @property
    def keys(self) -> dict[str, tuple[int, int]]:
        """Every caller key, folded or not -> (eid, seq) of the occurrence it names; read
        from the catalog by the first keyed write (a store without keys never pays for it)."""
        if self._keys is None:
            if self._query_arrow is None:  # a mirror of an empty catalog, built in memory
                self._keys = dict(self._unfolded_keys)
                return self._keys
            rows = self._query_arrow(KEYS_SQL)
            held = dict(zip(rows.column("key").to_pylist(),
                            zip(rows.column("eid").to_pylist(), rows.column("seq").to_pylist(),
                                strict=True), strict=True))
            removed = self.removed  # occurrences the catalog holds until the next fold
            if removed:
                held = {k: v for k, v in held.items() if v[1] not in removed}
            held.update(self._unfolded_keys)
            self._keys = held
        return self._keys

    @property
    def keys_loaded(self) -> bool:
        """Whether :attr:`keys` has been read (a write that removes keys must follow)."""
        return self._keys is not None

    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        cap = grown_capacity(need, self.capacity)
        for name, fill in (("kind", 0), ("created", 0), ("expires", 0.0), ("pinned", False),
                           ("refs", 0), ("recalls", 0), ("earned", 0.0), ("last_tick", 0)):
            setattr(self, name, grow_array(getattr(self, name), cap, fill))
        self.capacity = cap

    def _set_fields(self, eids: np.ndarray, rows: pa.Table) -> None:
        def col(name: str, dtype: Any, null: Any = 0) -> np.ndarray:
            column = rows.column(name)
            if column.null_count:  # fill_null costs more than the rest: only when needed
                column = column.fill_null(null)
            return np.asarray(column.to_numpy(), dtype)

        self.kind[eids] = col("kind", np.int8)
        self.created[eids] = col("created_tick", np.int64)
        self.expires[eids] = col("expires_at", np.float64, np.inf)
        self.pinned[eids] = col("pinned", bool, False)
        self.refs[eids] = col("refs", np.int64)
        self.recalls[eids] = col("recalls", np.int64)
        self.earned[eids] = col("earned", np.float64, 0.0)
        self.last_tick[eids] = col("last_tick", np.int64)

    # -- what the turn path reads -----------------------------------------------------------

    def lookup(self, ids: Iterable[str]) -> dict[str, int]:
        """The stored ids among ``ids`` and their eids."""
        eid_of = self.eid_of
        return {i: eid_of[i] for i in ids if i in eid_of}

    def life_rows(self, eids: Iterable[int]) -> list[tuple[int, int, int, float | None, float]]:
        """``(eid, kind, created_tick, expires_at or None, earned)`` of stored engrams."""
        out = []
        for e in eids:
            e = int(e)
            if 0 <= e < self.capacity:
                x = float(self.expires[e])
                out.append((e, int(self.kind[e]), int(self.created[e]),
                            None if np.isinf(x) else x, float(self.earned[e])))
        return out

    def touching(self, eids: Iterable[int]) -> list[tuple[int, int, float, int]]:
        """The links ``(a, b, weight, tick)`` with an end in ``eids``."""
        edges, adjacent = self.edges, self.adjacent
        out = []
        seen: set[tuple[int, int]] = set()
        for e in set(int(x) for x in eids):
            for o in tuple(adjacent.get(e, ())):
                key = (e, o) if e < o else (o, e)
                if key not in seen and key in edges:
                    seen.add(key)
                    w, t = edges[key]
                    out.append((key[0], key[1], w, t))
        return out

    def occurrences(self, eids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
        """The occurrences of unfolded turns, per eid (in the order they were said)."""
        pending = self.pending_occurrences
        return {int(e): list(pending[int(e)]) for e in eids if int(e) in pending}

    def all_occurrences(self, eids: list[int], query: Callable[[str], list[tuple]]
                        ) -> dict[int, list[dict[str, Any]]] | None:
        """Every occurrence of ``eids`` (folded and pending, in order), from memory; the
        folded ones are read once with ``query``. None for a store too big to keep them."""
        if self._nothing_folded:
            pending = self.pending_occurrences
            return {e: list(pending.get(e, ())) for e in eids}
        if len(self.eid_of) > OCCURRENCES_MAX:
            if not self.removed:
                return None  # the caller reads the catalog's, then the pending ones
            # The catalog still holds occurrences a pending turn removed: read these
            # engrams' and leave those out.
            listed = ",".join(str(int(e)) for e in eids) or "-1"
            folded = self._read_occurrences(query, f"WHERE eid IN ({listed})")
        else:
            folded = self._folded_occurrences
            if folded is None:
                version = self._occurrences_version
                folded = self._read_occurrences(query, "")
                with self._occurrences_lock:
                    if version == self._occurrences_version:  # else: use it once only
                        self._folded_occurrences = folded
        pending = self.pending_occurrences
        return {e: [*folded.get(e, ()), *pending.get(e, ())] for e in eids}

    def _read_occurrences(self, query: Callable[[str], list[tuple]], where: str
                          ) -> dict[int, list[dict[str, Any]]]:
        """The catalog's occurrences (``where``: of some engrams), per eid, in order, but
        those pending turns removed."""
        folded: dict[int, list[dict[str, Any]]] = {}
        rows = query(OCCURRENCES_SQL.format(where))
        removed = self.removed  # read after the query: a removal meanwhile is left out too
        for eid, seq, role, session, tick, meta, key in rows:
            if seq not in removed:
                folded.setdefault(int(eid), []).append(
                    {"seq": seq, "role": role, "session": session, "tick": tick,
                     "metadata": meta, "key": key})
        return folded

    # -- what the turn path writes ----------------------------------------------------------

    def remove_occurrences(self, found: Mapping[str, tuple[int, int]], keep: Iterable[int],
                           first_seq: Callable[[int, frozenset[int]], int | None]
                           ) -> tuple[list[int], list[int]]:
        """Remove the occurrences these keys name (``key -> (eid, seq)``, folded or not).
        Returns the engrams left without any occurrence, but those in ``keep`` (said again
        by the same turn), to erase, and the engrams whose first occurrence went (before this
        removal). ``first_seq(eid, removed)`` reads the smallest folded seq of an engram not
        among ``removed`` (None if none), for an engram that keeps occurrences."""
        seqs = {int(s) for _, s in found.values()}
        counts = Counter(int(e) for e, _ in found.values())
        firsts = [e for e, n in counts.items() if self._loses_first(e, n, seqs, first_seq)]
        for key in found:
            self._unfolded_keys.pop(key, None)
            if self._keys is not None:
                self._keys.pop(key, None)
        with self._occurrences_lock:  # a reader's load from before this is not kept
            self._occurrences_version += 1
            self.removed = self.removed | seqs
            cached = self._folded_occurrences
            for eid in counts:
                for held in (self.pending_occurrences, cached):
                    if held is not None and eid in held:  # replaced, never edited in place
                        held[eid] = [o for o in held[eid] if o["seq"] not in seqs]
        for eid, n in counts.items():
            self.refs[eid] -= n
        self.changed.update(counts)
        kept = set(keep)
        orphans = sorted(e for e in counts if self.refs[e] <= 0 and e not in kept)
        return orphans, sorted(firsts)

    def _loses_first(self, eid: int, n: int, seqs: set[int],
                     first_seq: Callable[[int, frozenset[int]], int | None]) -> bool:
        if self.refs[eid] <= n:
            return True  # every occurrence goes, the first one too
        first = None if eid in self.new_eids else first_seq(eid, self.removed)
        if first is None:  # none folded left: the pending ones come after any folded one
            first = min(o["seq"] for o in self.pending_occurrences.get(eid, ()))
        return first in seqs

    def drop_context(self, eids: list[int]) -> None:
        """Engrams whose first occurrence a pending turn removed lose their context row:
        pending rows of theirs are dropped, the folded ones deleted at the fold (before the
        rows of later turns, which may give them a new one)."""
        self.dropped_context.update(eids)
        gone = set(eids)
        self.context_rows = [r.without(gone) for r in self.context_rows]

    def erase(self, eids: list[int], ids: list[str], tick: int) -> None:
        """Engrams a pending turn erased (logged as forgotten at ``tick``): their rows,
        inserted or not yet, are deleted at the fold."""
        for eid in eids:
            self.erased[int(eid)] = tick
        self._drop_engrams(eids, ids)

    def forget_engrams(self, eids: list[int], ids: list[str], keys: list[str]) -> None:
        """Follow a catalog commit that erased engrams (with ``keys``, their occurrences'
        keys): this mirror stays valid."""
        for key in keys:
            if self._keys is not None:
                self._keys.pop(key, None)
        self._drop_engrams(eids, ids)

    def _drop_engrams(self, eids: list[int], ids: list[str]) -> None:
        for ident in ids:
            self.eid_of.pop(ident, None)
        with self._occurrences_lock:
            self._occurrences_version += 1
            for eid in eids:
                self.pending_occurrences.pop(int(eid), None)
                if self._folded_occurrences is not None:
                    self._folded_occurrences.pop(int(eid), None)
        for eid in (int(e) for e in eids):
            for other in self.adjacent.pop(eid, set()):
                key = (eid, other) if eid < other else (other, eid)
                self.edges.pop(key, None)
                self.changed_edges.discard(key)
                self.adjacent.get(other, set()).discard(eid)

    def release_keys(self, seqs: list[int]) -> None:
        """Folded occurrences that lose their key to a replayed turn (the later write)."""
        self.released_keys.extend(seqs)

    def add_engrams(self, rows: NewEngramRows, lexical: LexicalRows) -> None:
        """New engram rows and their BM25 rows."""
        eids = rows.eids
        self._grow(int(eids.max()) + 1)
        self.kind[eids] = rows.kinds
        self.created[eids] = rows.created
        self.expires[eids] = rows.expires
        self.pinned[eids] = rows.pinned
        self.refs[eids] = 0
        self.recalls[eids] = 0
        self.earned[eids] = 0.0
        self.last_tick[eids] = rows.created
        self.eid_of.update(zip(rows.ids, eids.tolist(), strict=True))
        self.new_rows.append(rows)
        self.new_eids.update(eids.tolist())
        self.lexical_rows.append(lexical)

    def add_occurrences(self, columns: dict[str, list[Any]], context: ContextRows) -> None:
        """New occurrence rows (the table's columns, as lists) and their
        conversation-context rows."""
        names = list(columns)
        rows = [dict(zip(names, values, strict=True))
                for values in zip(*columns.values(), strict=True)]
        self.occurrence_rows.extend(rows)
        self.context_rows.append(context)
        for o in rows:
            self.pending_occurrences.setdefault(int(o["eid"]), []).append(o)
            if o.get("key") is not None:
                held = (int(o["eid"]), int(o["seq"]))
                self._unfolded_keys[o["key"]] = held
                if self._keys is not None:
                    self._keys[o["key"]] = held

    def bump_refs(self, eids: np.ndarray, counts: np.ndarray, now: int) -> None:
        """Engrams that got occurrences at ``now``."""
        self.refs[eids] += counts
        self.last_tick[eids] = now
        self.changed.update(eids.tolist())

    def revive(self, eids: list[int], until: float) -> None:
        """Content said again lives at least until ``until`` (pinned engrams stay pinned)."""
        for e in eids:
            if not np.isinf(self.expires[e]):
                self.expires[e] = max(self.expires[e], until)
        self.changed.update(eids)

    def pin(self, eids: list[int]) -> None:
        """Pin engrams: they never expire."""
        self.pinned[eids] = True
        self.expires[eids] = np.inf
        self.changed.update(eids)

    def set_life(self, eids: list[int], kinds: list[int], expires: list[float | None],
                 earned: list[float] | None = None, recalled: int = 0,
                 now: int | None = None) -> None:
        """New kinds and expiries (None: never); rewards also set earnings, count a recall
        and the tick."""
        for k, e in enumerate(eids):
            self.kind[e] = kinds[k]
            self.expires[e] = np.inf if expires[k] is None else expires[k]
            if earned is not None:
                self.earned[e] = earned[k]
                self.recalls[e] += recalled
            if now is not None:
                self.last_tick[e] = now
        self.changed.update(int(e) for e in eids)

    def pairs(self, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], tuple[float, int]]:
        """The stored ``(weight, tick)`` of those of the links ``keys`` (``(a, b)``, a < b)
        that exist."""
        edges = self.edges
        return {k: edges[k] for k in keys if k in edges}

    def replace_edges(self, rows: list[tuple[int, int, float, int]]) -> None:
        """Links written with their new weight and tick: ``(a, b, weight, tick)``."""
        for a, b, w, t in rows:
            self._put_edge(int(a), int(b), float(w), int(t))

    def _put_edge(self, a: int, b: int, weight: float, tick: int) -> None:
        self.edges[(a, b)] = (weight, tick)
        self.adjacent.setdefault(a, set()).add(b)
        self.adjacent.setdefault(b, set()).add(a)
        self.changed_edges.add((a, b))

    # -- folding ------------------------------------------------------------------------------

    def fold(self, con: Any) -> NewEngramRows | None:
        """Write every pending turn through ``con`` (inside the caller's transaction): new
        engrams with their current fields, the changed fields of older ones, occurrences,
        BM25 and context rows, and the changed links. Returns the new engrams' rows (with
        their texts compressed), or None."""
        new = None
        if self.new_rows:
            new = NewEngramRows.concat(self.new_rows)
            cat.insert_arrow(con, "engrams", new.table(self._fields(new.eids)))
            LexicalIndex.insert(con, LexicalRows.concat(self.lexical_rows))
        old = sorted(self.changed - self.new_eids)
        if old:
            self._update_fields(con, np.array(old, np.int64))
        if self.dropped_context:  # before the pending rows: a later turn may give a new one
            for sql, params in context_delete_sql(sorted(self.dropped_context)):
                con.execute(sql, params)
        removed = sorted(self.removed)
        if self.occurrence_rows:
            occ = pa.Table.from_pylist(self.occurrence_rows, schema=OCCURRENCE_SCHEMA)
            if removed:
                occ = occ.filter(pc.invert(pc.is_in(occ.column("seq"),
                                                    value_set=pa.array(removed, pa.int64()))))
            cat.insert_arrow(con, "occurrences", occ)
            self._insert_context(con)
        if self.released_keys:
            con.execute("UPDATE occurrences SET key = NULL "
                        "WHERE seq IN (SELECT unnest(?::BIGINT[]))", [self.released_keys])
        if removed:
            con.execute("DELETE FROM occurrences WHERE seq IN (SELECT unnest(?::BIGINT[]))",
                        [removed])
        if self.changed_edges:
            keys = sorted(self.changed_edges)
            rows = pa.table({
                "a": pa.array([k[0] for k in keys], pa.int64()),
                "b": pa.array([k[1] for k in keys], pa.int64()),
                "weight": pa.array([self.edges[k][0] for k in keys], pa.float64()),
                "tick": pa.array([self.edges[k][1] for k in keys], pa.int64()),
            })
            with cat.registered(con, "edge_fold", rows) as view:
                con.execute(f"DELETE FROM edges USING {view} v "
                            "WHERE edges.a = v.a AND edges.b = v.b")
            cat.insert_arrow(con, "edges", rows)
        return new

    def folded(self) -> None:
        """The pending turns are in the catalog now."""
        with self._occurrences_lock:
            self._folds += 1
            self._occurrences_version += 1
            self._folded_occurrences = None  # the next recall reads them again
            self._nothing_folded = False
        self._clear_pending()

    def _fields(self, eids: np.ndarray) -> dict[str, pa.Array]:
        expires = self.expires[eids]
        return {
            "kind": pa.array(self.kind[eids], pa.int8()),
            "expires_at": pa.array(expires, pa.float64(), mask=np.isinf(expires)),
            "pinned": pa.array(self.pinned[eids], pa.bool_()),
            "refs": pa.array(self.refs[eids].astype(np.int32)),
            "recalls": pa.array(self.recalls[eids].astype(np.int32)),
            "earned": pa.array(self.earned[eids], pa.float64()),
            "last_tick": pa.array(self.last_tick[eids], pa.int64()),
        }

    def _update_fields(self, con: Any, eids: np.ndarray) -> None:
        table = pa.table({"eid": pa.array(eids), **self._fields(eids)})
        sets = ", ".join(f"{c} = v.{c}" for c in _MUTABLE)
        with cat.registered(con, "engram_fold", table) as view:
            con.execute(f"UPDATE engrams SET {sets} FROM {view} v WHERE engrams.eid = v.eid")

    def _insert_context(self, con: Any) -> None:
        rows = ContextRows.concat(self.context_rows)
        # A label written by several turns keeps its last row (its session's last turn).
        last_at = {c: k for k, c in enumerate(rows.label_columns[0])}
        keep = sorted(last_at.values())
        TurnContext.insert(con, ContextRows(
            rows.turn_columns, tuple([col[k] for k in keep] for col in rows.label_columns)))

