"""Loading the BM25 index and the conversation context from the catalog, or deriving them.

Both are derived from the engrams' texts and occurrences: a store written without them
(imported, or by an older engramdb), or with another tokenizer, is repaired here rather than
refused. The BM25 index also has a snapshot file that close() leaves for the next open; it
is read and replaced only as a regular file (a link there is refused: CorruptStore).
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb

from engramdb.content import decompress_text
from engramdb.derived.context import TurnContext
from engramdb.derived.lexical import TOKENIZER_ID, LexicalIndex, lexical_document
from engramdb.engine.commit import Committer
from engramdb.engine.parts import Parts
from engramdb.errors import CorruptStore, EngramError, StorageError
from engramdb.storage.fsio import check_regular
from engramdb.storage.schema import CONTEXT_TABLES, LEXICAL_TABLES

log = logging.getLogger(__name__)
# BM25 postings as of the last close (derived; see load_lexical).
LEXICAL_SNAPSHOT = "lexical.snapshot"


class DerivedLoader:
    """Loads (or derives) the BM25 index and the conversation context of one store."""

    def __init__(self, parts: Parts, committer: Committer, recovered: list[str]) -> None:
        self.parts = parts
        self.committer = committer
        self.recovered = recovered
        self.lexical_saved: int | None = None  # generation of lexical.snapshot, if current

    @property
    def snapshot_path(self) -> Path:
        """Where the BM25 snapshot lives."""
        return self.parts.path / LEXICAL_SNAPSHOT

    def load_lexical(self) -> LexicalIndex:
        """Load the BM25 index; rebuild its tables from the engram texts if they disagree.

        The tables stay the truth, but reading them costs a sort of every posting (4 s at 1M
        engrams), so close() leaves a snapshot of the in-memory index (``lexical.snapshot``,
        :meth:`LexicalIndex.save_snapshot`). It is used only if it was written at the
        catalog's current generation, with this tokenizer, and holds as many documents,
        postings, eids and tokens as the tables; anything else (a crash, a damaged file)
        falls back to them.
        """
        parts = self.parts
        con = parts.catalog.con
        try:
            for statement in () if parts.read_only else LEXICAL_TABLES:
                con.execute(statement)
        except duckdb.Error as exc:  # a failed write; never a raw DuckDB error
            raise StorageError(f"cannot create the lexical tables: {exc}") from exc
        self.lexical_saved = None
        docs, engrams, eid_sum, len_sum, postings = parts.query(
            "SELECT (SELECT count(*) FROM lex_docs), (SELECT count(*) FROM engrams), "
            "(SELECT coalesce(sum(eid), 0) FROM lex_docs), "
            "(SELECT coalesce(sum(len), 0) FROM lex_docs), (SELECT count(*) FROM lex_postings)"
        )[0]
        if docs == engrams:
            lex = self._snapshot({"docs": docs, "postings": postings,
                                  "eid_sum": int(eid_sum), "len_sum": int(len_sum)})
            if lex is not None:
                return lex
        stale = docs != engrams or parts.query(
            "SELECT count(*) FROM engrams e ANTI JOIN lex_docs d ON d.eid = e.eid")[0][0]
        if stale:
            parts.check_writable("rebuilding the lexical index (a writable open does it)")
            count = self._rederive_lexical()
            self.recovered.append(f"rebuilt the lexical index of {count} engrams")
        try:
            return LexicalIndex.load(con)
        except duckdb.Error as exc:
            raise CorruptStore(f"lexical index tables are unreadable: {exc}") from exc

    def reindex_lexical(self) -> None:
        """Index every engram's words again, as ``Settings.lexical_metadata`` now names
        them (an open that changed it: the stored documents were made with other keys)."""
        count = self._rederive_lexical()
        self.parts.lexical = LexicalIndex.load(self.parts.catalog.con)
        self.parts.context = self.load_context()  # it holds the documents' lengths too
        log.info("%s: re-indexed the words of %d engrams for lexical_metadata=%r",
                 self.parts.path, count, self.parts.settings.lexical_metadata)

    def _rederive_lexical(self) -> int:
        self.snapshot_path.unlink(missing_ok=True)
        lex = LexicalIndex()
        keys = self.parts.settings.lexical_metadata
        if keys:  # each engram's words: its text and its earliest occurrence's named values
            rows = self.parts.query(
                "SELECT e.eid, e.text, o.metadata FROM engrams e LEFT JOIN (SELECT eid, "
                "metadata FROM occurrences QUALIFY row_number() OVER (PARTITION BY eid "
                "ORDER BY seq) = 1) o ON o.eid = e.eid ORDER BY e.eid")
        else:
            rows = self.parts.query("SELECT eid, text, NULL FROM engrams ORDER BY eid")
        batch = lex.add_rows([r[0] for r in rows], [
            lexical_document(decompress_text(r[1]), r[2], keys) for r in rows])
        with self.committer.commit(bump=False) as c:
            c.con.execute("DELETE FROM lex_postings")
            c.con.execute("DELETE FROM lex_docs")
            LexicalIndex.insert(c.con, batch)
        return len(rows)

    def _snapshot(self, tables: dict[str, int]) -> LexicalIndex | None:
        """The BM25 index from ``lexical.snapshot`` if it matches the catalog (``tables``:
        what ``lex_docs``/``lex_postings`` hold), else None; a stale or damaged file is
        removed."""
        snap = self.snapshot_path
        if not check_regular(snap):  # never read through a link (nor wait on a FIFO)
            return None
        try:
            lex, info = LexicalIndex.load_snapshot(snap)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.recovered.append(f"ignored a damaged lexical snapshot ({exc})")
            if not self.parts.read_only:
                snap.unlink(missing_ok=True)
            return None
        generation = self.committer.counters.generation
        if info.get("meta") != {"generation": generation, "tokenizer": TOKENIZER_ID} \
                or info.get("stats") != tables:
            if not self.parts.read_only:
                snap.unlink(missing_ok=True)
            return None
        self.lexical_saved = generation
        return lex

    def save_lexical(self) -> None:
        """Snapshot the BM25 index for the next open, unless the snapshot is current
        (derived state: a failure is ignored, and only costs that open the slower read)."""
        generation = self.committer.counters.generation
        if self.lexical_saved == generation:
            return
        try:
            check_regular(self.snapshot_path)  # a link put there since the open: not followed
        except EngramError:
            return
        for stale in self.parts.path.glob(LEXICAL_SNAPSHOT + ".tmp-*"):  # left by a crash
            stale.unlink(missing_ok=True)
        try:
            self.parts.lexical.save_snapshot(
                self.snapshot_path, {"generation": generation, "tokenizer": TOKENIZER_ID})
        except (OSError, ValueError):
            return
        self.lexical_saved = generation

    def drop_snapshot(self) -> None:
        """Erasure: the snapshot may still hold a forgotten engram's words."""
        self.snapshot_path.unlink(missing_ok=True)
        self.lexical_saved = None

    def load_context(self, derive: bool = False) -> TurnContext:
        """Load the conversation context (``engramdb/derived/context.py``); derive its
        tables from the occurrences when the store has none yet (written before they
        existed) or ``derive``."""
        parts = self.parts
        con = parts.catalog.con
        existed = parts.query(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'turns'")[0][0]
        try:
            for statement in CONTEXT_TABLES if (not existed or derive) and not parts.read_only \
                    else ():
                con.execute(statement)
        except duckdb.Error as exc:  # a failed write; never a raw DuckDB error
            raise StorageError(f"cannot create the context tables: {exc}") from exc
        if derive or not existed:
            parts.check_writable("deriving the conversation context (a writable open does it)")
            try:
                rows = TurnContext(parts.lexical.tokenizer).derive(con, parts.settings.date_key)
            except duckdb.Error as exc:  # as Catalog.query: never a raw DuckDB error
                raise CorruptStore(f"catalog read failed: {exc}") from exc
            with self.committer.commit(bump=False) as c:
                c.con.execute("DELETE FROM turns")
                c.con.execute("DELETE FROM labels")
                TurnContext.insert(c.con, rows)
            if rows.turn_count and not derive:
                self.recovered.append(
                    f"derived the conversation context of {rows.turn_count} engrams")
        try:
            return TurnContext.load(con, parts.lexical.tokenizer, parts.lexical.doc_lengths())
        except duckdb.Error as exc:
            raise CorruptStore(f"context tables are unreadable: {exc}") from exc
