"""Conversation structure of the engrams: session, previous and next turn, speaker and date.

Recall needs more than a lone turn's words (``docs/recall.md``, ``engramdb/recall/hybrid.py``): the
answer to a question often sits in the turn *after* the one that matches it, a topic lives in
a session, a question names a speaker or a date. This module keeps, per engram, where it was
first said (its *home* occurrence: the first occurrence of its content):

- ``session``: the session's label code (-1: said outside any session);
- ``prev``: the engram said just before it in that session (-1: it opened the session), and
  ``next``, its inverse (the smallest eid whose ``prev`` it is);
- ``role``: the label code of who said it (the speaker prior matches names in a question);
- ``day``: the date of the occurrence (``Settings.date_key`` in its metadata), as an ordinal;
- per session, the summed token count of its turns (BM25 over a session as one document).

Persistence follows the lexical index: the catalog tables (their DDL is storage's:
:data:`engramdb.storage.schema.CONTEXT_TABLES`) ``turns`` (one row per engram whose home
occurrence has a session, role or date) and ``labels`` (label strings and their codes; for
a session also the engram said last in it) are written in the engram's transaction
(:meth:`TurnContext.plan` then :meth:`TurnContext.insert`), and memory follows after the commit
(:meth:`TurnContext.apply`). Recall reads only memory. A store without the tables (written by an
older version, or just imported) derives them from its occurrences (:meth:`TurnContext.derive`).

Only content's home occurrence carries context: "Thanks!" said in ten sessions is one engram
whose context is where it was first said. A link to an engram that is forgotten or dead simply
drops out (recall checks that the neighbour is visible); links are never re-pointed past it,
so memory, the catalog and a reopened store agree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from engramdb.derived.hotstate import grow_array, grown_capacity
from engramdb.derived.temporal import parse_day

__all__ = ["ContextRows", "TurnContext"]

_TURNS_SCHEMA = pa.schema([("eid", pa.int64()), ("prev", pa.int64()), ("session", pa.int32()),
                           ("role", pa.int32()), ("day", pa.int32())])
_NO_ROLES: frozenset[int] = frozenset()
_LABELS_SCHEMA = pa.schema([("code", pa.int32()), ("label", pa.string()), ("last", pa.int64())])


@dataclass(frozen=True)
class ContextRows:
    """The catalog rows one write adds, as columns (None where absent): ``turns`` (eid, prev,
    session, role, day) and ``labels`` (code, label, last): new labels and sessions whose
    last turn changed. Insert both in the write's transaction, then pass this to
    :meth:`TurnContext.apply`. A chat turn's one row is kept as lists: Arrow tables are
    built only for the catalog (:attr:`turns`, :attr:`labels`)."""

    turn_columns: tuple[list[int], list[int | None], list[int | None], list[int | None],
                        list[int | None]]
    label_columns: tuple[list[int], list[str], list[int | None]]

    @classmethod
    def concat(cls, parts: Sequence[ContextRows]) -> ContextRows:
        """The rows of several writes, in order."""
        return cls(tuple([v for p in parts for v in p.turn_columns[k]] for k in range(5)),
                   tuple([v for p in parts for v in p.label_columns[k]] for k in range(3)))

    def without(self, eids: set[int]) -> ContextRows:
        """These rows less the turn rows of ``eids``."""
        keep = [k for k, e in enumerate(self.turn_columns[0]) if e not in eids]
        return ContextRows(tuple([col[k] for k in keep] for col in self.turn_columns),
                           self.label_columns)

    @property
    def turn_count(self) -> int:
        """How many turn rows there are."""
        return len(self.turn_columns[0])

    @property
    def turns(self) -> pa.Table:
        """The ``turns`` rows as an Arrow table."""
        return pa.Table.from_arrays([pa.array(c, f.type) for c, f in
                                     zip(self.turn_columns, _TURNS_SCHEMA, strict=True)],
                                    schema=_TURNS_SCHEMA)

    @property
    def labels(self) -> pa.Table:
        """The ``labels`` rows as an Arrow table."""
        return pa.Table.from_arrays([pa.array(c, f.type) for c, f in
                                     zip(self.label_columns, _LABELS_SCHEMA, strict=True)],
                                    schema=_LABELS_SCHEMA)


class TurnContext:
    """Per-eid context arrays (``prev``, ``next``, ``session``, ``role``, ``day``) in memory."""

    def __init__(self, tokenizer: Callable[[str], list[str]]) -> None:
        """An empty structure; ``tokenizer`` splits role labels into the words a query uses."""
        self.tokenizer = tokenizer
        self.capacity = 0
        self.prev = np.zeros(0, np.int64)
        self.next = np.zeros(0, np.int64)
        self.session = np.zeros(0, np.int32)
        self.role = np.zeros(0, np.int32)
        self.day = np.zeros(0, np.int32)
        self.length = np.zeros(0, np.float32)  # token count of each engram (BM25 length)
        self.codes: dict[str, int] = {}  # label -> code
        self.label_of: dict[int, str] = {}  # code -> label
        self.last: dict[int, int] = {}  # session code -> eid of the occurrence said last in it
        self.session_len = np.zeros(0, np.float64)  # per code: summed length of its turns
        self.session_turns = np.zeros(0, np.int64)  # per code: its turns
        self.role_turns = np.zeros(0, np.int64)  # per code: the turns said in that role
        # (k1, b, sessions with turns, BM25 length norm per code, _sessions_version it was
        # computed at): kept while the sessions stand.
        self._session_norm: tuple[float, float, int, np.ndarray, int] | None = None
        self._sessions_version = 0  # bumped after every change to the session arrays
        self.role_words: dict[str, set[int]] = {}  # a word of a role label -> role codes
        self._next_code = 0

    # ---------------------------------------------------------------------------- catalog
    @staticmethod
    def insert(con: duckdb.DuckDBPyConnection, rows: ContextRows) -> None:
        """Write ``rows`` through ``con`` inside the caller's transaction."""
        if rows.turn_count:
            con.register("_ctx_turns", rows.turns)
            try:
                con.execute("INSERT INTO turns SELECT eid, prev, session, role, day "
                            "FROM _ctx_turns")
            finally:
                con.unregister("_ctx_turns")
        if rows.label_columns[0]:
            con.register("_ctx_labels", rows.labels)
            try:
                con.execute("DELETE FROM labels USING _ctx_labels v WHERE labels.code = v.code")
                con.execute("INSERT INTO labels SELECT code, label, last FROM _ctx_labels")
            finally:
                con.unregister("_ctx_labels")

    # ------------------------------------------------------------------------- writes
    def plan(
        self,
        eids: Sequence[int],
        home: Sequence[bool],
        sessions: Sequence[str | None],
        roles: Sequence[str | None],
        dates: Sequence[Any],
        alive: Callable[[int], bool],
    ) -> ContextRows:
        """The rows for a batch of occurrences in the order they were said; memory unchanged.

        ``eids[k]`` is the engram of occurrence ``k``; ``home[k]`` says it is that engram's
        first occurrence (a new engram); ``dates[k]`` is its metadata date value (or None);
        ``alive(eid)`` says whether an engram said before is still stored (a forgotten one is
        not linked to).
        """
        codes: dict[str, int] = {}
        next_code = self._next_code
        last: dict[int, int] = {}
        new_labels: dict[int, str] = {}
        batch = set()
        t_eid: list[int] = []
        t_prev: list[int | None] = []
        t_sess: list[int | None] = []
        t_role: list[int | None] = []
        t_day: list[int | None] = []

        def code_of(label: str) -> int:
            nonlocal next_code
            code = self.codes.get(label, codes.get(label))
            if code is None:
                code = codes[label] = next_code
                new_labels[code] = label
                next_code += 1
            return code

        for eid, first, session, role, date in zip(eids, home, sessions, roles, dates,
                                                   strict=True):
            eid = int(eid)
            s = code_of(session) if session is not None else None
            prev = None
            if s is not None:
                p = last[s] if s in last else self.last.get(s, -1)
                if p >= 0 and (p in batch or alive(p)) and p != eid:
                    prev = p
                last[s] = eid
            if first:
                batch.add(eid)
                r = code_of(role) if role is not None else None
                day = parse_day(date)
                if s is not None or r is not None or day is not None:
                    t_eid.append(eid)
                    t_prev.append(prev)
                    t_sess.append(s)
                    t_role.append(r)
                    t_day.append(day)
        label_of = {**self.label_of, **new_labels} if new_labels else self.label_of
        changed = sorted(set(new_labels) | set(last))
        return ContextRows(
            (t_eid, t_prev, t_sess, t_role, t_day),
            (changed, [label_of[c] for c in changed],
             [last.get(c, self.last.get(c)) for c in changed]))

    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        cap = grown_capacity(need, self.capacity)

        def grown(arr: np.ndarray, fill: object) -> np.ndarray:
            return grow_array(arr, cap, fill)

        self.prev = grown(self.prev, -1)
        self.next = grown(self.next, -1)
        self.session = grown(self.session, -1)
        self.role = grown(self.role, -1)
        self.day = grown(self.day, -1)
        self.length = grown(self.length, 0.0)
        self.capacity = cap

    def _grow_codes(self, need: int) -> None:
        if need > len(self.session_len):
            size = max(need, 2 * len(self.session_len), 64)
            for name in ("session_len", "session_turns", "role_turns"):
                old = getattr(self, name)
                new = np.zeros(size, old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)
            self._sessions_changed()

    def _add_label(self, code: int, label: str) -> None:
        self.codes[label] = code
        self.label_of[code] = label
        self._next_code = max(self._next_code, code + 1)
        for word in set(self.tokenizer(label)):
            self.role_words.setdefault(word, set()).add(code)

    def apply(self, rows: ContextRows, lengths: tuple[np.ndarray, np.ndarray]) -> None:
        """Make committed ``rows`` visible in memory; ``lengths`` are the (eids, token counts)
        of the write's new engrams (from its lexical rows)."""
        for code, label, last in zip(*rows.label_columns, strict=True):
            if label not in self.codes:
                self._add_label(int(code), label)
            if last is not None:
                self.last[int(code)] = int(last)
        self._grow_codes(self._next_code)
        len_eids, lens = lengths
        if len(len_eids):
            self._grow(int(np.max(len_eids)) + 1)
            self.length[len_eids] = lens
        if not rows.turn_count:
            return
        eids = np.array(rows.turn_columns[0], np.int64)
        self._grow(int(eids.max()) + 1)
        self._set(eids, *rows.turn_columns[1:])  # (None reads as NaN: no link, no label)

    def _set(self, eids: np.ndarray, prev: Any, session: Any, role: Any, day: Any) -> None:
        """Record context rows (nulls arrive as NaN or None) and the links they imply."""
        def ints(values: Any, dtype: type) -> np.ndarray:
            arr = np.asarray(values, np.float64) if len(values) else np.zeros(0)
            return np.where(np.isnan(arr), -1, arr).astype(dtype)

        prev_i = ints(prev, np.int64)
        sess_i = ints(session, np.int32)
        role_i = ints(role, np.int32)
        self.prev[eids] = prev_i
        self.session[eids] = sess_i
        self.role[eids] = role_i
        self.day[eids] = ints(day, np.int32)
        has_role = role_i >= 0
        if has_role.any():
            self._grow_codes(int(role_i.max()) + 1)
            np.add.at(self.role_turns, role_i[has_role], 1)
        linked = (prev_i >= 0) & (prev_i < self.capacity)
        if linked.any():
            self._link_next(prev_i[linked], eids[linked].astype(np.int64))
        has = sess_i >= 0
        if has.any():
            self._grow_codes(int(sess_i.max()) + 1)
            np.add.at(self.session_len, sess_i[has], self.length[eids[has]].astype(np.float64))
            np.add.at(self.session_turns, sess_i[has], 1)
            self._sessions_changed()

    def _link_next(self, parents: np.ndarray, children: np.ndarray) -> None:
        """Set ``next`` of each parent to its smallest child (keeping a smaller one it has)."""
        order = np.lexsort((children, parents))
        p, c = parents[order], children[order]
        first = np.ones(len(p), bool)
        first[1:] = p[1:] != p[:-1]
        p, c = p[first], c[first]
        cur = self.next[p]
        self.next[p] = np.where((cur >= 0) & (cur < c), cur, c)

    def apply_delete(self, eids: np.ndarray, *, keep_length: bool = False) -> None:
        """Forget the context of removed engrams (after the commit that deleted their rows);
        ``keep_length``: the engrams stay (only their context row went), so their BM25
        length is kept for a context row they may get again."""
        eids = np.asarray(eids, np.int64)
        eids = eids[eids < self.capacity]
        if len(eids) == 0:
            return
        sess = self.session[eids]
        has = sess >= 0
        if has.any():
            np.subtract.at(self.session_len, sess[has], self.length[eids[has]].astype(np.float64))
            np.subtract.at(self.session_turns, sess[has], 1)
            self._sessions_changed()
        roles = self.role[eids]
        roles = roles[(roles >= 0) & (roles < len(self.role_turns))]
        if len(roles):
            np.subtract.at(self.role_turns, roles, 1)
        parents = self.prev[eids]
        orphaned = parents[(parents >= 0) & (parents < self.capacity)]
        orphaned = np.unique(orphaned[np.isin(self.next[orphaned], eids)])
        # Their own ``next`` stays: a reopen derives it from the rows of their followers,
        # which still name them (recall never reads it: they are not visible).
        for name, fill in (("prev", -1), ("session", -1), ("role", -1), ("day", -1),
                           ("length", 0.0)):
            if name != "length" or not keep_length:
                getattr(self, name)[eids] = fill
        if len(orphaned):
            # Their next was removed: the next smallest child (if any) takes its place, as a
            # reopen that reads the remaining rows would find.
            self.next[orphaned] = -1
            children = np.flatnonzero(np.isin(self.prev, orphaned))
            if len(children):
                self._link_next(self.prev[children], children.astype(np.int64))

    def drop_labels(self, codes: Sequence[int]) -> None:
        """Forget labels that gc removed (no occurrence uses them)."""
        gone = set(int(c) for c in codes)
        if not gone:
            return
        for code in gone:
            label = self.label_of.pop(code, None)
            if label is not None:
                self.codes.pop(label, None)
        for code in gone:
            self.last.pop(code, None)
        for word in list(self.role_words):
            self.role_words[word] -= gone
            if not self.role_words[word]:
                del self.role_words[word]

    # --------------------------------------------------------------------------- open
    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection, tokenizer: Callable[[str], list[str]],
             lengths: tuple[np.ndarray, np.ndarray]) -> TurnContext:
        """Build the structure from the ``turns`` and ``labels`` tables (one scan each) and
        the engrams' token counts ``lengths`` = (eids, counts)."""
        ctx = cls(tokenizer)
        labels = con.sql("SELECT code, label, last FROM labels ORDER BY code").fetchall()
        for code, label, last in labels:
            ctx._add_label(int(code), label)
            if last is not None:
                ctx.last[int(code)] = int(last)
        ctx._grow_codes(ctx._next_code)
        len_eids, lens = lengths
        turns = con.sql("SELECT eid, prev, session, role, day FROM turns").to_arrow_table()
        t_eids = turns.column("eid").to_numpy()
        top = max(int(len_eids.max()) + 1 if len(len_eids) else 0,
                  int(t_eids.max()) + 1 if len(t_eids) else 0)
        ctx._grow(top)
        if len(len_eids):
            ctx.length[len_eids] = lens
        if turns.num_rows:
            ctx._set(t_eids,
                     *(turns.column(c).to_numpy(zero_copy_only=False)
                       for c in ("prev", "session", "role", "day")))
        return ctx

    def derive(self, con: duckdb.DuckDBPyConnection, date_key: str) -> ContextRows:
        """Rows for every stored engram, computed from the occurrences (for a store that
        lacks them). Call on an empty structure; memory is unchanged."""
        path = "$." + json.dumps(date_key)
        rows = con.execute(
            "SELECT eid, session, role, json_extract_string(metadata, ?) FROM occurrences "
            "ORDER BY seq", [path]).fetchall()
        seen: set[int] = set()
        home = []
        for r in rows:
            home.append(r[0] not in seen)
            seen.add(r[0])
        return self.plan([r[0] for r in rows], home, [r[1] for r in rows],
                         [r[2] for r in rows], [r[3] for r in rows], lambda _: True)

    # --------------------------------------------------------------------------- recall
    def named_roles(self, query_terms: Sequence[str]) -> set[int]:
        """Role codes with a word that the query uses (its speaker is named in it)."""
        out: set[int] = set()
        for term in set(query_terms):
            out |= self.role_words.get(term, _NO_ROLES)
        return out

    def role_codes(self, term: str) -> list[int]:
        """The codes of the roles whose label holds the query term ``term`` (as the
        tokenizer splits labels) and that some stored turn was said in; a session's label is
        no role, nor is a role whose turns are all gone."""
        codes = self.role_words.get(term)
        if not codes or not self.capacity:
            return []
        turns = self.role_turns
        return [c for c in codes if c < len(turns) and turns[c] > 0]

    def said_in(self, eids: np.ndarray, codes: Sequence[int]) -> np.ndarray:
        """Which of ``eids`` (non-negative) were said in one of the roles ``codes`` (non-
        empty)."""
        cap = self.capacity
        if len(eids) == 0 or not cap:
            return np.zeros(len(eids), bool)
        if int(eids.max()) < cap:
            roles = self.role[eids]
        else:  # (-1, no role, never equals a code)
            roles = np.where(eids < cap, self.role[np.minimum(eids, cap - 1)], -1)
        held = roles == codes[0]
        for c in codes[1:]:
            held |= roles == c
        return held

    def neighbour(self, eids: np.ndarray, visible: np.ndarray, link: np.ndarray, *,
                  ascending: bool = False) -> np.ndarray:
        """``link`` (:attr:`prev` or :attr:`next`) of each eid (non-negative; ``ascending``
        says they are sorted); -1 where there is none or it is not ``visible``."""
        if len(eids) == 0:
            return np.zeros(0, np.int64)
        if int(eids[-1] if ascending else eids.max()) < self.capacity:
            x = link[eids]
        else:
            inside = eids < self.capacity
            x = np.where(inside, link[np.where(inside, eids, 0)], -1)
        if len(visible) == 0:
            return np.full(len(eids), -1, np.int64)
        if self.capacity <= len(visible):  # every link is below capacity
            ok = visible[x]  # -1 (no link) reads the last entry: cleared below
            ok &= x >= 0
        else:
            ok = (x >= 0) & (x < len(visible))
            ok &= visible[np.where(ok, x, 0)]
        return np.where(ok, x, -1)

    def session_scores(self, eids: np.ndarray, tfs: np.ndarray, counts: Sequence[int],
                       visible: np.ndarray, k1: float, b: float,
                       term: np.ndarray) -> np.ndarray:
        """BM25 of each session (indexed by code) as one document made of its turns.

        ``eids``/``tfs`` are the query terms' postings over the engrams, term after term,
        ``counts[t]`` of them for term ``t`` (:class:`engramdb.derived.lexical.QueryPostings`,
        slots mapped to eids); ``term`` is the term of each posting (``counts`` spelled out).
        A session's term frequency is the sum over its visible turns. All terms are gathered
        in one ``bincount`` over term x session; each session's sum runs term after term, as a
        loop over the terms would.
        """
        n_codes = len(self.session_len)
        n, norm = self._session_lengths(k1, b)
        if n == 0 or not counts:
            return np.zeros(n_codes, np.float64)
        if len(eids) and int(eids.max()) >= min(self.capacity, len(visible)):
            ok = eids < min(self.capacity, len(visible))
            eids, term, tfs = eids[ok], term[ok], tfs[ok]
        sess = self.session[eids]
        keep = visible[eids]
        # A session code added by a write since n_codes and norm were read (recall takes no
        # lock) has no place in either: that turn lends no session score to this recall. (As
        # unsigned, no session (-1) is past every code too: one comparison for both.)
        keep &= sess.view(np.uint32) < min(n_codes, len(norm))
        key = term[keep] * n_codes + sess[keep]
        # (bincount sums its weights in float64: the float32 term frequencies are cast exactly.)
        tf = np.bincount(key, tfs[keep], minlength=len(counts) * n_codes)
        nz = tf.nonzero()[0]
        tf_nz = tf[nz]
        rows, cols = np.divmod(nz, n_codes)
        df = np.bincount(rows, minlength=len(counts)).tolist()
        idf = np.array([math.log1p((n - d + 0.5) / (d + 0.5)) for d in df])
        # bincount adds each session's terms in term order, from 0: as a loop over terms would.
        return np.bincount(cols, idf[rows] * tf_nz * (k1 + 1.0) / (tf_nz + norm[cols]),
                           minlength=n_codes)

    def _session_lengths(self, k1: float, b: float) -> tuple[int, np.ndarray]:
        """(sessions with turns, BM25 length norm ``k1 (1 - b + b len / avglen)`` per code),
        kept until a write changes the sessions."""
        version = self._sessions_version
        cached = self._session_norm
        if cached is not None and cached[:2] == (k1, b) and cached[4] == version:
            return cached[2], cached[3]
        n = int(np.count_nonzero(self.session_turns > 0))
        avglen = max(float(self.session_len.sum()) / n, 1e-9) if n else 1.0
        norm = k1 * (1.0 - b + b * self.session_len / avglen)
        # Kept with the version it was read at: had a write landed while we read (recall
        # takes no lock), the version moved on and the next recall computes it again.
        self._session_norm = (k1, b, n, norm, version)
        return n, norm

    def _sessions_changed(self) -> None:
        """Writers call this after changing the session arrays (never before: a recall
        reading in between would cache the old values under the new version)."""
        self._sessions_version += 1
        self._session_norm = None
