"""The one commit primitive: every write to a store goes through :meth:`Committer.commit`.

The commit protocol (docs/format.md): new vectors are appended to a segment and fsynced
first; then one DuckDB transaction writes the rows, the counters and the new committed
segment lengths; only when that commit returns is the write acknowledged, and only then is
the change applied to the derived state (hot arrays, BM25, conversation context, vector
index), in one place (:meth:`Committer._apply`), in a fixed order. A crash before the commit
leaves bytes past the committed length, which the next open cuts off.

A write site describes its change on the :class:`Commit` it is handed (``delete_engrams``,
``add_engrams``, ``set_life``...) and runs its own statements on ``commit.con``; the committer
owns the counters (generation, clock, next eid and seq, last turn), bumps the generation once
per commit, and keeps "fast" durability's sync points.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from engramdb.derived.hotstate import NEVER
from engramdb.engine.links import in_list
from engramdb.engine.mirror import NewEngramRows, TurnMirror
from engramdb.engine.parts import Parts
from engramdb.engine.turnlog import TurnRecord
from engramdb.errors import CommitUncertain, StorageError
from engramdb.storage import catalog as cat
from engramdb.storage.manifest import FORMAT_VERSION
from engramdb.storage.schema import context_delete_sql, lexical_delete_sql

# Why an engram left the store, as the forgetting log records it.
REASONS = ("forgotten", "expired", "lost")
# What the forgetting log keeps as the id of an engram gc has erased: a random token. The
# engram id is a hash of the encoder's fingerprint and the text, so keeping it would let
# anyone holding the store confirm a guessed text (docs/lifespan.md, "Erasure").
TOMBSTONE_PREFIX = "erased-"
log = logging.getLogger(__name__)
SLOW_SECONDS = 1.0  # a commit or fold longer than this is logged as slow
TOMBSTONE_SQL = (f"'{TOMBSTONE_PREFIX}' || "
                 "replace(CAST(gen_random_uuid() AS VARCHAR), '-', '')")
_LISTED = "(SELECT unnest(?::BIGINT[]))"


@dataclass
class Counters:
    """The catalog's counters as this handle last committed them."""

    generation: int
    clock: int
    next_eid: int
    next_seq: int
    last_turn: int
    journal_seq: int = 0


@dataclass
class NewEngrams:
    """Engrams a commit adds: their rows (hot-state fields and payload), BM25 rows and
    vectors."""

    rows: NewEngramRows
    lexical_rows: Any
    vectors: np.ndarray


@dataclass
class Commit:
    """One write's change, described by its site and applied by the committer."""

    committer: Committer
    durable: bool
    bump: bool
    counters: dict[str, int] = field(default_factory=dict)
    segment_lengths: dict[int, int] | None = None
    new: NewEngrams | None = None
    turns: tuple[Any, Any] | None = None  # context rows, and the new engrams' BM25 lengths
    said_again: list[int] = field(default_factory=list)
    life: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    deleted: list[np.ndarray] = field(default_factory=list)
    # Surviving engrams whose first occurrence went (a keyed removal): their context row is
    # deleted, and an occurrence of theirs in the same commit may plan a new one.
    rehomed: list[int] = field(default_factory=list)
    dropped_labels: list[int] = field(default_factory=list)
    moved: tuple[list[int], np.ndarray, np.ndarray, np.ndarray] | None = None
    linked: bool = False
    after: list[Callable[[], None]] = field(default_factory=list)
    wrote_vectors: bool = False
    # A turn-path commit (Committer.turn) changes the mirror, not the catalog; a turn's
    # record makes it durable (journaled once appended).
    mirror: TurnMirror | None = None
    journaled: bool = False
    folding: bool = False
    _stack: ExitStack = field(default_factory=ExitStack)
    _con: Any = None

    # Keys of the occurrences a catalog commit's erasures deleted (the mirror follows).
    erased_keys: list[str] = field(default_factory=list)
    # Whether the site ran statements of its own (on ``con``): the turn path's mirror cannot
    # follow those, and is dropped (reloaded by the next turn).
    wrote_rows: bool = False

    @property
    def con(self) -> Any:
        """The transaction's connection (the transaction begins on first use, so that a
        write appends and fsyncs its vectors before it)."""
        self.wrote_rows = True
        return self._connection()

    def _connection(self) -> Any:
        if self.mirror is not None:
            raise RuntimeError("a turn-path commit writes the mirror, not the catalog")
        if self._con is None:
            catalog = self.committer.parts.catalog
            if self.durable:
                self._stack.enter_context(catalog.durable())
            self._con = self._stack.enter_context(self.committer.transaction())
        return self._con

    def set(self, **values: int) -> None:
        """Set counters (``clock``, ``next_eid``, ``next_seq``, ``last_turn``,
        ``synced_eid``) in this commit."""
        self.counters.update(values)

    def append_vectors(self, vectors: np.ndarray, *, first_new: int | None = None,
                       durable: bool | None = None, base: dict[int, int] | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Append ``vectors`` to the segments (fsynced unless "fast"), before the transaction;
        return their (segment, row) pointers. The new committed lengths (``base``, default
        the committed ones, plus the new rows) are recorded by this commit; a commit that
        fails cuts the appended bytes again."""
        segments = self.committer.parts.segments
        plan = segments.plan(len(vectors), first_new=first_new)
        if self.mirror is not None:
            durable = False  # the turn's journal record holds them until the fold syncs
        # A replayed turn finds its vectors in the file already, unless a crash cut them.
        segments.write(plan, vectors, durable=durable,
                       keep_equal=self.committer.parts.replaying)
        self.wrote_vectors = True
        self.segment_lengths = plan.committed_after(
            segments.committed if base is None else base)
        return plan.pointers()

    def journal(self, record: TurnRecord) -> None:
        """Append a turn's record to the journal: from here on the turn is durable (with
        "full" durability) and is acknowledged when this commit returns."""
        committer = self.committer
        record.seq = committer.counters.journal_seq + 1
        committer.parts.journal.append(record.encode())
        self.journaled = True
        self.set(journal_seq=record.seq)

    def add_engrams(self, new: NewEngrams) -> None:
        """New engrams whose rows this commit inserts (the site inserts them)."""
        self.new = new

    def add_turns(self, context_rows: Any, lexical_lengths: tuple[np.ndarray, np.ndarray]
                  ) -> None:
        """Occurrences' conversation-context rows (the site inserts them)."""
        self.turns = (context_rows, lexical_lengths)

    def refresh(self, eids: list[int]) -> None:
        """Engrams said again: their kind and expiry are reloaded after the commit."""
        self.said_again = eids

    def set_life(self, eids: np.ndarray, kinds: np.ndarray, expires: np.ndarray) -> None:
        """New kinds and expiries of engrams (the site updates their rows)."""
        self.life.append((eids, kinds, expires))

    def link(self) -> None:
        """This commit created or strengthened a link."""
        self.linked = True

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the commit is acknowledged and the derived state updated."""
        self.after.append(fn)

    def delete_engrams(self, eids: Sequence[int] | np.ndarray, reason: str, *,
                       tick: int | None = None, collected: bool = False) -> None:
        """Delete engrams with their occurrences, links, BM25 and context rows, and log them
        in the forgetting log with ``reason`` at ``tick`` (default: the tick their lifespan
        ran out); ``collected`` (gc erases them now) logs them under a tombstone id. The
        derived state forgets them once the commit is acknowledged. In a turn (a keyed
        removal) the mirror records them and the fold deletes the rows (:func:`erase_rows`)."""
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        eids = np.asarray(eids, np.int64)
        if not len(eids):
            return
        parts = self.committer.parts
        if self.mirror is not None:  # a turn: the fold deletes the rows (erase_rows)
            if reason != "forgotten" or tick is None or collected:
                raise ValueError("a turn erases engrams as forgotten, at a given tick")
            self.mirror.erase(eids.tolist(), [parts.hot.payload(e)[0] for e in eids.tolist()],
                              tick)
            self.deleted.append(eids)
            return
        self.deleted.append(eids)
        con = self._connection()
        when = "CAST(ceil(expires_at) AS BIGINT)" if tick is None else str(int(tick))
        logged = TOMBSTONE_SQL if collected else "id"
        con.execute(f"INSERT INTO forgotten SELECT eid, {logged}, {when}, '{reason}', kind, "
                    f"{'true' if collected else 'false'} FROM engrams WHERE eid IN {_LISTED}",
                    [eids.tolist()])
        if parts.mirror is not None and parts.mirror.keys_loaded and not self.wrote_rows:
            # The mirror will follow this commit (it runs nothing else): its keys go too.
            self.erased_keys.extend(k for (k,) in con.execute(
                f"SELECT key FROM occurrences WHERE eid IN {_LISTED} AND key IS NOT NULL",
                [eids.tolist()]).fetchall())
        delete_rows(con, eids)

    def drop_context(self, eids: list[int]) -> None:
        """Delete the conversation-context rows of engrams that stay (their first
        occurrence was removed); the derived context forgets them after the commit."""
        if not eids:
            return
        if self.mirror is not None:
            self.mirror.drop_context(eids)
        else:
            for sql, params in context_delete_sql(np.asarray(eids, np.int64)):
                self.con.execute(sql, params)
        self.rehomed.extend(eids)

    def drop_labels(self, codes: list[int]) -> None:
        """Session and role labels no occurrence uses any more (the site deletes them)."""
        self.dropped_labels.extend(codes)

    def move(self, segs: list[int], eids: np.ndarray, new_segs: np.ndarray,
             new_rows: np.ndarray) -> None:
        """gc's compaction: ``eids`` moved out of ``segs`` (deleted after the commit)."""
        self.moved = (segs, eids, new_segs, new_rows)

    def finish(self) -> None:
        """Write the counters and segment lengths; the last statements of the transaction."""
        counters = self.committer.counters
        values = dict(self.counters)
        if self.bump:
            values["generation"] = counters.generation + 1
        if self.mirror is not None:  # a turn: the counters move in memory, the fold writes them
            self.counters = values
            return
        if self.segment_lengths is not None:
            before = self.committer.catalog_lengths if self.moved is None else None
            cat.set_segment_lengths(self._connection(), self.segment_lengths, before)
        if "next_eid" in values and not self.committer.fast:
            # The vectors were fsynced before the commit: the sync mark moves with them.
            values.setdefault("synced_eid", values["next_eid"])
        self.counters = values
        if values:
            cat.set_counters(self._connection(), values)


class Committer:
    """Owns the transaction, the counters and the sync points of one open store."""

    def __init__(self, parts: Parts, counters: Counters, *, fast: bool) -> None:
        self.parts = parts
        self.counters = counters
        self.fast = fast  # "fast" durability: writes are synced at sync points
        self.last_sync = time.monotonic()
        # Set by the owner: closes the handle after an uncertain commit (see transaction).
        self.abandon: Callable[[], None] = lambda: None
        # Derived-state upkeep the owner plugs in (engine.upkeep.IndexKeeper).
        self.keeper: Any = None
        self.derived_ready = False  # recovery on open commits before the derived state exists
        # Segment lengths as the catalog records them while unfolded turns have appended
        # past them (None: the same as the segments' own).
        self._folded_lengths: dict[int, int] | None = None

    @property
    def catalog_lengths(self) -> dict[int, int]:
        """The committed segment lengths the catalog records."""
        if self._folded_lengths is not None:
            return dict(self._folded_lengths)
        return self.parts.segments.committed

    @property
    def pending(self) -> bool:
        """Whether acknowledged turns wait in the journal to be folded into the catalog."""
        mirror = self.parts.mirror
        return mirror is not None and mirror.pending

    @contextmanager
    def commit(self, *, durable: bool = False, bump: bool = True) -> Iterator[Commit]:
        """One commit: the site describes its change on the yielded :class:`Commit`; on a
        clean exit the transaction commits, then the counters and derived state follow.
        ``durable`` fsyncs this commit even in "fast" mode; ``bump=False`` leaves the
        generation (a commit that changes nothing a reader or a saved index can see)."""
        self.parts.check_writable()
        if self.pending or self.parts.catalog is None:
            # A write straight to the catalog sees every acknowledged turn first (and a
            # store without a catalog file gets it).
            self.fold()
        started = time.monotonic()
        c = Commit(self, durable, bump)
        try:
            with c._stack:
                yield c
                c.finish()
        except CommitUncertain:
            raise  # the handle is abandoned; keep the vector bytes: the catalog may use them
        except BaseException:
            if c.wrote_vectors:
                self.parts.segments.rollback()
            raise
        self._apply(c)
        took = time.monotonic() - started
        if took > SLOW_SECONDS:
            log.warning("a commit to %s took %.2f s", self.parts.path, took)

    @contextmanager
    def turn(self) -> Iterator[Commit]:
        """A turn-path commit: the site changes the mirror (``commit.mirror``) and appends the
        turn's record (:meth:`Commit.journal`); no catalog statement runs. A failure before
        the record is appended changes nothing; after it, the handle is abandoned (the next
        open replays the record)."""
        parts = self.parts
        parts.check_writable()
        manifest = parts.manifest
        if manifest.format_version < FORMAT_VERSION and not parts.read_only:
            # An engramdb from before the journal would ignore journaled turns: from the
            # first one on, it refuses the store (FormatTooNew) instead.
            manifest.format_version = FORMAT_VERSION
            manifest.write(parts.path)
        if parts.mirror is None:
            parts.mirror = TurnMirror.load(parts.query_arrow)
        if self._folded_lengths is None:
            self._folded_lengths = parts.segments.committed
        c = Commit(self, False, True, mirror=parts.mirror)
        try:
            yield c
            c.finish()
        except BaseException as exc:
            if c.journaled:
                self.abandon()
                raise CommitUncertain(
                    f"a turn was journaled but could not be applied: {exc}",
                    hint="open the store again: the journal replays the turn") from exc
            if c.wrote_vectors:
                parts.segments.rollback()
            raise
        self._apply(c)

    def fold_due(self, records: int = 0, size: int = 0) -> bool:
        """Whether enough turns wait to fold them: ``journal_fold_turns`` records (or
        ``journal_fold_bytes``); ``journal_only_turns`` (or ``journal_only_bytes``) in a
        store without a catalog. ``records`` more records of ``size`` bytes in all are
        counted as if they were already written (would a write of that much make it due?)."""
        s, journal = self.parts.settings, self.parts.journal
        turns, limit = s.journal_fold_turns, s.journal_fold_bytes
        if self.parts.catalog is None:  # 0: the store wants its catalog now
            turns, limit = min(turns, s.journal_only_turns), min(limit, s.journal_only_bytes)
        return journal.records + records >= turns or journal.size + size >= limit

    def fold_if_due(self) -> None:
        """After a turn and its capacity rule: fold once it is due (:meth:`fold_due`); with
        "fast" durability, sync once ``sync_interval`` has passed. Never inside a turn: the
        capacity rule's commit writes no record of its own, so a fold between the two would
        leave it in no durable place."""
        if self.fold_due():
            self.fold()
        elif self.fast and (time.monotonic() - self.last_sync
                            >= self.parts.settings.sync_interval):
            self.sync()

    def fold(self, *, bulk_rows: int = 0) -> None:
        """Write every journaled turn into the catalog in one commit, then empty the journal.
        Called under the write lock. ``bulk_rows``: the rows of a bulk write about to follow
        (a first fold made for a large one gives the catalog large blocks)."""
        parts = self.parts
        mirror = parts.mirror
        first = parts.catalog is None
        if first:
            parts.segments.write_held()  # the catalog is about to point into the files
            self._make_catalog(bulk_rows)
        elif parts.read_only:
            return  # nothing is ever pending, and the journal file is not ours to empty
        if (mirror is None or not mirror.pending) and not parts.journal.records:
            parts.journal.reset()
            return
        # Records whose turns changed nothing (a replayed removal whose keys a power cut had
        # already dropped) still moved the counters: they are committed before the journal
        # goes, or the next record's number would not follow the catalog's.
        started = time.monotonic()
        if not self.fast or first:
            # The catalog is about to point at these vectors. "fast" too at the first fold:
            # its turns were durable in the journal alone, and an open that found the fold
            # committed but the vectors lost would drop them (the journal already folded).
            parts.segments.sync()
        counters = self.counters
        c = Commit(self, not self.fast, False, folding=True)
        c.segment_lengths = parts.segments.committed
        c.set(clock=counters.clock, next_eid=counters.next_eid, next_seq=counters.next_seq,
              last_turn=counters.last_turn, generation=counters.generation,
              journal_seq=counters.journal_seq)
        new = None
        try:
            with c._stack:
                if mirror is not None:
                    new = mirror.fold(c.con)
                if mirror is not None and mirror.erased:  # last: every row of theirs is in
                    erase_rows(c.con, mirror.erased)
                c.finish()
        except CommitUncertain:
            raise
        except BaseException:
            self.abandon()  # the mirror holds what the catalog refused: reopen replays it
            raise
        self._folded_lengths = None
        turns = parts.journal.records
        if mirror is not None:
            mirror.folded()
        if new is not None:  # their texts are compressed now: the memory keeps those
            parts.hot.compressed(new.eids, new.blobs)
        # "fast": the fold committed without fsyncs, so it is made a sync point before the
        # journal, the only durable copy of synced turns, is emptied.
        self.sync()
        if not parts.read_only:
            parts.journal.reset()
        took = time.monotonic() - started
        (log.warning if took > SLOW_SECONDS else log.debug)(
            "folded %d journaled turns into the catalog of %s in %.3f s", turns, parts.path,
            took)

    def _make_catalog(self, bulk_rows: int = 0) -> None:
        """The first fold of a store made without a catalog file: write an empty catalog
        (the fold then fills it), and record in the manifest that the store has one. A
        read-only handle makes its catalog in its scratch directory instead: the store's
        files are never written. Made for a bulk write of ``bulk_rows`` rows, the catalog gets
        the blocks ``cat.block_size_for`` gives."""
        parts = self.parts
        if parts.read_only:
            assert parts.scratch is not None
            # Built and renamed as in a store: a failure (a full temporary directory) leaves
            # no half catalog for the next read to mistake for damage.
            cat.make_catalog(parts.scratch.path)
            parts.catalog = cat.Catalog(parts.scratch.path / cat.CATALOG_NAME)
            return
        cat.make_catalog(parts.path, cat.block_size_for(bulk_rows))
        parts.manifest.record_catalog(parts.path)
        parts.catalog = cat.Catalog(parts.path / cat.CATALOG_NAME, fast=self.fast)
        # The new catalog's own starting counters are the last sync point: the vectors of
        # every turn folded now are fsynced before the fold commits (Committer.fold).

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A catalog transaction; an uncertain commit abandons this handle.

        With "fast" durability, the first transaction after ``settings.sync_interval``
        seconds first syncs what came before it (the in-memory state matches the catalog).
        """
        catalog = self.parts.catalog
        if self.fast and catalog.pending and (
                time.monotonic() - self.last_sync >= self.parts.settings.sync_interval):
            self.sync()
        try:
            with catalog.transaction() as con:
                yield con
        except CommitUncertain:
            self.abandon()
            raise

    def sync(self) -> None:
        """Make every acknowledged write durable (no-op when nothing is pending): the sync
        point of "fast" durability. Called under the write lock."""
        parts = self.parts
        if not self.fast or parts.read_only:
            return
        parts.journal.sync()
        if parts.catalog is None or not (parts.catalog.pending or parts.segments.dirty):
            # Without a catalog every acknowledged turn lives in the journal, just synced.
            self.last_sync = time.monotonic()
            return
        try:
            parts.segments.sync()  # vectors first: the mark below promises they are on disk
        except StorageError:
            # Linux may drop pages whose writeback failed and call the next fsync clean, so
            # retrying here proves nothing. The reopen checks every engram past the mark.
            self.abandon()
            raise
        try:
            with parts.catalog.durable(), parts.catalog.transaction() as con:
                con.execute("UPDATE counters SET value = (SELECT value FROM counters "
                            "WHERE name = 'next_eid') WHERE name = 'synced_eid'")
        except CommitUncertain:
            self.abandon()
            raise
        self.last_sync = time.monotonic()

    # -- after the commit ---------------------------------------------------------------------

    def _apply(self, c: Commit) -> None:
        """Make an acknowledged commit visible: counters, then derived state, in one order."""
        counters = self.counters
        for name in ("generation", "clock", "next_eid", "next_seq", "last_turn", "journal_seq"):
            if name in c.counters:
                setattr(counters, name, c.counters[name])
        parts = self.parts
        if c.mirror is None and not c.folding and parts.mirror is not None:
            if c.wrote_rows or c.new is not None or not self.derived_ready:
                parts.mirror = None  # a write straight to the catalog: the next turn reloads
            elif c.deleted:  # it erased engrams (and changed counters): the mirror follows
                gone = np.concatenate(c.deleted).tolist()
                parts.mirror.forget_engrams(gone, [parts.hot.payload(e)[0] for e in gone],
                                            c.erased_keys)
        if c.linked:
            parts.has_links = True
        if not self.derived_ready:
            return
        if c.segment_lengths is not None and c.moved is None:
            parts.segments.set_committed(c.segment_lengths)
        if c.new is not None:
            self._apply_new(c.new)
        if c.rehomed:  # before the commit's own rows, which may give them a new one
            parts.context.apply_delete(np.asarray(c.rehomed, np.int64), keep_length=True)
        if c.turns is not None:
            parts.context.apply(*c.turns)
        if c.said_again:
            self._refresh(c.said_again, c.mirror)
        for eids, kinds, expires in c.life:
            parts.hot.set_life(eids, kinds, expires)
        for eids in c.deleted:
            parts.hot.remove(eids)
            parts.lexical.apply_delete(eids)
            parts.context.apply_delete(eids)
        if c.dropped_labels:
            parts.context.drop_labels(c.dropped_labels)
        for eids in c.deleted:
            self.keeper.removed(eids)
        if c.moved is not None:
            self._apply_move(c)
        for fn in c.after:
            fn()

    def _apply_new(self, new: NewEngrams) -> None:
        parts = self.parts
        r = new.rows
        parts.hot.add(r.eids, r.segs, r.rows, r.kinds, r.expires, r.created)
        parts.hot.add_payload(r.eids, r.ids, r.payloads())
        parts.lexical.apply_add(new.lexical_rows)
        self.keeper.added(r.eids, new.vectors)

    def _refresh(self, eids: list[int], mirror: TurnMirror | None) -> None:
        """Reload kind and expiry of engrams said again (their pointers do not change); one
        that had expired lives again in the vector index."""
        parts = self.parts
        if mirror is not None:
            rows = [(e, k, x) for e, k, _, x, _ in mirror.life_rows(eids)]
        else:
            rows = parts.query(
                f"SELECT eid, kind, expires_at FROM engrams WHERE eid IN {in_list(eids)}")
        e = np.array([r[0] for r in rows], np.int64)
        parts.hot.set_life(e, np.array([r[1] for r in rows], np.int8),
                           np.array([NEVER if r[2] is None else r[2] for r in rows], np.float64))
        self.keeper.revive(e)

    def _apply_move(self, c: Commit) -> None:
        parts = self.parts
        segs, eids, new_segs, new_rows = c.moved
        parts.segments.set_committed(c.segment_lengths)
        parts.hot.drop_segments(segs)
        if len(eids):
            hot = parts.hot
            hot.add(eids, new_segs, new_rows, hot.kind[eids], hot.expires[eids],
                    hot.created[eids])
        parts.segments.remove(segs)  # only now: the commit no longer references them


def delete_rows(con: Any, eids: np.ndarray) -> None:
    """Delete engrams with their occurrences, links, BM25 and context rows (their
    forgetting-log rows are written first, by the caller)."""
    ids = eids.tolist()
    con.execute(f"DELETE FROM occurrences WHERE eid IN {_LISTED}", [ids])
    con.execute(f"DELETE FROM edges WHERE a IN {_LISTED} OR b IN {_LISTED}", [ids, ids])
    con.execute(f"DELETE FROM engrams WHERE eid IN {_LISTED}", [ids])
    for sql, params in [*lexical_delete_sql(eids), *context_delete_sql(eids)]:
        con.execute(sql, params)


def erase_rows(con: Any, erased: dict[int, int]) -> None:
    """A fold's part of the erasures journaled turns made (eid -> tick): log the engrams
    as forgotten at their tick and delete their rows, as :meth:`Commit.delete_engrams` does
    in a commit."""
    eids = sorted(erased)
    ticks = pa.table({"eid": pa.array(eids, pa.int64()),
                      "tick": pa.array([erased[e] for e in eids], pa.int64())})
    with cat.registered(con, "erased", ticks) as view:
        con.execute(f"INSERT INTO forgotten SELECT e.eid, e.id, v.tick, 'forgotten', e.kind, "
                    f"false FROM engrams e JOIN {view} v ON e.eid = v.eid")
    delete_rows(con, np.asarray(eids, np.int64))
