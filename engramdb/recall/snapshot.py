"""Snapshots: the read interface for tools built on a store (export, report, the CLI).

``Store.snapshot()`` yields a :class:`Snapshot` while it holds the store still (no write,
gc or rebuild runs until the block ends), so a tool can read many tables and vectors and get
one consistent picture. Only reads are accepted.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from engramdb.engine.parts import Parts
from engramdb.errors import InvalidInput


class Snapshot:
    """Read-only SQL on the catalog and reads of stored vectors, on a store held still."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """Rows of a read-only SQL statement on the catalog (see docs/format.md's schema)."""
        return self._parts.query(_read_only(sql), params)

    def query_arrow(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        """The same as an Arrow table."""
        return self._parts.query_arrow(_read_only(sql), params)

    def counters(self) -> dict[str, int]:
        """The catalog's counters as committed (generation, clock, next_eid, ...)."""
        return self._parts.read(lambda catalog: catalog.counters())

    def vector(self, seg: int, row: int) -> np.ndarray:
        """The stored vector at a (segment, row) pointer, in the store's dtype."""
        return np.asarray(self._parts.segments.view(seg)[row])


def _read_only(sql: str) -> str:
    """``sql`` if it is one read statement; InvalidInput otherwise."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise InvalidInput(f"not a valid SQL statement: {exc}") from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise InvalidInput("a snapshot runs one read statement (SELECT, WITH, FROM...)")
    return sql
