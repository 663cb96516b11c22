"""Export a store to a portable file and import it into a new store, losslessly.

Two formats hold the same data:

- **JSONL** (one file): a header line with everything store-wide (format version, encoder spec
  and fingerprint, dim, dtype, settings, counters, row counts), then one ``engram`` line per
  stored engram (text, the raw vector bytes in base64 with their dtype, lifespan state and
  every occurrence in ingestion order), then ``link`` lines (Hebbian edges named by the content
  ids at both ends) and ``forgotten`` lines (the forgetting log).
- **Parquet** (a small directory): ``header.json`` plus ``engrams.parquet`` (the vector as a
  fixed-size binary column, occurrences as a nested list), ``links.parquet`` and
  ``forgotten.parquet``.

Internal integers (``eid``, segment pointers) never leave the store: links and the log are
written against content ids and mapped to fresh eids on import, so a file can be imported into
any engramdb that reads its version. The vector bytes are copied exactly (float32 or float16),
so recall over an imported store returns the same scores.

Import never leaves a half-made store behind: it builds the new store in a temporary directory
next to the destination, writes through the store's own primitives (segment append + fsync,
then one catalog transaction per batch), reopens and verifies it, and only then renames it into
place.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engramdb.content import (
    compress_text,
    content_id,
    decompress_text,
    encode_metadata,
    normalize_text,
    vector_checksum,
)
from engramdb.encoders.base import Encoder, fingerprint_of
from engramdb.errors import (
    CorruptStore,
    EncoderRequired,
    EngramError,
    InvalidInput,
    ModelMismatch,
    StorageError,
)
from engramdb.progress import progress_bar
from engramdb.settings import Settings
from engramdb.storage import catalog as cat
from engramdb.storage.fsio import fsync_dir
from engramdb.storage.locking import StoreLock
from engramdb.types import KIND_CODES, KIND_NAMES

FORMAT = "engramdb-export"
VERSION = 1
FORMATS = ("jsonl", "parquet")
HEADER_NAME = "header.json"  # inside a Parquet export directory
BATCH = 4096  # engrams per read query on export and per commit on import

# Engram columns that describe where a vector lives in *this* store; never exported.
_PHYSICAL = ("eid", "seg", "row", "vec_sum", "text", "id", "kind")
_FILE_HINT = "the export is damaged or was edited; export the store again"
_KIND_HINT = "export files name kinds working, short_term or long_term"

# DuckDB column type -> the Arrow type an imported value is built with.
_ARROW_OF = {
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "SMALLINT": pa.int16(),
    "TINYINT": pa.int8(),
    "DOUBLE": pa.float64(),
    "FLOAT": pa.float32(),
    "BOOLEAN": pa.bool_(),
    "VARCHAR": pa.string(),
    "BLOB": pa.binary(),
}


# -- export -------------------------------------------------------------------------------------


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
    store._check_open()
    # The export is a snapshot: writers (ingest, forget, gc's catalog rewrite and compaction)
    # wait until it is written; recalls go on.
    with store._write_lock:
        store._check_open()
        return _export_locked(store, dest, fmt, progress)


def _export_locked(store: Any, dest: Path, fmt: str, progress: bool) -> dict[str, int]:
    header = _header(store)
    tmp = dest.parent / f".{dest.name}.export-{uuid.uuid4().hex[:8]}"
    try:
        if fmt == "jsonl":
            writer: _JsonlWriter | _ParquetWriter = _JsonlWriter(tmp, header)
        else:
            writer = _ParquetWriter(tmp, header, _column_types(store, "engrams"))
        bar = progress_bar(header["counts"]["engrams"], progress, "export")
        try:
            for records in _engram_batches(store):
                writer.engrams(records)
                if bar is not None:
                    bar.update(len(records))
        finally:
            if bar is not None:
                bar.close()
        writer.links(_links(store))
        writer.forgotten(_forgotten(store))
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


def _header(store: Any) -> dict[str, Any]:
    counts = {
        "engrams": store.catalog.query("SELECT count(*) FROM engrams")[0][0],
        "occurrences": store.catalog.query("SELECT count(*) FROM occurrences")[0][0],
        "links": store.catalog.query(
            "SELECT count(*) FROM edges x JOIN engrams a ON a.eid = x.a "
            "JOIN engrams b ON b.eid = x.b"
        )[0][0],
        "forgotten": store.catalog.query("SELECT count(*) FROM forgotten")[0][0],
    }
    from engramdb import __version__

    counters = store.catalog.counters()
    # The sync mark is an eid of this store (eids are not exported); the import sets its own.
    counters.pop("synced_eid", None)
    # The last integrate() turn is an eid (links chain consecutive turns): name it by content.
    last_turn = counters.pop("last_turn", None)
    turn_id = None
    if last_turn is not None:
        rows = store.catalog.query("SELECT id FROM engrams WHERE eid = ?", [last_turn])
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


def _engram_batches(store: Any) -> Iterator[list[dict[str, Any]]]:
    """Yield engram records (vector as raw bytes, occurrences attached) in eid order."""
    last = -1
    while True:
        table = store.catalog.query_arrow(
            "SELECT * FROM engrams WHERE eid > ? ORDER BY eid LIMIT ?", [last, BATCH]
        )
        if table.num_rows == 0:
            return
        rows = table.to_pylist()
        last = int(rows[-1]["eid"])
        occ = store.catalog.query(
            "SELECT eid, list(struct_pack(seq := seq, role := role, session := session, "
            "tick := tick, metadata := metadata) ORDER BY seq) FROM occurrences "
            "WHERE eid IN (SELECT unnest(?::BIGINT[])) GROUP BY eid",
            [[r["eid"] for r in rows]],
        )
        occ_of = {int(e): lst for e, lst in occ}
        out = []
        for row in rows:
            ident = row["id"]
            try:
                vec = np.asarray(store.segments.view(int(row["seg"]))[int(row["row"])])
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
            rec: dict[str, Any] = {"id": ident, "text": text, "kind": kind,
                                   "vector": vec.tobytes()}
            rec.update({k: v for k, v in row.items() if k not in _PHYSICAL})
            rec["occurrences"] = [
                {**o, "metadata": None if o["metadata"] is None else json.loads(o["metadata"])}
                for o in occ_of.get(int(row["eid"]), [])
            ]
            out.append(rec)
        yield out


def _links(store: Any) -> list[dict[str, Any]]:
    table = store.catalog.query_arrow(
        "SELECT a.id AS a, b.id AS b, x.* EXCLUDE (a, b) FROM edges x "
        "JOIN engrams a ON a.eid = x.a JOIN engrams b ON b.eid = x.b ORDER BY x.a, x.b"
    )
    return table.to_pylist()


def _forgotten(store: Any) -> list[dict[str, Any]]:
    # "stored" says whether the engram row still exists (expired, not yet collected): on
    # import such an entry must point at the imported engram, the others at no engram.
    rows = store.catalog.query_arrow(
        "SELECT f.* EXCLUDE (eid), EXISTS (SELECT 1 FROM engrams e WHERE e.eid = f.eid "
        "AND e.id = f.id) AS stored FROM forgotten f ORDER BY f.tick, f.eid"
    ).to_pylist()
    for r in rows:
        r["kind"] = KIND_NAMES.get(int(r["kind"]), str(r["kind"]))
    return rows


class _JsonlWriter:
    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._line({"type": "header", **header})

    def _line(self, doc: dict[str, Any]) -> None:
        self.fh.write(json.dumps(doc, ensure_ascii=False, allow_nan=False) + "\n")

    def engrams(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            doc = dict(rec)
            doc["vector"] = base64.b64encode(rec["vector"]).decode("ascii")
            self._line({"type": "engram", **doc})

    def links(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self._line({"type": "link", **r})

    def forgotten(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self._line({"type": "forgotten", **r})

    def close(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


class _ParquetWriter:
    def __init__(self, path: Path, header: dict[str, Any], types: dict[str, str]) -> None:
        import pyarrow.parquet as pq

        self.pq = pq
        self.path = path
        path.mkdir()
        self.header = header
        self.types = types  # DuckDB column types, so every batch gets the same Arrow schema
        self.row_bytes = header["dim"] * np.dtype(header["dtype"]).itemsize
        self.writer: Any = None

    def engrams(self, records: list[dict[str, Any]]) -> None:
        cols: dict[str, Any] = {}
        for key in records[0]:
            values = [r[key] for r in records]
            if key == "vector":
                cols[key] = pa.array(values, pa.binary(self.row_bytes))
            elif key == "occurrences":
                cols[key] = pa.array(
                    [[{**o, "metadata": encode_metadata(o["metadata"])} for o in v]
                     for v in values],
                    pa.list_(pa.struct([("seq", pa.int64()), ("role", pa.string()),
                                        ("session", pa.string()), ("tick", pa.int64()),
                                        ("metadata", pa.string())])),
                )
            elif key in ("id", "text", "kind"):  # stored as codes or zstd; exported as text
                cols[key] = pa.array(values, pa.string())
            else:
                cols[key] = pa.array(values, _ARROW_OF.get(self.types.get(key, "")))
        table = pa.table(cols)
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(self.path / "engrams.parquet", table.schema)
        else:
            table = table.cast(self.writer.schema)
        self.writer.write_table(table)

    def _table(self, name: str, rows: list[dict[str, Any]], empty: pa.Schema) -> None:
        table = pa.Table.from_pylist(rows) if rows else empty.empty_table()
        self.pq.write_table(table, self.path / name)

    def links(self, rows: list[dict[str, Any]]) -> None:
        self._table("links.parquet", rows, pa.schema([("a", pa.string()), ("b", pa.string()),
                                                      ("weight", pa.float64()),
                                                      ("tick", pa.int64())]))

    def forgotten(self, rows: list[dict[str, Any]]) -> None:
        self._table("forgotten.parquet", rows, pa.schema([
            ("id", pa.string()), ("tick", pa.int64()), ("reason", pa.string()),
            ("kind", pa.string()), ("collected", pa.bool_()), ("stored", pa.bool_())]))

    def close(self) -> None:
        if self.writer is None:  # an empty store still gets a readable engrams file
            self.pq.write_table(pa.table({"id": pa.array([], pa.string())}),
                                self.path / "engrams.parquet")
        else:
            self.writer.close()
        data = json.dumps(self.header, indent=2, sort_keys=True, allow_nan=False)
        (self.path / HEADER_NAME).write_text(data + "\n", encoding="utf-8")
        for p in self.path.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(self.path)


# -- import -------------------------------------------------------------------------------------


class _SpecEncoder(Encoder):
    """Stands for the exported encoder: carries its spec and dim, never encodes.

    Import copies vectors, so it must not need the model itself (which may be large, or a
    FunctionEncoder whose code is not at hand); this gives the new store the same spec and
    fingerprint without loading anything.
    """

    def __init__(self, spec: dict[str, Any], dim: int) -> None:
        self._spec = dict(spec)
        self.dim = dim

    def spec(self) -> dict[str, Any]:
        """The exported encoder's spec."""
        return dict(self._spec)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Never called during import; raises EncoderRequired."""
        raise EncoderRequired("import copies vectors and has no model to encode with")


def import_store(
    dest_path: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    encoder: Encoder | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Create a new store at ``dest_path`` from an export file (or Parquet directory).

    The new store has the exported encoder spec and fingerprint, dim, dtype, settings, clock,
    and every engram with the same id, text, vector bytes, lifespan state and occurrences,
    plus the links and the forgetting log. ``encoder``, if given, must have the exported
    fingerprint (else ModelMismatch). Returns the new store's ``stats()``.

    Raises InvalidInput (``dest_path`` is a non-empty directory or a file; the source is not
    an export, has bad JSON, a wrong version or dims), CorruptStore (an id that does not match
    its text, a vector of the wrong size, counts that do not add up), StorageError (disk).
    On any error nothing is left at ``dest_path``.

    >>> import_store("bob.engram", "alice.jsonl")["count"]  # doctest: +SKIP
    3
    """
    import engramdb

    dest = Path(dest_path)
    if dest.is_file() or dest.is_symlink():
        raise InvalidInput(f"{dest} exists and is a file", hint="import into a new path")
    if dest.is_dir() and any(dest.iterdir()):
        raise InvalidInput(f"{dest} exists and is not empty",
                           hint="import into a new path; import never merges into a store")
    reader = _open_source(Path(source))
    header = reader.header
    if encoder is not None and encoder.fingerprint != header["fingerprint"]:
        raise ModelMismatch(
            f"{source} was exported with encoder fingerprint {header['fingerprint'][:16]}, "
            f"but the encoder given has {encoder.fingerprint[:16]}"
        )
    settings = dict(header["settings"])
    settings["vector_dtype"] = header["dtype"]
    try:
        settings_obj = Settings.from_stored(settings)
    except (TypeError, EngramError) as exc:
        raise _bad(f"{source}: the exported settings are invalid: {exc}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_imports(dest)
    tmp = dest.parent / f".{dest.name}.import-{uuid.uuid4().hex[:8]}"
    stand_in = _SpecEncoder(header["encoder"], header["dim"])
    store = None
    try:
        store = engramdb.open(tmp, encoder=stand_in, settings=settings_obj)
        _Importer(store, header, str(source)).run(reader, progress)
        store.close()
        # Reopen: the store rebuilds its in-memory state (and derived indexes) from what was
        # committed, exactly as it would after a crash; then it must verify clean.
        store = engramdb.open(tmp, encoder=stand_in)
        if hasattr(store, "rebuild"):
            store.rebuild()
        report = store.verify()
        if not report.ok:
            raise CorruptStore(f"{source}: the imported store does not verify: "
                               + "; ".join(report.problems[:3]))
        stats = store.stats()
        store.close()
        store = None
        if dest.is_dir():
            dest.rmdir()  # empty (checked above); rename cannot replace a directory otherwise
        os.rename(tmp, dest)
        try:
            fsync_dir(dest.parent)
        except BaseException:
            # The caller is told the import failed: then nothing may be left at dest (the
            # rename may not be durable, and a retry would find dest "not empty").
            shutil.rmtree(dest, ignore_errors=True)
            raise
    except BaseException as exc:
        if store is not None:
            try:
                store.close()
            except EngramError:
                pass  # its directory is removed next; what matters is the first error
        _remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, EngramError):
            raise StorageError(f"import into {dest} failed: {exc}") from exc
        raise
    finally:
        reader.close()
    stats["path"] = str(dest)
    return stats


class _Importer:
    """Writes parsed records into a freshly created, still empty store."""

    def __init__(self, store: Any, header: dict[str, Any], source: str) -> None:
        self.store = store
        self.header = header
        self.source = source
        self.fingerprint = header["fingerprint"]
        self.itemsize = np.dtype(header["dtype"]).itemsize
        self.eid_of: dict[str, int] = {}
        self.next_eid = 1
        self.max_seq = 0
        self.n_occ = 0
        self.types = {name: _column_types(store, name)
                      for name in ("engrams", "occurrences", "edges", "forgotten")}

    def run(self, reader: _Reader, progress: bool) -> None:
        """Import every batch, then the links, the log and the counters."""
        counts = self.header["counts"]
        bar = progress_bar(counts["engrams"], progress, "import")
        try:
            for batch in reader.engram_batches():
                self._engrams(batch)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        links, forgotten = reader.links(), reader.forgotten()
        got = {"engrams": len(self.eid_of), "occurrences": self.n_occ, "links": len(links),
               "forgotten": len(forgotten)}
        for key, n in got.items():
            if n != counts[key]:
                raise CorruptStore(f"{self.source}: the header promises {counts[key]} {key}, "
                                   f"the file holds {n} (truncated?)")
        self._finish(links, forgotten)

    def _engrams(self, batch: list[dict[str, Any]]) -> None:
        store = self.store
        dim, row_bytes = self.header["dim"], self.header["dim"] * self.itemsize
        extra_cols = [c for c in self.types["engrams"] if c not in _PHYSICAL]
        vecs = np.empty((len(batch), dim), store.segments.dtype)
        cols: dict[str, list[Any]] = {c: [] for c in ("eid", "id", "text", "kind", *extra_cols)}
        occ: dict[str, list[Any]] = {c: [] for c in ("eid", "seq", "role", "session", "tick",
                                                     "metadata")}
        for i, rec in enumerate(batch):
            ident = _field(rec, "id", str, self.source)
            where = f"{self.source}: engram {ident[:12]}"
            if ident in self.eid_of:
                raise CorruptStore(f"{where}: appears twice")
            text = _field(rec, "text", str, self.source)
            if normalize_text(text, what=f"{where} text") != text or content_id(
                self.fingerprint, text
            ) != ident:
                raise CorruptStore(f"{where}: the id does not match the text",
                                   hint="the file was edited or damaged; export it again")
            raw = rec.get("vector")
            if not isinstance(raw, bytes) or len(raw) != row_bytes:
                size = len(raw) if isinstance(raw, bytes) else type(raw).__name__
                raise _bad(f"{where}: vector has {size} bytes, expected {row_bytes} "
                                   f"({dim} x {self.header['dtype']})")
            vec = np.frombuffer(raw, store.segments.dtype)
            if not np.isfinite(vec).all():
                raise _bad(f"{where}: vector has non-finite values")
            vecs[i] = vec
            kind = rec.get("kind")
            if kind not in KIND_CODES:
                raise _bad(f"{where}: unknown kind {kind!r}", hint=_KIND_HINT)
            eid = self.next_eid + i
            self.eid_of[ident] = eid
            cols["eid"].append(eid)
            cols["id"].append(ident)
            cols["text"].append(compress_text(text))
            cols["kind"].append(KIND_CODES[kind])
            for c in extra_cols:
                cols[c].append(rec.get(c))
            occurrences = rec.get("occurrences") or []
            if not isinstance(occurrences, list):
                raise _bad(f"{where}: occurrences must be a list")
            for o in occurrences:
                if not isinstance(o, dict) or not isinstance(o.get("seq"), int) or not \
                        isinstance(o.get("tick"), int):
                    raise _bad(f"{where}: an occurrence lacks an integer seq or tick")
                occ["eid"].append(eid)
                occ["seq"].append(o["seq"])
                occ["role"].append(o.get("role"))
                occ["session"].append(o.get("session"))
                occ["tick"].append(o["tick"])
                occ["metadata"].append(encode_metadata(o.get("metadata")))
                self.max_seq = max(self.max_seq, o["seq"])
            self.n_occ += len(occurrences)
        plan = store.segments.plan(len(batch))
        segs, rows = plan.pointers()
        engram_rows = _arrow(cols, self.types["engrams"], self.source)
        engram_rows = engram_rows.append_column("seg", pa.array(segs, pa.int32()))
        engram_rows = engram_rows.append_column("row", pa.array(rows, pa.int64()))
        engram_rows = engram_rows.append_column(
            "vec_sum", pa.array([vector_checksum(v) for v in vecs], pa.int64()))
        occ_rows = _arrow(occ, self.types["occurrences"], self.source)
        store.segments.write(plan, vecs)  # durable before the commit that points at it
        committed = plan.committed_after(store.segments.committed)
        self.next_eid += len(batch)
        try:
            with store.catalog.transaction() as con:
                cat.insert_arrow(con, "engrams", engram_rows)
                cat.insert_arrow(con, "occurrences", occ_rows)
                cat.set_segment_lengths(con, committed)
                counters = {"next_eid": self.next_eid}
                if store.segments.durable:  # fsynced above: the sync mark moves with them
                    counters["synced_eid"] = self.next_eid
                cat.set_counters(con, counters)
        except BaseException:
            store.segments.rollback()
            raise
        store.segments.set_committed(committed)

    def _finish(self, links: list[dict[str, Any]], forgotten: list[dict[str, Any]]) -> None:
        edge_cols: dict[str, list[Any]] = {c: [] for c in self.types["edges"]}
        for r in links:
            a, b = r.get("a"), r.get("b")
            if a not in self.eid_of or b not in self.eid_of:
                raise _bad(f"{self.source}: a link names an engram the file lacks "
                                   f"({str(a)[:12]} - {str(b)[:12]})")
            ea, eb = sorted((self.eid_of[a], self.eid_of[b]))  # edges keep a < b
            for c in edge_cols:
                edge_cols[c].append(ea if c == "a" else eb if c == "b" else r.get(c))
        log_cols: dict[str, list[Any]] = {c: [] for c in self.types["forgotten"]}
        next_eid = self.next_eid
        for r in forgotten:
            ident = r.get("id")
            if r.get("stored") and ident in self.eid_of:
                eid = self.eid_of[ident]
            else:
                # A fresh eid that no engram has: the log entry must not name a live engram.
                eid = next_eid
                next_eid += 1
            kind = r.get("kind")
            if kind not in KIND_CODES:
                raise _bad(f"{self.source}: forgotten entry with kind {kind!r}",
                                   hint=_KIND_HINT)
            values = {**r, "eid": eid, "collected": bool(r.get("collected")),
                      "kind": KIND_CODES[kind]}
            for c in log_cols:
                log_cols[c].append(values.get(c))
        counters = {k: int(v) for k, v in self.header["counters"].items()
                    if k != "synced_eid"}  # an eid of the exporting store, if a file has it
        counters["next_eid"] = next_eid
        counters["next_seq"] = max(counters.get("next_seq", 1), self.max_seq + 1)
        if self.store.segments.durable:
            counters["synced_eid"] = next_eid
        known = set(self.store.catalog.counters())
        turn = self.header.get("last_turn")
        if turn is not None and turn not in self.eid_of:
            raise _bad(f"{self.source}: last_turn names an engram the file lacks")
        with self.store.catalog.transaction() as con:
            cat.insert_arrow(con, "edges", _arrow(edge_cols, self.types["edges"], self.source))
            cat.insert_arrow(con, "forgotten",
                             _arrow(log_cols, self.types["forgotten"], self.source))
            cat.set_counters(con, {k: v for k, v in counters.items() if k in known})
            # Counters a newer store keeps beyond the core ones are carried over as they are.
            for name in sorted(set(counters) - known):
                con.execute("INSERT INTO counters VALUES (?, ?)", [name, counters[name]])
            if turn is not None:
                cat.set_counters(con, {"last_turn": self.eid_of[turn]})


def _remove_abandoned_imports(dest: Path) -> None:
    """Delete work directories of imports into ``dest`` that died (their lock is free).

    A killed import never leaves a half store at ``dest`` (it renames a finished one into
    place), but its hidden work directory would otherwise stay behind forever.
    """
    for work in dest.parent.glob(f".{dest.name}.import-*"):
        lock = StoreLock(work)
        try:
            lock.acquire(0)
        except EngramError:
            continue  # another import is running there right now
        try:
            shutil.rmtree(work, ignore_errors=True)
        finally:
            lock.release()


def _column_types(store: Any, table: str) -> dict[str, str]:
    rows = store.catalog.query(f"DESCRIBE {table}")
    return {str(r[0]): str(r[1]) for r in rows}


def _arrow(cols: dict[str, list[Any]], types: dict[str, str], source: str) -> pa.Table:
    arrays = {}
    for name, values in cols.items():
        try:
            arrays[name] = pa.array(values, _ARROW_OF.get(types.get(name, "")))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise _bad(f"{source}: bad value in column {name}: {exc}") from None
    return pa.table(arrays)


def _bad(message: str, hint: str = _FILE_HINT) -> InvalidInput:
    """An InvalidInput about the export file (not about a store, which is left untouched)."""
    return InvalidInput(message, hint=hint)


def _field(rec: dict[str, Any], key: str, typ: type, source: str) -> Any:
    value = rec.get(key)
    if not isinstance(value, typ):
        raise _bad(f"{source}: an engram record has no valid {key!r}")
    return value


# -- readers ------------------------------------------------------------------------------------


class _Reader:
    """A parsed export: the header, then engram batches, links and the forgetting log."""

    header: dict[str, Any]

    def engram_batches(self) -> Iterator[list[dict[str, Any]]]:  # pragma: no cover - abstract
        """Yield engram records in file order."""
        raise NotImplementedError

    def links(self) -> list[dict[str, Any]]:  # pragma: no cover - abstract
        """The link records (content ids at both ends)."""
        raise NotImplementedError

    def forgotten(self) -> list[dict[str, Any]]:  # pragma: no cover - abstract
        """The forgetting-log records."""
        raise NotImplementedError

    def close(self) -> None:
        """Release open files."""


def _open_source(src: Path) -> _Reader:
    if src.is_dir():
        if not (src / HEADER_NAME).exists():
            raise InvalidInput(f"{src} is a directory without {HEADER_NAME}",
                               hint="pass a JSONL export file or a Parquet export directory")
        return _ParquetReader(src)
    if not src.exists():
        raise InvalidInput(f"{src} does not exist")
    return _JsonlReader(src)


def _check_header(doc: Any, source: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(f"{source} is not an engramdb export (no {FORMAT} header)",
                           hint="make one with `engramdb export STORE FILE`")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise _bad(f"{source}: export version {version!r} is invalid")
    if version > VERSION:
        raise _bad(f"{source} has export version {version}; this engramdb reads up to "
                           f"{VERSION}", hint="upgrade engramdb (pip install -U engramdb)")
    dim, dtype, spec = doc.get("dim"), doc.get("dtype"), doc.get("encoder")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise _bad(f"{source}: dim must be a positive integer, got {dim!r}")
    if dtype not in ("float32", "float16"):
        raise _bad(f"{source}: dtype must be float32 or float16, got {dtype!r}")
    if not isinstance(spec, dict) or spec.get("dim", dim) != dim:
        raise _bad(f"{source}: the encoder spec does not match dim {dim}")
    if doc.get("fingerprint") != fingerprint_of(spec):
        raise CorruptStore(f"{source}: the fingerprint does not match the encoder spec")
    for key in ("settings", "counters", "counts"):
        if not isinstance(doc.get(key), dict):
            raise _bad(f"{source}: the header lacks {key!r}")
    counts = doc["counts"]
    for key in ("engrams", "occurrences", "links", "forgotten"):
        if not isinstance(counts.get(key), int):
            raise _bad(f"{source}: the header lacks counts.{key}")
    return doc


class _JsonlReader(_Reader):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc}") from None
        self.lineno = 0
        self._links: list[dict[str, Any]] = []
        self._forgotten: list[dict[str, Any]] = []
        first = self._next()
        self.header = _check_header(first, str(path))

    def _next(self) -> dict[str, Any] | None:
        while True:
            try:
                line = self.fh.readline()
            except UnicodeDecodeError as exc:
                raise _bad(f"{self.path}:{self.lineno + 1}: not UTF-8: {exc}") from None
            if not line:
                return None
            self.lineno += 1
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad(f"{self.path}:{self.lineno}: bad JSON: {exc.msg}",
                                   hint="the export is damaged; export it again") from None
            if not isinstance(doc, dict):
                raise _bad(f"{self.path}:{self.lineno}: expected a JSON object")
            return doc

    def engram_batches(self) -> Iterator[list[dict[str, Any]]]:
        """Yield engram records; links and log lines are collected for later."""
        batch: list[dict[str, Any]] = []
        while (doc := self._next()) is not None:
            kind = doc.pop("type", None)
            if kind == "engram":
                if self._links or self._forgotten:
                    raise _bad(f"{self.path}:{self.lineno}: engram after the links")
                vec = doc.get("vector")
                try:
                    doc["vector"] = base64.b64decode(vec, validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise _bad(
                        f"{self.path}:{self.lineno}: vector is not base64") from None
                batch.append(doc)
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
            elif kind == "link":
                self._links.append(doc)
            elif kind == "forgotten":
                self._forgotten.append(doc)
            else:
                raise _bad(f"{self.path}:{self.lineno}: unknown record type {kind!r}")
        if batch:
            yield batch

    def links(self) -> list[dict[str, Any]]:
        """Link records read by :meth:`engram_batches`."""
        return self._links

    def forgotten(self) -> list[dict[str, Any]]:
        """Forgetting-log records read by :meth:`engram_batches`."""
        return self._forgotten

    def close(self) -> None:
        """Close the file."""
        self.fh.close()


class _ParquetReader(_Reader):
    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.pq = pq
        self.path = path
        try:
            doc = json.loads((path / HEADER_NAME).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"{path / HEADER_NAME}: bad JSON: {exc}") from None
        self.header = _check_header(doc, str(path))

    def _read(self, name: str) -> Any:
        try:
            return self.pq.ParquetFile(self.path / name)
        except (OSError, pa.ArrowException) as exc:
            raise InvalidInput(f"{self.path / name}: not a readable Parquet file: {exc}") from None

    def engram_batches(self) -> Iterator[list[dict[str, Any]]]:
        """Yield engram records from engrams.parquet."""
        pf = self._read("engrams.parquet")
        try:
            for rb in pf.iter_batches(batch_size=BATCH):
                if rb.num_rows == 0:
                    continue
                batch = rb.to_pylist()
                for rec in batch:
                    for o in rec.get("occurrences") or []:
                        meta = o.get("metadata")
                        o["metadata"] = None if meta is None else json.loads(meta)
                yield batch
        except (pa.ArrowException, json.JSONDecodeError) as exc:
            raise _bad(f"{self.path}/engrams.parquet is damaged: {exc}") from None

    def _rows(self, name: str) -> list[dict[str, Any]]:
        try:
            return self._read(name).read().to_pylist()
        except pa.ArrowException as exc:
            raise InvalidInput(f"{self.path / name} is damaged: {exc}") from None

    def links(self) -> list[dict[str, Any]]:
        """Rows of links.parquet."""
        return self._rows("links.parquet")

    def forgotten(self) -> list[dict[str, Any]]:
        """Rows of forgotten.parquet."""
        return self._rows("forgotten.parquet")


# -- helpers ------------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
