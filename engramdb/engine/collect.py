"""Garbage collection: remove dead engrams for good and reclaim their bytes.

Order of side effects (STYLE rule 6): new segment files are written and fsynced first; one
catalog commit moves the pointers and drops the dead rows; only then are the old segment files
deleted. A crash at any point leaves either the old or the new layout referenced, and recovery
on open removes files no commit references.

Erasure: a forgotten engram's vector bytes live on in its old segment until that segment is
rewritten, and DuckDB keeps deleted rows' bytes in freed blocks until the database file is
rewritten. ``gc`` therefore compacts every segment holding an unreferenced row when an erasure
is pending, and rewrites the catalog file (``COPY FROM DATABASE`` into a fresh file, then an
atomic rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np

from engramdb.errors import StorageError
from engramdb.storage.fsio import fsync_dir

COMPACT_DEAD_FRACTION = 0.25  # rewrite a segment once a quarter of its rows are unreferenced


def segments_to_compact(
    committed: dict[int, int], row_eid: dict[int, np.ndarray], alive: np.ndarray, erase: bool
) -> list[int]:
    """Segments worth rewriting: any with a dead row when erasing, else mostly-dead ones."""
    chosen = []
    for seg, rows in committed.items():
        if rows == 0:
            continue
        table = row_eid.get(seg, np.zeros(0, np.int64))[:rows]
        live = int(((table >= 0) & alive[np.clip(table, 0, None)]).sum()) if len(table) else 0
        dead_fraction = 1.0 - live / rows
        if (erase and dead_fraction > 0) or dead_fraction >= COMPACT_DEAD_FRACTION:
            chosen.append(seg)
    return chosen


def rewrite_catalog(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Copy the live catalog into a fresh file and swap it in atomically.

    The caller must close ``con`` afterwards and reopen ``path``: the old file (with its freed
    blocks) is gone once this returns.
    """
    fresh = path.with_name(path.name + ".compact")
    fresh.unlink(missing_ok=True)
    try:
        con.execute("FORCE CHECKPOINT")
        alias = con.execute("SELECT current_database()").fetchone()[0]
        con.execute(f"ATTACH '{fresh}' AS engramdb_fresh")
        try:
            con.execute(f"COPY FROM DATABASE {alias} TO engramdb_fresh")
        finally:
            con.execute("DETACH engramdb_fresh")
        with open(fresh, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(fresh, path)
        fsync_dir(path.parent)
    except (duckdb.Error, OSError) as exc:
        fresh.unlink(missing_ok=True)
        raise StorageError(f"rewriting the catalog failed: {exc}") from exc
