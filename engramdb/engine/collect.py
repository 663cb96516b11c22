"""Garbage collection: remove dead engrams for good and reclaim their bytes.

Order of side effects: new segment files are written and fsynced first; one
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

import logging
import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from engramdb.engine.commit import TOMBSTONE_PREFIX, TOMBSTONE_SQL, Committer
from engramdb.engine.derive import DerivedLoader
from engramdb.engine.lifespan import effective_kind
from engramdb.engine.links import in_list
from engramdb.engine.parts import Parts
from engramdb.engine.upkeep import IndexKeeper
from engramdb.errors import StorageError
from engramdb.storage import catalog as cat
from engramdb.storage.catalog import Catalog
from engramdb.storage.fsio import check_tree, fsync_dir
from engramdb.storage.locking import LOCK_NAME
from engramdb.storage.schema import UNUSED_LABELS_SQL
from engramdb.types import KIND_NAMES

COMPACT_DEAD_FRACTION = 0.25  # rewrite a segment once a quarter of its rows are unreferenced


log = logging.getLogger(__name__)

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


def rewrite_catalog(con: duckdb.DuckDBPyConnection, path: Path,
                    block_size: int | None = None) -> None:
    """Copy the live catalog into a fresh file (with ``block_size`` blocks; default: the
    file's own) and swap it in atomically.

    The caller must close ``con`` afterwards and reopen ``path``: the old file (with its freed
    blocks) is gone once this returns. CorruptStore, before anything is written, if a link or
    a special file has appeared in the store's directory since the open.
    """
    check_tree(path.parent)
    fresh = path.with_name(path.name + ".compact")
    fresh.unlink(missing_ok=True)
    try:
        con.execute("FORCE CHECKPOINT")
        alias = con.execute("SELECT current_database()").fetchone()[0]
        # The copy keeps the file's block size unless told (gc --rewrite: block_size_for).
        size = int(block_size or cat.block_size(con))
        con.execute(f"ATTACH '{fresh}' AS engramdb_fresh (BLOCK_SIZE {size})")
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


class Collector:
    """gc for one open store: collects the dead, compacts segments, rewrites the catalog."""

    def __init__(self, parts: Parts, committer: Committer, keeper: IndexKeeper,
                 loader: DerivedLoader) -> None:
        self.parts = parts
        self.committer = committer
        self.keeper = keeper
        self.loader = loader

    def gc(self, dry_run: bool, rewrite: bool = False) -> dict[str, Any]:
        """Remove dead and forgotten engrams physically (see ``Store.gc``); ``rewrite``
        rewrites the catalog file with today's block size (``cat.block_size_for`` the live
        engrams) even if nothing was erased.
        Runs under the write lock."""
        parts = self.parts
        hot = parts.hot
        now = self.committer.counters.clock
        dead = np.nonzero(hot.alive & ~hot.visible(now))[0]
        pending_erase = parts.query("SELECT count(*) FROM forgotten WHERE NOT collected")[0][0]
        erase = bool(pending_erase or len(dead))
        alive_after = hot.alive.copy()
        alive_after[dead] = False
        to_compact = segments_to_compact(parts.segments.committed, hot.row_eid, alive_after,
                                         erase)
        before = self.file_bytes()
        report = {"expired": int(len(dead)), "erased": int(pending_erase),
                  "segments_compacted": len(to_compact), "bytes_before": before,
                  "dry_run": dry_run, "catalog_rewritten": erase or rewrite}
        if dry_run:
            report["bytes_after"] = before
            return report
        # "fast": gc deletes files that older commits refer to, so everything before it
        # becomes durable first, and its own writes are fsynced as in "full" mode.
        self.committer.sync()
        if erase:
            self._collect(dead.astype(np.int64))
            parts.lexical.compact()
        if to_compact:
            with parts.gate.moving_vectors():
                self._compact(to_compact)
        if erase or rewrite:
            # A rewrite asked for migrates to today's blocks: small ones, large ones for a
            # store of LARGE_LOAD_ROWS engrams (its checkpoints); gc alone keeps the file's.
            self._rewrite_catalog(cat.block_size_for(int(alive_after.sum())) if rewrite
                                  else None)
        if erase and parts.index is not None:
            # hnswlib only flags deleted vectors: their bytes stay in the graph files until
            # the graph is rebuilt without them.
            self.keeper.build(parts.index.config, hot.live_eids(now))
        report["bytes_after"] = self.file_bytes()
        log.info("gc of %s: %s", parts.path, report)
        return report

    def _collect(self, dead: np.ndarray) -> None:
        """One commit: the expired engrams are logged and deleted, unused labels dropped,
        and every forgotten engram marked collected."""
        with self.committer.commit() as c:
            c.delete_engrams(dead, "expired", collected=True)
            # Labels (session and role names) that no occurrence uses are content too.
            unused = [r[0] for r in c.con.execute(UNUSED_LABELS_SQL).fetchall()]
            if unused:
                c.con.execute(f"DELETE FROM labels WHERE code IN {in_list(unused)}")
                c.drop_labels(unused)
            # Erased now: their log entries keep when, why and what kind, not the id (a hash
            # of the text). Entries collected by an engramdb before tombstones get theirs too.
            c.con.execute(f"UPDATE forgotten SET collected = true, id = {TOMBSTONE_SQL} "
                          f"WHERE NOT collected OR NOT starts_with(id, '{TOMBSTONE_PREFIX}')")

    def _compact(self, segs: list[int]) -> None:
        """Move the live vectors of ``segs`` into fresh segments, commit, delete the old
        files (after the commit: see the module docstring)."""
        parts = self.parts
        hot, segments = parts.hot, parts.segments
        moving = []
        for seg in segs:
            table = hot.row_eid.get(seg, np.zeros(0, np.int64))
            eids = table[table >= 0]
            moving.append(eids[hot.alive[eids]])
        eids = np.concatenate(moving) if moving else np.zeros(0, np.int64)
        committed = {k: v for k, v in segments.committed.items() if k not in segs}
        new_segs = new_rows = np.zeros(0, np.int64)
        with self.committer.commit(durable=True) as c:
            if len(eids):
                vecs = segments.read(hot.seg[eids], hot.row[eids])
                new_segs, new_rows = c.append_vectors(
                    vecs, first_new=max(segments.committed, default=0) + 1, durable=True,
                    base=committed)
                moved = pa.table({"eid": pa.array(eids), "seg": pa.array(new_segs, pa.int32()),
                                  "row": pa.array(new_rows)})
                with cat.registered(c.con, "moved", moved) as view:
                    c.con.execute(f'UPDATE engrams SET seg = v.seg, "row" = v."row" '
                                  f"FROM {view} v WHERE engrams.eid = v.eid")
            else:
                c.segment_lengths = committed
            c.move(segs, eids, new_segs, new_rows)

    def _rewrite_catalog(self, block_size: int | None = None) -> None:
        self.loader.drop_snapshot()  # close() writes a fresh one
        parts = self.parts
        path = parts.catalog.path
        try:
            with parts.catalog.durable():  # the checkpoint and the copy are fsynced
                rewrite_catalog(parts.catalog.con, path, block_size)
        finally:
            # Reopen by name whether or not the swap happened: after a rename that was
            # reported as failed, the old handle would write into an unlinked file.
            parts.catalog.close()
            parts.catalog = Catalog(path, fast=self.committer.fast)

    def file_bytes(self) -> int:
        """Bytes of every file of the store but ``LOCK`` (it holds the pid of whichever
        process has the store open, so its size says nothing about the store)."""
        lock = self.parts.path / LOCK_NAME
        return sum(p.stat().st_size for p in self.parts.path.rglob("*")
                   if p.is_file() and p != lock)


def forgetting_log(parts: Parts, now: int, limit: int) -> list[dict[str, Any]]:
    """What died or was forgotten, most recent first (see ``Store.forgetting_log``)."""
    hot = parts.hot
    dead = np.nonzero(hot.alive & ~hot.visible(now))[0]
    pending = []
    if len(dead):
        kinds = effective_kind(hot.kind, hot.created, now)
        for eid, ident, expires in parts.query(
            f"SELECT eid, id, expires_at FROM engrams WHERE eid IN {in_list(dead)}"
        ):
            pending.append({"id": ident, "tick": int(np.ceil(expires)), "reason": "expired",
                            "kind": KIND_NAMES[int(kinds[eid])], "collected": False})
    logged = [
        {"id": i, "tick": int(t), "reason": r, "kind": KIND_NAMES[int(k)], "collected": bool(c)}
        for i, t, r, k, c in parts.query(
            "SELECT id, tick, reason, kind, collected FROM forgotten "
            "ORDER BY tick DESC, eid DESC LIMIT ?", [limit])
    ]
    return sorted(pending + logged, key=lambda d: -d["tick"])[:limit]
