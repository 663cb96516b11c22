"""The export file formats: their constants, the header check, and the JSONL and Parquet
writers and readers.

Both formats hold the same records (see the package docstring): a header, engram records
(the vector as raw bytes of the exported dtype, occurrences attached), link records and
forgetting-log records. Readers refuse a damaged or edited file with an InvalidInput (or
CorruptStore) that names the file, and the line where there is one.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engramdb.content import encode_metadata, fingerprint_of
from engramdb.errors import CorruptStore, InvalidInput
from engramdb.settings import Settings
from engramdb.storage.fsio import fsync_dir

FORMAT = "engramdb-export"
VERSION = 2  # 2: occurrences carry their caller `key` (1: none; still read)
FORMATS = ("jsonl", "parquet")
HEADER_NAME = "header.json"  # inside a Parquet export directory
BATCH = 4096  # engrams per read query on export and per commit on import

#: Engram columns that describe where a vector lives in *this* store; never exported.
PHYSICAL = ("eid", "seg", "row", "vec_sum", "text", "id", "kind")
FILE_HINT = "the export is damaged or was edited; export the store again"
KIND_HINT = "export files name kinds working, short_term or long_term"

#: DuckDB column type -> the Arrow type an imported value is built with.
ARROW_OF = {
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


def bad(message: str, hint: str = FILE_HINT) -> InvalidInput:
    """An InvalidInput about the export file (not about a store, which is left untouched)."""
    return InvalidInput(message, hint=hint)


# -- writers ------------------------------------------------------------------------------------


class JsonlWriter:
    """Writes a JSONL export: the header line, then one line per record."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._line({"type": "header", **header})

    def _line(self, doc: dict[str, Any]) -> None:
        self.fh.write(json.dumps(doc, ensure_ascii=False, allow_nan=False) + "\n")

    def engrams(self, records: list[dict[str, Any]]) -> None:
        """Write engram records (the vector in base64)."""
        for rec in records:
            doc = dict(rec)
            doc["vector"] = base64.b64encode(rec["vector"]).decode("ascii")
            self._line({"type": "engram", **doc})

    def links(self, rows: list[dict[str, Any]]) -> None:
        """Write link records."""
        for r in rows:
            self._line({"type": "link", **r})

    def forgotten(self, rows: list[dict[str, Any]]) -> None:
        """Write forgetting-log records."""
        for r in rows:
            self._line({"type": "forgotten", **r})

    def close(self) -> None:
        """Flush, fsync and close the file."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


class ParquetWriter:
    """Writes a Parquet export directory: engrams, links and log files, then the header."""

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
        """Append engram records to engrams.parquet (one schema for every batch)."""
        cols: dict[str, Any] = {}
        for key in records[0]:
            values = [r[key] for r in records]
            if key == "vector":
                cols[key] = pa.array(values, pa.binary(self.row_bytes))
            elif key == "occurrences":
                # No depth bound: a store written before there was one may hold deeper
                # metadata, and an export is lossless.
                cols[key] = pa.array(
                    [[{**o, "metadata": encode_metadata(o["metadata"], max_depth=None)}
                      for o in v]
                     for v in values],
                    pa.list_(pa.struct([("seq", pa.int64()), ("role", pa.string()),
                                        ("session", pa.string()), ("tick", pa.int64()),
                                        ("metadata", pa.string()), ("key", pa.string())])),
                )
            elif key in ("id", "text", "kind"):  # stored as codes or zstd; exported as text
                cols[key] = pa.array(values, pa.string())
            else:
                cols[key] = pa.array(values, ARROW_OF.get(self.types.get(key, "")))
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
        """Write links.parquet."""
        self._table("links.parquet", rows, pa.schema([("a", pa.string()), ("b", pa.string()),
                                                      ("weight", pa.float64()),
                                                      ("tick", pa.int64())]))

    def forgotten(self, rows: list[dict[str, Any]]) -> None:
        """Write forgotten.parquet."""
        self._table("forgotten.parquet", rows, pa.schema([
            ("id", pa.string()), ("tick", pa.int64()), ("reason", pa.string()),
            ("kind", pa.string()), ("collected", pa.bool_()), ("stored", pa.bool_())]))

    def close(self) -> None:
        """Finish engrams.parquet, write header.json, fsync every file and the directory."""
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


# -- readers ------------------------------------------------------------------------------------


class Reader:
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


def open_source(src: Path) -> Reader:
    """A reader of the export at ``src``: a Parquet directory or a JSONL file."""
    if src.is_dir():
        if not (src / HEADER_NAME).exists():
            raise InvalidInput(f"{src} is a directory without {HEADER_NAME}",
                               hint="pass a JSONL export file or a Parquet export directory")
        return ParquetReader(src)
    if not src.exists():
        raise InvalidInput(f"{src} does not exist")
    return JsonlReader(src)


def check_header(doc: Any, source: str) -> dict[str, Any]:
    """Return ``doc`` if it is a header this engramdb reads; raise naming ``source`` if not."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad(f"{source} is not an engramdb export (no {FORMAT} header)",
                  hint="make one with `engramdb export STORE FILE`")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise bad(f"{source}: export version {version!r} is invalid")
    if version > VERSION:
        raise bad(f"{source} has export version {version}; this engramdb reads up to "
                  f"{VERSION}", hint="upgrade engramdb (pip install -U engramdb)")
    dim, dtype, spec = doc.get("dim"), doc.get("dtype"), doc.get("encoder")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise bad(f"{source}: dim must be a positive integer, got {dim!r}")
    if dtype not in ("float32", "float16"):
        raise bad(f"{source}: dtype must be float32 or float16, got {dtype!r}")
    if not isinstance(spec, dict) or spec.get("dim", dim) != dim:
        raise bad(f"{source}: the encoder spec does not match dim {dim}")
    if doc.get("fingerprint") != fingerprint_of(spec):
        raise CorruptStore(f"{source}: the fingerprint does not match the encoder spec")
    for key in ("settings", "counters", "counts"):
        if not isinstance(doc.get(key), dict):
            raise bad(f"{source}: the header lacks {key!r}")
    counts = doc["counts"]
    for key in ("engrams", "occurrences", "links", "forgotten"):
        if not _whole(counts.get(key)) or counts[key] < 0:
            raise bad(f"{source}: the header lacks counts.{key}")
    for key, value in doc["counters"].items():
        if not _whole(value):
            raise bad(f"{source}: counter {key!r} must be an integer, got {value!r:.40}")
    if not isinstance(doc.get("last_turn"), (str, type(None))):
        raise bad(f"{source}: last_turn must be an engram id or null")
    # The settings become the new store's: a value of the wrong type would pass into its
    # manifest and fail every later recall or ingest there.
    try:
        Settings.from_dict({**doc["settings"], "vector_dtype": dtype})
    except InvalidInput as exc:
        raise bad(f"{source}: the exported settings are invalid: {exc.message}") from None
    return doc


def _whole(value: Any) -> bool:
    """Whether ``value`` is an int the catalog's BIGINT columns hold (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


class JsonlReader(Reader):
    """Reads a JSONL export line by line; links and log lines are kept for the end."""

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
        self.header = check_header(first, str(path))

    def _next(self) -> dict[str, Any] | None:
        while True:
            try:
                line = self.fh.readline()
            except UnicodeDecodeError as exc:
                raise bad(f"{self.path}:{self.lineno + 1}: not UTF-8: {exc}") from None
            if not line:
                return None
            self.lineno += 1
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise bad(f"{self.path}:{self.lineno}: bad JSON: {exc.msg}",
                          hint="the export is damaged; export it again") from None
            except RecursionError:  # nested past Python's recursion limit: no export is
                raise bad(f"{self.path}:{self.lineno}: JSON nested too deeply") from None
            if not isinstance(doc, dict):
                raise bad(f"{self.path}:{self.lineno}: expected a JSON object")
            return doc

    def engram_batches(self) -> Iterator[list[dict[str, Any]]]:
        """Yield engram records; links and log lines are collected for later."""
        batch: list[dict[str, Any]] = []
        while (doc := self._next()) is not None:
            kind = doc.pop("type", None)
            if kind == "engram":
                if self._links or self._forgotten:
                    raise bad(f"{self.path}:{self.lineno}: engram after the links")
                vec = doc.get("vector")
                try:
                    doc["vector"] = base64.b64decode(vec, validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise bad(f"{self.path}:{self.lineno}: vector is not base64") from None
                batch.append(doc)
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
            elif kind == "link":
                self._links.append(doc)
            elif kind == "forgotten":
                self._forgotten.append(doc)
            else:
                raise bad(f"{self.path}:{self.lineno}: unknown record type {kind!r}")
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


class ParquetReader(Reader):
    """Reads a Parquet export directory; engrams in batches of :data:`BATCH` rows."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.pq = pq
        self.path = path
        try:
            doc = json.loads((path / HEADER_NAME).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidInput(f"{path / HEADER_NAME}: bad JSON: {exc}") from None
        self.header = check_header(doc, str(path))

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
        except (pa.ArrowException, json.JSONDecodeError, RecursionError) as exc:
            raise bad(f"{self.path}/engrams.parquet is damaged: {exc}") from None

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
