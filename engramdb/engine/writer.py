"""The writes: ingest batches, integrate's turn, forget, tick, reinforce, and the lifespan
engine's capacity rule, each one commit through :class:`~engramdb.engine.commit.Committer`.

Every method here runs under the store's write lock, on arguments the front door has
already validated.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from engramdb.content import content_id, is_id
from engramdb.derived.context import TurnContext
from engramdb.derived.hotstate import NEVER
from engramdb.derived.lexical import LexicalIndex, lexical_document
from engramdb.derived.metadata_text import dense_document, embedded_keys
from engramdb.engine import links as lk
from engramdb.engine.commit import Commit, Committer, NewEngrams
from engramdb.engine.keys import KeyedOccurrence, lookup_keys, remove_occurrences
from engramdb.engine.lifespan import (
    apply_reward,
    consolidates,
    effective_kind,
    recall_reward,
)
from engramdb.engine.mirror import OCCURRENCE_SCHEMA, NewEngramRows
from engramdb.engine.parts import Parts
from engramdb.engine.turnlog import MAX_TEXTS, TurnRecord
from engramdb.errors import CorruptStore, EngramError, NotFound
from engramdb.storage import catalog as cat
from engramdb.types import LONG_TERM, SHORT_TERM, IngestResult

# Up to this many rows, an UPDATE names them in a literal IN-list (an index lookup, 0.7 ms at
# 1M engrams) instead of joining a registered Arrow table (a scan, 1.6 ms).
POINT_UPDATE_MAX = 256

log = logging.getLogger(__name__)

# Batches up to this many texts take the turn journal (a record holds at most that many);
# larger ones (bulk loads) commit to the catalog directly, where one statement per table is
# already cheap per row.
JOURNAL_BATCH_MAX = MAX_TEXTS


@dataclass
class Batch:
    """One validated batch of texts to store, with what each occurrence carries."""

    ids: list[str]
    texts: list[str]
    roles: list[str | None]
    sessions: list[str | None]
    metas: list[str | None]
    pins: list[bool]
    vectors: np.ndarray | None  # unit rows given by the caller, or None: encode
    kind: int
    keys: list[str | None] | None = None  # the caller's key of each occurrence


@dataclass
class _Planned:
    """What a batch adds: which ids are new, their eids, and the engram rows."""

    existing: dict[str, int]
    new_first: dict[str, int]  # id -> position in the batch of its first occurrence
    eid_of: dict[str, int]
    new_eids: np.ndarray


class Writer:
    """Applies writes to one open store."""

    def __init__(self, parts: Parts, committer: Committer,
                 encode: Callable[[list[str]], np.ndarray]) -> None:
        self.parts = parts
        self.committer = committer
        self.encode = encode

    # -- lookups ------------------------------------------------------------------------------

    def lookup_ids(self, ids: list[str]) -> dict[str, int]:
        """Map the ids that are stored (alive or expired, not forgotten) to their eids."""
        if not ids:
            return {}
        mirror = self.parts.mirror  # it holds the ids of turns not yet folded
        if mirror is not None:
            return mirror.lookup(ids)
        if len(ids) <= POINT_UPDATE_MAX and all(is_id(i) for i in ids):
            # Literal ids use the index on id (1 ms less per call at 1M engrams than a scan).
            listed = ",".join(f"'{i}'" for i in ids)
            rows = self.parts.query(f"SELECT id, eid FROM engrams WHERE id IN ({listed})")
        else:
            rows = self.parts.query(
                "SELECT id, eid FROM engrams WHERE id IN (SELECT unnest(?::VARCHAR[]))", [ids]
            )
        return {i: int(e) for i, e in rows}

    def live_eids(self, id_list: list[str]) -> list[int]:
        """The eids of live engrams, in the order given (each once); NotFound otherwise."""
        found = self.lookup_ids(sorted(set(id_list)))
        vis = self.parts.hot.visible(self.committer.counters.clock)
        missing = [i for i in id_list if i not in found or not vis[found[i]]]
        if missing:
            raise NotFound(f"no live engram with id {missing[0]}")
        return list(dict.fromkeys(found[i] for i in id_list))

    def previous_turn(self) -> int | None:
        """The eid of the last integrated turn, if it is still stored."""
        eid = self.committer.counters.last_turn
        return eid if self.parts.stored(eid) else None

    # -- ingest -------------------------------------------------------------------------------

    def ingest_batch(
        self, batch: Batch, *, now: int | None = None, hits: list[int] | None = None,
        existing: dict[str, int] | None = None, journal: bool = False,
        before: Callable[[Commit], None] | None = None, removed: list[str] | None = None,
    ) -> list[IngestResult]:
        """Write one batch: vectors first, then one commit.

        ``now`` (integrate) moves the clock to that tick in the same commit; ``hits``
        (integrate) are the recalled engrams' eids: they earn lifespan by rank and the turn
        (``batch.ids[0]``) is linked to them and to the previous turn. ``existing``: the
        batch's stored ids and their eids, when the caller looked them up under the same
        write lock (integrate does; a lookup less per turn). ``journal``: a turn-path write,
        made durable by its journal record and folded into the catalog later. ``before``
        runs in the commit before the batch's rows are written (an upsert removes the
        occurrences it replaces there); ``removed``: the keys whose occurrences it removes,
        for the journal record (replay removes them again).
        """
        parts = self.parts
        if parts.indexer is not None:
            parts.indexer.check()  # before anything is written: a failed indexer refuses
        plan = self._plan(batch, existing)
        vectors = self._new_vectors(batch, plan)
        record = TurnRecord(0, batch.texts, batch.roles, batch.sessions, batch.metas,
                            batch.pins, batch.kind, now, hits, list(plan.new_first.values()),
                            vectors, batch.keys, removed) if journal else None
        return self._write(batch, plan, vectors, now, hits, turn=journal, record=record,
                           before=before)

    def replay(self, record: TurnRecord) -> None:
        """Apply a journaled turn again (on open, after a crash), as it was first applied."""
        if not record.texts:  # a forget(keys=)
            self.forget_keys(self._replayed_removal(record), seq=record.seq)
            return
        fingerprint = self.parts.fingerprint
        batch = Batch([content_id(fingerprint, t) for t in record.texts], record.texts,
                      record.roles, record.sessions, record.metas, record.pins, None,
                      record.kind, record.keys)
        plan = self._plan(batch, None)
        clock = self.committer.counters.clock
        if record.now is not None and record.now != clock + 1:  # integrate moves it by one
            raise CorruptStore(f"turn journal record {record.seq} is for tick {record.now}, "
                               f"the store is at tick {clock}",
                               hint="restore the store from an export or backup")
        if record.hits is not None and any(
                h >= self.committer.counters.next_eid for h in record.hits):
            raise CorruptStore(f"turn journal record {record.seq} names an engram never "
                               "stored", hint="restore the store from an export or backup")
        hits = None if record.hits is None else [
            h for h in record.hits if self.parts.stored(h)]  # a power cut may have lost one
        before = self._replayed_keys(record, set(plan.existing.values()))
        self._write(batch, plan, self._replayed_vectors(record, plan), record.now, hits,
                    turn=True, record=None, seq=record.seq, before=before)
        self.settle_overflow(turn=True)

    def _replayed_removal(self, record: TurnRecord) -> dict[str, KeyedOccurrence]:
        """The occurrences a replayed record removes: what its keys hold now, which is what
        they held when it was written. A key held no more was lost with an unsynced write
        at a power cut in "fast" durability: there is nothing left to remove."""
        found = lookup_keys(self.parts, record.removed or ())
        missing = sorted(set(record.removed or ()) - set(found))
        if missing:
            log.warning("%s: turn journal record %d removes keys %s the store does not hold",
                        self.parts.path, record.seq, missing)
        return found

    def _replayed_keys(self, record: TurnRecord, keep: set[int]
                       ) -> Callable[[Commit], None] | None:
        """What a replayed turn does before its rows. An upsert removes what its keys hold
        (``keep``: the engrams it says again, as when it was written). A key it stores, does
        not remove and finds held is taken from the older occurrence, which stays without
        it: only a power cut in "fast" durability gets there (a catalog commit that removed
        the key, unsynced, was lost; the turn that stored it again was not), and the turn is
        the later write."""
        removed = self._replayed_removal(record)
        held = lookup_keys(self.parts, [k for k in record.keys or ()
                                        if k is not None and k not in (record.removed or ())])
        if not held and not removed:
            return None
        seqs = [o.seq for o in held.values()]
        if held:
            log.warning("%s: turn journal record %d takes keys %s from older occurrences",
                        self.parts.path, record.seq, sorted(held))
        tick = self.committer.counters.clock

        def before(c: Commit) -> None:
            if removed:
                remove_occurrences(c, removed, keep=keep, tick=tick)
            if seqs and c.mirror is not None:  # always: a replayed turn is a turn-path commit
                c.mirror.release_keys(seqs)

        return before

    def _replayed_vectors(self, record: TurnRecord, plan: _Planned) -> np.ndarray:
        """The vectors of the engrams a replayed turn creates: from the record; a text that
        was stored when the turn was written but is not now (its engram lost at a power cut
        in "fast" durability) is encoded again."""
        given = dict(zip(record.rows, record.vectors, strict=True))
        new_idx = list(plan.new_first.values())
        missing = [i for i in new_idx if i not in given]
        if missing:
            try:
                again = self.encode(self._embedded(record.texts, record.metas, missing))
            except EngramError as exc:
                raise CorruptStore(
                    f"turn journal record {record.seq} needs a vector it does not hold and "
                    f"the encoder failed: {exc}", hint="open the store with its encoder") from exc
            given.update(zip(missing, again, strict=True))
        dtype = self.parts.segments.dtype
        if not new_idx:
            return np.zeros((0, self.parts.dim), dtype)
        return np.stack([given[i] for i in new_idx]).astype(dtype)

    def _new_vectors(self, batch: Batch, plan: _Planned) -> np.ndarray:
        """The stored vectors of the batch's new engrams (given, or encoded now)."""
        new_idx = list(plan.new_first.values())
        given = batch.vectors
        if given is not None:  # all new and distinct (a bulk load): no copy
            vecs = given if len(new_idx) == len(given) else given[new_idx]
        elif new_idx:
            vecs = self.encode(self._embedded(batch.texts, batch.metas, new_idx))
        else:
            vecs = np.zeros((0, self.parts.dim), np.float32)
        return vecs.astype(self.parts.segments.dtype)

    def _embedded(self, texts: list[str], metas: list[str | None], idx: list[int]
                  ) -> list[str]:
        """What the encoder embeds for the texts at ``idx``: each text, followed by the
        metadata values the settings embed (``metadata_text.embedded_keys``)."""
        keys = embedded_keys(self.parts.settings)
        return [dense_document(texts[i], metas[i], keys) for i in idx]

    def _write(self, batch: Batch, plan: _Planned, vectors: np.ndarray, now: int | None,
               hits: list[int] | None, *, turn: bool, record: TurnRecord | None,
               seq: int | None = None, before: Callable[[Commit], None] | None = None
               ) -> list[IngestResult]:
        counters = self.committer.counters
        advance = now is not None
        now = counters.clock if now is None else now
        s = self.parts.settings
        life = s.long_term_lifespan if batch.kind == LONG_TERM else s.short_term_lifespan
        hook = None if hits is None else self.turn_hook(batch.ids[0], hits)
        with (self.committer.turn() if turn else self.committer.commit()) as c:
            pointers = c.append_vectors(vectors) if len(vectors) else None
            if record is not None:
                c.journal(record)  # durable from here: replayed if anything below fails
            elif seq is not None:
                c.set(journal_seq=seq)  # a replayed record
            if before is not None:
                before(c)
            lex_rows = None
            if plan.new_first:
                lex_rows = self._add_engrams(c, batch, plan, now, life, vectors, pointers)
            self._add_occurrences(c, batch, plan, now, life, lex_rows)
            c.set(next_eid=counters.next_eid + len(plan.new_first),
                  next_seq=counters.next_seq + len(batch.ids))
            if advance:
                c.set(clock=now)
            if hook is not None:
                hook(c, plan.eid_of, now)
        if seq is not None:
            return []  # a replayed record: nobody waits for its results
        return [IngestResult(id=i, is_new=i not in plan.existing and plan.new_first.get(i) == k)
                for k, i in enumerate(batch.ids)]

    def _plan(self, batch: Batch, existing: dict[str, int] | None) -> _Planned:
        if existing is None:
            existing = self.lookup_ids(sorted(set(batch.ids)))
        # First occurrence in the batch of each new id becomes the engram; the rest are refs.
        new_first: dict[str, int] = {}
        for i, ident in enumerate(batch.ids):
            if ident not in existing and ident not in new_first:
                new_first[ident] = i
        next_eid = self.committer.counters.next_eid
        new_eids = np.arange(next_eid, next_eid + len(new_first), dtype=np.int64)
        eid_of = dict(existing)
        eid_of.update(zip(new_first, range(next_eid, next_eid + len(new_first))))
        return _Planned(existing, new_first, eid_of, new_eids)

    def _add_engrams(self, c: Commit, batch: Batch, plan: _Planned, now: int,
                     life: float, stored: np.ndarray, pointers: Any) -> Any:
        """Insert the new engrams' rows (their vectors are appended); return their BM25
        rows."""
        new_idx = list(plan.new_first.values())
        segs, rows = pointers
        n = len(new_idx)
        pinned = {batch.ids[i] for i in range(len(batch.ids)) if batch.pins[i]}
        kinds = np.full(n, batch.kind, np.int8)
        expires = np.array([NEVER if batch.ids[i] in pinned else now + life for i in new_idx],
                           np.float64)
        ids = [batch.ids[i] for i in new_idx]
        engram_rows = NewEngramRows(
            eids=plan.new_eids, ids=ids, segs=segs, rows=rows,
            vectors=stored, texts=[batch.texts[i] for i in new_idx], kinds=kinds,
            created=np.full(n, now, np.int64), expires=expires,
            pinned=np.array([i in pinned for i in ids], bool))
        lexical = self.parts.lexical
        keys = self.parts.settings.lexical_metadata
        lex_rows = lexical.add_rows(plan.new_eids, [
            lexical_document(batch.texts[i], batch.metas[i], keys) for i in new_idx])
        if c.mirror is not None:
            c.mirror.add_engrams(engram_rows, lex_rows)
        else:
            cat.insert_arrow(c.con, "engrams", engram_rows.table())
            LexicalIndex.insert(c.con, lex_rows)
        c.add_engrams(NewEngrams(engram_rows, lex_rows, stored))
        return lex_rows

    def _add_occurrences(self, c: Commit, batch: Batch, plan: _Planned, now: int,
                         life: float, lex_rows: Any) -> None:
        """Insert the batch's occurrences and context rows; bump and refresh their engrams."""
        ids, eid_of = batch.ids, plan.eid_of
        next_seq = self.committer.counters.next_seq
        n = len(ids)
        occ_columns = {
            "eid": [eid_of[i] for i in ids], "seq": list(range(next_seq, next_seq + n)),
            "role": batch.roles, "session": batch.sessions, "tick": [now] * n,
            "metadata": batch.metas, "key": batch.keys or [None] * n}
        home = [plan.new_first.get(i) == k for k, i in enumerate(ids)]
        if c.rehomed:  # engrams whose first occurrence an upsert removed: this is their first
            first = {eid_of[i]: k for k, i in reversed(list(enumerate(ids)))}
            for eid in c.rehomed:
                if eid in first:
                    home[first[eid]] = True
        context = self.parts.context
        ctx_rows = context.plan(
            [eid_of[i] for i in ids], home, batch.sessions, batch.roles,
            _metadata_dates(batch.metas, home, self.parts.settings.date_key), self.parts.stored)
        existing = plan.existing
        revive = sorted({eid_of[i] for i in ids if i in existing})
        pinned = {ids[i] for i in range(len(ids)) if batch.pins[i]}
        occ_eids = [eid_of[i] for i in ids]
        pin_eids = sorted(existing[i] for i in pinned & set(existing))
        if c.mirror is not None:
            c.mirror.add_occurrences(occ_columns, ctx_rows)
            counted = Counter(occ_eids)  # (cheaper than np.unique for a turn's few)
            c.mirror.bump_refs(np.fromiter(counted, np.int64, len(counted)),
                               np.fromiter(counted.values(), np.int64, len(counted)), now)
            c.mirror.revive(revive, now + life)
            c.mirror.pin(pin_eids)
        else:
            cat.insert_arrow(c.con, "occurrences",
                             pa.table(occ_columns, schema=OCCURRENCE_SCHEMA))
            TurnContext.insert(c.con, ctx_rows)
            _update_for_occurrences(c.con, occ_eids, revive, pin_eids, now, life)
        c.add_turns(ctx_rows, (
            (lex_rows.eids, lex_rows.lens)
            if lex_rows is not None else (np.zeros(0, np.int64), np.zeros(0, np.float32))))
        if revive:
            c.refresh(revive)

    # -- integrate ----------------------------------------------------------------------------

    def turn_hook(self, ident: str, hit_eids: list[int]
                  ) -> Callable[[Commit, dict[str, int], int], None]:
        """The part of integrate's commit after its turn is stored: the recalled memories
        earn lifespan by rank, and the turn is linked to them and to the previous turn."""
        s = self.parts.settings
        prev = self.previous_turn()

        def hook(c: Commit, eid_of: dict[str, int], tick: int) -> None:
            turn = eid_of[ident]
            rewards = {e: recall_reward(r, s) for r, e in enumerate(hit_eids) if e != turn}
            self.reward(c, rewards, tick, count_recall=True)
            pairs = [(turn, e, s.link_gain / (r + 1)) for r, e in enumerate(hit_eids)]
            if prev is not None and prev != turn:
                pairs.append((turn, prev, s.link_gain))
            if lk.strengthen(_edges(c), pairs, tick, s):
                c.link()
            c.set(last_turn=turn)

        return hook

    # -- the lifespan engine ------------------------------------------------------------------

    def reward(self, c: Commit, rewards: dict[int, float], now: int,
               count_recall: bool) -> None:
        """Apply lifespan rewards (:func:`~engramdb.engine.lifespan.apply_reward`) in ``c``."""
        if not rewards:
            return
        if c.mirror is not None:
            rows = c.mirror.life_rows(rewards)
        else:
            rows = c.con.execute(
                "SELECT eid, kind, created_tick, expires_at, earned FROM engrams "
                f"WHERE eid IN {lk.in_list(rewards)}").fetchall()
        eids, kinds, exps, earns = [], [], [], []
        for eid, kind, created, expires, earned in rows:
            k = int(effective_kind(np.array([kind]), np.array([created]), now)[0])
            pinned = expires is None
            k, e, earned = apply_reward(k, NEVER if pinned else expires, earned,
                                        rewards[eid], now, self.parts.settings)
            eids.append(eid)
            kinds.append(k)
            exps.append(None if pinned else e)
            earns.append(earned)
        recalled = 1 if count_recall else 0
        if c.mirror is not None:
            c.mirror.set_life(eids, kinds, exps, earns, recalled, now)
        else:
            _update_rewarded(c.con, eids, kinds, exps, earns, recalled, now)
        c.set_life(np.array(eids, np.int64), np.array(kinds, np.int8),
                   np.array([NEVER if x is None else x for x in exps], np.float64))

    def reinforce(self, id_list: list[str], amount: float) -> None:
        """Reward live engrams and link them pairwise (when the amount is positive)."""
        eids = self.live_eids(id_list)
        now = self.committer.counters.clock
        s = self.parts.settings
        pairs = [(a, b, s.link_gain) for k, a in enumerate(eids)
                 for b in eids[k + 1:]] if amount > 0 else []
        with self.committer.commit() as c:
            self.reward(c, {e: amount for e in eids}, now, count_recall=False)
            if lk.strengthen(_edges(c), pairs, now, s):
                c.link()

    def tick(self, n: int) -> int:
        """Advance the clock by ``n`` ticks; return the new tick."""
        with self.committer.commit() as c:
            c.set(clock=self.committer.counters.clock + n)
        return self.committer.counters.clock

    def forget(self, eids: list[int]) -> None:
        """Erase engrams now (logged as forgotten); gc reclaims their bytes."""
        with self.committer.commit() as c:
            c.delete_engrams(eids, "forgotten", tick=self.committer.counters.clock)

    def forget_keys(self, found: dict[str, KeyedOccurrence], *, journal: bool = False,
                    seq: int | None = None) -> None:
        """Remove the occurrences these keys name (``forget(keys=)``): a turn when
        ``journal`` (one record naming the keys) or when replaying record ``seq``, else one
        catalog commit. An engram left without occurrences is erased as :meth:`forget`
        erases."""
        tick = self.committer.counters.clock
        turn = journal or seq is not None
        with (self.committer.turn() if turn else self.committer.commit()) as c:
            if journal:
                c.journal(TurnRecord(0, [], [], [], [], [], SHORT_TERM, None, None, [],
                                     np.zeros((0, self.parts.dim), self.parts.segments.dtype),
                                     None, sorted(found)))
            elif seq is not None:
                c.set(journal_seq=seq)
            remove_occurrences(c, found, keep=(), tick=tick)

    def settle_overflow(self, *, turn: bool = False) -> None:
        """Apply the short-term capacity rule (docs/lifespan.md) after a write.

        When more than ``short_term_capacity`` engrams are short-term (or working), the
        excess with the soonest expiry is settled by :func:`~engramdb.engine.lifespan.
        consolidates`: consolidated into long-term memory, or dead now.
        """
        parts, s = self.parts, self.parts.settings
        cap = s.short_term_capacity
        if cap <= 0:
            return
        hot = parts.hot
        now = self.committer.counters.clock
        eff = effective_kind(hot.kind, hot.created, now)
        # A pinned engram never dies (its expiry is NEVER): the rule does not count it.
        short = np.nonzero(hot.visible(now) & (eff != LONG_TERM)
                           & ~np.isinf(hot.expires[:len(eff)]))[0]
        excess = len(short) - cap
        if excess <= 0:
            return
        victims = short[np.argsort(hot.expires[short], kind="stable")[:excess]]
        mirror = parts.mirror if turn else None
        if mirror is not None:
            earned = {e: float(mirror.earned[e]) for e in victims.tolist()}
        else:
            rows = parts.query(
                f"SELECT eid, earned FROM engrams WHERE eid IN {lk.in_list(victims)}")
            earned = {int(e): float(x) for e, x in rows}
        keep = [e for e in victims if consolidates(earned.get(int(e), 0.0), s)]
        die = [e for e in victims if not consolidates(earned.get(int(e), 0.0), s)]
        until = now + s.long_term_lifespan
        if mirror is not None:
            with self.committer.turn() as c:
                k, d = np.array(keep, np.int64), np.array(die, np.int64)
                life = np.maximum(hot.expires[k], until)
                c.mirror.set_life(k.tolist(), [LONG_TERM] * len(k), _nullable(life))
                c.mirror.set_life(d.tolist(), hot.kind[d].tolist(), [float(now)] * len(d))
                c.set_life(k, np.full(len(k), LONG_TERM, np.int8), life)
                c.set_life(d, hot.kind[d], np.full(len(d), float(now)))
            return
        with self.committer.commit() as c:
            if keep:
                c.con.execute(f"UPDATE engrams SET kind = {LONG_TERM}, expires_at = greatest("
                              f"expires_at, ?) WHERE eid IN {lk.in_list(keep)}", [until])
                k = np.array(keep, np.int64)
                c.set_life(k, np.full(len(k), LONG_TERM, np.int8),
                           np.maximum(hot.expires[k], until))
            if die:
                c.con.execute(
                    f"UPDATE engrams SET expires_at = ? WHERE eid IN {lk.in_list(die)}", [now])
                d = np.array(die, np.int64)
                c.set_life(d, hot.kind[d], np.full(len(d), float(now)))


# -- helpers ------------------------------------------------------------------------------------


def _edges(c: Commit) -> Any:
    """The edge table a commit writes: the turn path's mirror, or the catalog's."""
    return c.mirror if c.mirror is not None else lk.SqlEdges(c.con)


def _nullable(expires: np.ndarray) -> list[float | None]:
    return [None if np.isinf(x) else float(x) for x in expires.tolist()]


def _metadata_dates(metas: list[str | None], home: list[bool], key: str) -> list[Any]:
    """The ``key`` value of each home occurrence's metadata (None elsewhere)."""
    out: list[Any] = []
    for meta, first in zip(metas, home, strict=True):
        value = None
        if first and meta is not None and key:
            decoded = json.loads(meta)
            if isinstance(decoded, dict):
                value = decoded.get(key)
        out.append(value)
    return out


def _update_rewarded(con: Any, eids: list[int], kinds: list[int], exps: list[Any],
                     earns: list[float], recalled: int, now: int) -> None:
    """Write rewarded engrams' kind, expiry and earnings; count a recall if ``recalled``."""
    if len(eids) <= POINT_UPDATE_MAX:
        def case(values: Sequence[Any], fmt: Callable[[Any], str]) -> str:
            return "CASE eid " + " ".join(
                f"WHEN {e} THEN {'NULL' if v is None else fmt(v)}"
                for e, v in zip(eids, values)) + " END"

        real = lambda v: repr(float(v))  # noqa: E731 - exact round trip of a double
        con.execute(
            f"UPDATE engrams SET kind = {case(kinds, lambda v: str(int(v)))}, "
            f"expires_at = {case(exps, real)}, earned = {case(earns, real)}, "
            "recalls = recalls + ?, last_tick = ? "
            f"WHERE eid IN {lk.in_list(eids)}",
            [recalled, now],
        )
        return
    table = pa.table({
        "eid": pa.array(eids, pa.int64()), "kind": pa.array(kinds, pa.int8()),
        "expires_at": pa.array(exps, pa.float64()), "earned": pa.array(earns, pa.float64()),
    })
    with cat.registered(con, "rewards", table) as view:
        con.execute(
            f"UPDATE engrams SET kind = v.kind, expires_at = v.expires_at, "
            f"earned = v.earned, recalls = recalls + ?, last_tick = ? FROM {view} v "
            "WHERE engrams.eid = v.eid",
            [recalled, now],
        )


def _update_for_occurrences(con: Any, occ_eids: list[int], revive: list[int],
                            pin_eids: list[int], now: int, life: float) -> None:
    """Bump refs of every engram that got occurrences; refresh content said again."""
    touched, counts = np.unique(np.asarray(occ_eids, np.int64), return_counts=True)
    if len(touched) <= POINT_UPDATE_MAX:
        cases = " ".join(f"WHEN {int(e)} THEN {int(c)}" for e, c in zip(touched, counts))
        con.execute(f"UPDATE engrams SET refs = refs + CASE eid {cases} END, last_tick = ? "
                    f"WHERE eid IN {lk.in_list(touched)}", [now])
    else:
        bumps = pa.table({"eid": touched, "n": counts.astype(np.int64)})
        with cat.registered(con, "bumps", bumps) as view:
            con.execute(f"UPDATE engrams SET refs = refs + b.n, last_tick = ? FROM {view} b "
                        "WHERE engrams.eid = b.eid", [now])
    if revive:
        # Content said again lives at least another full lifespan from now; a long-term
        # engram keeps its (longer) expiry and its kind.
        con.execute(
            "UPDATE engrams SET expires_at = greatest(expires_at, ?) "
            "WHERE eid IN (SELECT unnest(?::BIGINT[])) AND expires_at IS NOT NULL",
            [now + life, revive],
        )
    if pin_eids:
        con.execute("UPDATE engrams SET pinned = true, expires_at = NULL "
                    "WHERE eid IN (SELECT unnest(?::BIGINT[]))", [pin_eids])
