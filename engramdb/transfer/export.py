"""Export: one snapshot of a store written to a JSONL file or a Parquet directory.

The export reads the store only through :meth:`Store.snapshot` (no write, gc or rebuild runs
until the file is written; recalls go on), and copies nothing it cannot vouch for: a vector
or text that fails its checksum stops the export with CorruptStore.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engramdb.content import decompress_text, vector_checksum
from engramdb.errors import CorruptStore, InvalidInput, StorageError
from engramdb.progress import progress_bar
from engramdb.recall.snapshot import Snapshot
from engramdb.storage.fsio import fsync_dir
from engramdb.transfer.formats import (
    BATCH,
    FORMAT,
    FORMATS,
    PHYSICAL,
    VERSION,
    JsonlWriter,
    ParquetWriter,
)
from engramdb.types import KIND_NAMES
from engramdb.version import __version__


def export_store(
    store: Any, dest: str | os.PathLike[str], fmt: str = "jsonl", *, progress: bool = False
) -> dict[str, int]:
    """Write every engram, occurrence, link and log entry of ``store`` to ``dest``.

    ``fmt`` is ``"jsonl"`` (one file) or ``"parquet"`` (a directory). The file is written under
    a temporary name and renamed at the end, so ``dest`` is either complete or absent. Returns
    the row counts written. Raises InvalidInput (bad format, ``dest`` exists), CorruptStore
    (a vector or text fails its checksum: an export never copies damage silently),
    StorageError (disk). The export is one snapshot: writes from other threads (``gc``
    included) wait until it is written; recalls do not.

    >>> export_store(mem, "alice.jsonl")  # doctest: +SKIP
    {'engrams': 3, 'occurrences': 4, 'links': 1, 'forgotten': 0}
    """
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}; use jsonl or parquet")
    dest = Path(dest)
    if dest.exists():
        raise InvalidInput(f"{dest} already exists", hint="choose a new file name or remove it")
    with store.snapshot() as snap:
        return _export(store, snap, dest, fmt, progress)


def _export(store: Any, snap: Snapshot, dest: Path, fmt: str,
            progress: bool) -> dict[str, int]:
    header = _header(store, snap)
    tmp = dest.parent / f".{dest.name}.export-{uuid.uuid4().hex[:8]}"
    try:
        if fmt == "jsonl":
            writer: JsonlWriter | ParquetWriter = JsonlWriter(tmp, header)
        else:
            types = {str(r[0]): str(r[1]) for r in snap.query("DESCRIBE engrams")}
            writer = ParquetWriter(tmp, header, types)
        bar = progress_bar(header["counts"]["engrams"], progress, "export")
        try:
            for records in _engram_batches(snap):
                writer.engrams(records)
                if bar is not None:
                    bar.update(len(records))
        finally:
            if bar is not None:
                bar.close()
        writer.links(_links(snap))
        writer.forgotten(_forgotten(snap))
        writer.close()
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        _remove(tmp)
        raise StorageError(f"cannot write {dest}: {exc}") from exc
    except BaseException:
        _remove(tmp)
        raise
    return header["counts"]


def _header(store: Any, snap: Snapshot) -> dict[str, Any]:
    counts = {
        "engrams": snap.query("SELECT count(*) FROM engrams")[0][0],
        "occurrences": snap.query("SELECT count(*) FROM occurrences")[0][0],
        "links": snap.query(
            "SELECT count(*) FROM edges x JOIN engrams a ON a.eid = x.a "
            "JOIN engrams b ON b.eid = x.b"
        )[0][0],
        "forgotten": snap.query("SELECT count(*) FROM forgotten")[0][0],
    }

    counters = snap.counters()
    # The sync mark is an eid of this store (eids are not exported); the import sets its own.
    counters.pop("synced_eid", None)
    # The last integrate() turn is an eid (links chain consecutive turns): name it by content.
    last_turn = counters.pop("last_turn", None)
    turn_id = None
    if last_turn is not None:
        rows = snap.query("SELECT id FROM engrams WHERE eid = ?", [last_turn])
        turn_id = rows[0][0] if rows else None
    return {
        "format": FORMAT,
        "version": VERSION,
        "engramdb": __version__,
        "encoder": store.manifest.encoder_spec,
        "fingerprint": store.fingerprint,
        "dim": store.dim,
        "dtype": store.manifest.dtype,
        "settings": store.manifest.settings,
        "counters": counters,
        "last_turn": turn_id,
        "counts": {k: int(v) for k, v in counts.items()},
    }


def _engram_batches(snap: Snapshot) -> Iterator[list[dict[str, Any]]]:
    """Yield engram records (vector as raw bytes, occurrences attached) in eid order."""
    last = -1
    while True:
        table = snap.query_arrow(
            "SELECT * FROM engrams WHERE eid > ? ORDER BY eid LIMIT ?", [last, BATCH]
        )
        if table.num_rows == 0:
            return
        rows = table.to_pylist()
        last = int(rows[-1]["eid"])
        occ = snap.query(
            "SELECT eid, list(struct_pack(seq := seq, role := role, session := session, "
            "tick := tick, metadata := metadata, key := key) ORDER BY seq) FROM occurrences "
            "WHERE eid IN (SELECT unnest(?::BIGINT[])) GROUP BY eid",
            [[r["eid"] for r in rows]],
        )
        occ_of = {int(e): lst for e, lst in occ}
        yield [_record(snap, row, occ_of.get(int(row["eid"]), [])) for row in rows]


def _record(snap: Snapshot, row: dict[str, Any], occurrences: list[dict[str, Any]]
            ) -> dict[str, Any]:
    """One engram's export record, its vector and text checked against their checksums."""
    ident = row["id"]
    try:
        vec = snap.vector(int(row["seg"]), int(row["row"]))
    except (IndexError, OSError) as exc:
        raise CorruptStore(f"engram {ident[:12]}: vector unreadable: {exc}") from exc
    if vector_checksum(vec) != row["vec_sum"]:
        raise CorruptStore(f"engram {ident[:12]}: vector checksum mismatch; not exported")
    try:
        text = decompress_text(row["text"])
    except Exception as exc:  # zstd or UTF-8 damage
        raise CorruptStore(f"engram {ident[:12]}: text unreadable: {exc}") from exc
    kind = KIND_NAMES.get(int(row["kind"]))
    if kind is None:
        raise CorruptStore(f"engram {ident[:12]}: unknown kind code {row['kind']}")
    rec: dict[str, Any] = {"id": ident, "text": text, "kind": kind, "vector": vec.tobytes()}
    rec.update({k: v for k, v in row.items() if k not in PHYSICAL})
    rec["occurrences"] = [
        {**o, "metadata": None if o["metadata"] is None else json.loads(o["metadata"])}
        for o in occurrences
    ]
    return rec


def _links(snap: Snapshot) -> list[dict[str, Any]]:
    table = snap.query_arrow(
        "SELECT a.id AS a, b.id AS b, x.* EXCLUDE (a, b) FROM edges x "
        "JOIN engrams a ON a.eid = x.a JOIN engrams b ON b.eid = x.b ORDER BY x.a, x.b"
    )
    return table.to_pylist()


def _forgotten(snap: Snapshot) -> list[dict[str, Any]]:
    # "stored" says whether the engram row still exists (expired, not yet collected): on
    # import such an entry must point at the imported engram, the others at no engram.
    rows = snap.query_arrow(
        "SELECT f.* EXCLUDE (eid), EXISTS (SELECT 1 FROM engrams e WHERE e.eid = f.eid "
        "AND e.id = f.id) AS stored FROM forgotten f ORDER BY f.tick, f.eid"
    ).to_pylist()
    for r in rows:
        r["kind"] = KIND_NAMES.get(int(r["kind"]), str(r["kind"]))
    return rows


def _remove(path: Path) -> None:
    """Delete an unfinished export (a file, or a Parquet directory)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
