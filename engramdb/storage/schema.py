"""The tables of catalog.duckdb: their DDL, and the SQL that deletes an engram's derived rows.

Storage owns the on-disk layout of every table, including those whose rows the derived layer
computes (the BM25 postings, the conversation context): a reader of the catalog file finds it
all here (docs/format.md). Every statement is idempotent (``IF NOT EXISTS``), so running it on
an existing store changes nothing; a store written before a table existed gains it on open.

* :data:`CATALOG_TABLES`: the catalog's own tables (counters, segments, engrams, occurrences,
  edges, forgotten) and their indexes, as one script.
* :data:`LEXICAL_TABLES`: ``lex_docs`` (one row per engram: its token count) and
  ``lex_postings`` (one row per distinct term of an engram: term, eid, term frequency).
* :data:`CONTEXT_TABLES`: ``turns`` (an engram's session, previous turn, speaker and day) and
  ``labels`` (session and role strings and their codes; for a session, its last turn).

Erasure: forgetting an engram must delete its derived rows in the same transaction (the
postings hold its words, ``turns`` where it was said): :func:`lexical_delete_sql` and
:func:`context_delete_sql`; gc also drops labels nothing uses any more (:data:`UNUSED_LABELS_SQL`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ADD_KEY_COLUMN", "CATALOG_TABLES", "CONTEXT_TABLES", "LEXICAL_TABLES",
           "UNUSED_LABELS_SQL", "context_delete_sql", "lexical_delete_sql"]

#: The catalog's own tables and indexes (one script: DuckDB runs it in one ``execute``).
CATALOG_TABLES = """
CREATE TABLE IF NOT EXISTS counters (name VARCHAR NOT NULL, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (seg INTEGER NOT NULL, nrows BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS engrams (
    eid BIGINT NOT NULL,          -- internal label, never reused (index label)
    id VARCHAR NOT NULL,          -- content hash, the public id
    seg INTEGER NOT NULL,         -- activation pointer: segment file ...
    "row" BIGINT NOT NULL,        -- ... and row in it
    vec_sum BIGINT NOT NULL,      -- checksum of the stored vector bytes
    text BLOB NOT NULL,           -- zstd-compressed UTF-8
    kind TINYINT NOT NULL,        -- 0 working, 1 short-term, 2 long-term
    created_tick BIGINT NOT NULL,
    expires_at DOUBLE,            -- absolute tick of death; NULL = never (pinned)
    pinned BOOLEAN NOT NULL,
    refs INTEGER NOT NULL,        -- occurrences of this content
    recalls INTEGER NOT NULL,
    earned DOUBLE NOT NULL,       -- lifespan earned by recall/reinforce (consolidation)
    last_tick BIGINT NOT NULL     -- last tick it was ingested, recalled or reinforced
);
CREATE TABLE IF NOT EXISTS occurrences (
    eid BIGINT NOT NULL,
    seq BIGINT NOT NULL,          -- global order of ingestion
    role VARCHAR,
    session VARCHAR,
    tick BIGINT NOT NULL,
    metadata VARCHAR,             -- canonical JSON or NULL
    key VARCHAR                   -- the caller's key of this occurrence, unique, or NULL
);
CREATE TABLE IF NOT EXISTS edges (
    a BIGINT NOT NULL,            -- a < b: one row per undirected link
    b BIGINT NOT NULL,
    weight DOUBLE NOT NULL,       -- weight as of `tick`; decays lazily from there
    tick BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS forgotten (
    eid BIGINT NOT NULL,
    id VARCHAR NOT NULL,
    tick BIGINT NOT NULL,
    reason VARCHAR NOT NULL,      -- 'forgotten' (explicit) or 'expired' (lifespan ran out)
    kind TINYINT NOT NULL,
    collected BOOLEAN NOT NULL    -- physically removed by gc
);
CREATE INDEX IF NOT EXISTS engrams_eid ON engrams(eid);
CREATE INDEX IF NOT EXISTS engrams_id ON engrams(id);
CREATE INDEX IF NOT EXISTS occurrences_eid ON occurrences(eid);
CREATE INDEX IF NOT EXISTS edges_a ON edges(a);
CREATE INDEX IF NOT EXISTS edges_b ON edges(b);
"""

#: Format 3 gave occurrences their caller key; an older catalog gains the column on open.
ADD_KEY_COLUMN = "ALTER TABLE occurrences ADD COLUMN IF NOT EXISTS key VARCHAR"

#: The BM25 tables. The primary key refuses an engram indexed twice inside its transaction.
LEXICAL_TABLES: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS lex_docs (eid BIGINT PRIMARY KEY, len INTEGER NOT NULL)",
    ("CREATE TABLE IF NOT EXISTS lex_postings ("
     "term VARCHAR NOT NULL, eid BIGINT NOT NULL, tf INTEGER NOT NULL)"),
)

#: The conversation context tables (nulls where an engram has no session, role or day).
CONTEXT_TABLES: tuple[str, ...] = (
    ("CREATE TABLE IF NOT EXISTS turns (eid BIGINT NOT NULL, prev BIGINT, "
     "session INTEGER, role INTEGER, day INTEGER)"),
    ("CREATE TABLE IF NOT EXISTS labels (code INTEGER NOT NULL, label VARCHAR NOT NULL, "
     "last BIGINT)"),
)

#: The codes of labels no occurrence uses any more (gc drops them: a label is content too).
UNUSED_LABELS_SQL = (
    "SELECT code FROM labels WHERE label NOT IN (SELECT session FROM occurrences "
    "WHERE session IS NOT NULL UNION SELECT role FROM occurrences WHERE role IS NOT NULL) "
    "AND code NOT IN (SELECT session FROM turns WHERE session IS NOT NULL "
    "UNION SELECT role FROM turns WHERE role IS NOT NULL)")


def _eid_list(eids: Sequence[int] | np.ndarray) -> list[int]:
    """The eids as one flat list of Python ints (DuckDB binds it as a LIST parameter)."""
    return [int(e) for e in np.asarray(eids, np.int64).reshape(-1)]


def lexical_delete_sql(eids: Sequence[int] | np.ndarray) -> list[tuple[str, list[object]]]:
    """``(sql, params)`` pairs that delete these engrams' rows from the BM25 tables."""
    ids = _eid_list(eids)
    return [
        ("DELETE FROM lex_postings WHERE list_contains(?, eid)", [ids]),
        ("DELETE FROM lex_docs WHERE list_contains(?, eid)", [ids]),
    ]


def context_delete_sql(eids: Sequence[int] | np.ndarray) -> list[tuple[str, list[object]]]:
    """``(sql, params)`` pairs that delete these engrams' context rows (their labels stay:
    other turns may use them; gc drops the unused ones with :data:`UNUSED_LABELS_SQL`)."""
    return [("DELETE FROM turns WHERE list_contains(?, eid)", [_eid_list(eids)])]
