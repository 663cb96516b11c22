"""Import: a new store made from an export, built beside its destination and renamed into
place only once it verifies clean.

The file is read and checked here (ids against texts, vector sizes, kinds, links and log
entries against the engrams, counts against the header); the rows are written by the
engine's :class:`~engramdb.engine.restore.Restorer` through the store's one commit
primitive. Internal eids are handed out afresh: links and the log name engrams by content id.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engramdb.content import (
    check_key,
    compress_text,
    content_id,
    encode_metadata,
    normalize_text,
)
from engramdb.encoders.base import Encoder
from engramdb.engine.restore import Restorer
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
from engramdb.storage.fsio import fsync_dir
from engramdb.storage.locking import StoreLock
from engramdb.store import open as open_store
from engramdb.transfer.formats import ARROW_OF, KIND_HINT, PHYSICAL, Reader, bad, open_source
from engramdb.types import KIND_CODES

_OCCURRENCE_COLUMNS = ("eid", "seq", "role", "session", "tick", "metadata", "key")


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
    dest = Path(dest_path)
    if dest.is_file() or dest.is_symlink():
        raise InvalidInput(f"{dest} exists and is a file", hint="import into a new path")
    if dest.is_dir() and any(dest.iterdir()):
        raise InvalidInput(f"{dest} exists and is not empty",
                           hint="import into a new path; import never merges into a store")
    reader = open_source(Path(source))
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
        raise bad(f"{source}: the exported settings are invalid: {exc}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_imports(dest)
    tmp = dest.parent / f".{dest.name}.import-{uuid.uuid4().hex[:8]}"
    try:
        stats = _build(tmp, reader, settings_obj, str(source), progress)
        _move_into_place(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, EngramError):
            raise StorageError(f"import into {dest} failed: {exc}") from exc
        raise
    finally:
        reader.close()
    stats["path"] = str(dest)
    return stats


def _build(tmp: Path, reader: Reader, settings: Settings, source: str,
           progress: bool) -> dict[str, Any]:
    """Make the store at ``tmp``, write the export into it, reopen, rebuild and verify it;
    return its stats. On any error the store is closed (its directory is the caller's)."""
    header = reader.header
    stand_in = _SpecEncoder(header["encoder"], header["dim"])
    store = None
    try:
        store = open_store(tmp, encoder=stand_in, settings=settings)
        rows = header["counts"]["engrams"]
        _Importer(store.restorer(rows), header, source).run(reader, progress)
        store.close()
        # Reopen: the store rebuilds its in-memory state (and derived indexes) from what was
        # committed, exactly as it would after a crash; then it must verify clean.
        store = open_store(tmp, encoder=stand_in)
        store.rebuild()
        report = store.verify()
        if not report.ok:
            raise CorruptStore(f"{source}: the imported store does not verify: "
                               + "; ".join(report.problems[:3]))
        stats = store.stats()
        store.close()
        store = None
    except BaseException:
        if store is not None:
            try:
                store.close()
            except EngramError:
                pass  # its directory is removed next; what matters is the first error
        raise
    return stats


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished store at ``tmp`` to ``dest`` (absent, or an empty directory)."""
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


class _Importer:
    """Checks parsed records and hands them to a :class:`Restorer` as catalog rows."""

    def __init__(self, restorer: Restorer, header: dict[str, Any], source: str) -> None:
        self.restorer = restorer
        self.header = header
        self.source = source
        self.fingerprint = header["fingerprint"]
        self.itemsize = np.dtype(header["dtype"]).itemsize
        self.eid_of: dict[str, int] = {}
        self.max_seq = 0
        self.n_occ = 0
        self.keys: set[str] = set()
        self.types = {name: restorer.column_types(name)
                      for name in ("engrams", "occurrences", "edges", "forgotten")}

    def run(self, reader: Reader, progress: bool) -> None:
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
        """Check one batch of engram records and commit it."""
        extra_cols = [c for c in self.types["engrams"] if c not in PHYSICAL]
        vecs = np.empty((len(batch), self.header["dim"]), self.restorer.dtype)
        cols: dict[str, list[Any]] = {c: [] for c in ("eid", "id", "text", "kind", *extra_cols)}
        occ: dict[str, list[Any]] = {c: [] for c in _OCCURRENCE_COLUMNS}
        first = self.restorer.next_eid
        for i, rec in enumerate(batch):
            ident, text, kind = self._engram(rec, vecs, i)
            eid = first + i
            self.eid_of[ident] = eid
            cols["eid"].append(eid)
            cols["id"].append(ident)
            cols["text"].append(compress_text(text))
            cols["kind"].append(KIND_CODES[kind])
            for c in extra_cols:
                cols[c].append(rec.get(c))
            self._occurrences(rec, eid, f"{self.source}: engram {ident[:12]}", occ)
        engram_rows = _arrow(cols, self.types["engrams"], self.source)
        occ_rows = _arrow(occ, self.types["occurrences"], self.source)
        self.restorer.add_engrams(engram_rows, occ_rows, vecs)

    def _engram(self, rec: dict[str, Any], vecs: np.ndarray, i: int) -> tuple[str, str, str]:
        """Check one engram record, put its vector in ``vecs[i]``; return id, text, kind."""
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
        dim = self.header["dim"]
        row_bytes = dim * self.itemsize
        raw = rec.get("vector")
        if not isinstance(raw, bytes) or len(raw) != row_bytes:
            size = len(raw) if isinstance(raw, bytes) else type(raw).__name__
            raise bad(f"{where}: vector has {size} bytes, expected {row_bytes} "
                      f"({dim} x {self.header['dtype']})")
        vec = np.frombuffer(raw, self.restorer.dtype)
        if not np.isfinite(vec).all():
            raise bad(f"{where}: vector has non-finite values")
        vecs[i] = vec
        kind = rec.get("kind")
        if kind not in KIND_CODES:
            raise bad(f"{where}: unknown kind {kind!r}", hint=KIND_HINT)
        return ident, text, kind

    def _occurrences(self, rec: dict[str, Any], eid: int, where: str,
                     occ: dict[str, list[Any]]) -> None:
        """Check an engram record's occurrences and add them to ``occ``."""
        occurrences = rec.get("occurrences") or []
        if not isinstance(occurrences, list):
            raise bad(f"{where}: occurrences must be a list")
        for o in occurrences:
            if not isinstance(o, dict) or not isinstance(o.get("seq"), int) or not \
                    isinstance(o.get("tick"), int):
                raise bad(f"{where}: an occurrence lacks an integer seq or tick")
            occ["eid"].append(eid)
            occ["seq"].append(o["seq"])
            occ["role"].append(o.get("role"))
            occ["session"].append(o.get("session"))
            occ["tick"].append(o["tick"])
            occ["metadata"].append(encode_metadata(o.get("metadata"), max_depth=None))
            occ["key"].append(self._key(o.get("key"), where))
            self.max_seq = max(self.max_seq, o["seq"])
        self.n_occ += len(occurrences)

    def _key(self, key: Any, where: str) -> str | None:
        """An occurrence's caller key, checked as the front door checks it, and unique."""
        if key is None:
            return None
        try:
            key = check_key(key)
        except InvalidInput as exc:
            raise bad(f"{where}: {exc}") from exc
        if key in self.keys:
            raise bad(f"{where}: key {key!r} is held by two occurrences")
        self.keys.add(key)
        return key

    def _finish(self, links: list[dict[str, Any]], forgotten: list[dict[str, Any]]) -> None:
        """Check the links and the log, then commit them with the counters."""
        edge_cols = self._edges(links)
        log_cols, next_eid = self._log(forgotten)
        counters = {k: int(v) for k, v in self.header["counters"].items()
                    if k != "synced_eid"}  # an eid of the exporting store, if a file has it
        counters["next_eid"] = next_eid
        counters["next_seq"] = max(counters.get("next_seq", 1), self.max_seq + 1)
        turn = self.header.get("last_turn")
        if turn is not None and turn not in self.eid_of:
            raise bad(f"{self.source}: last_turn names an engram the file lacks")
        self.restorer.finish(
            _arrow(edge_cols, self.types["edges"], self.source),
            _arrow(log_cols, self.types["forgotten"], self.source),
            counters, None if turn is None else self.eid_of[turn])

    def _edges(self, links: list[dict[str, Any]]) -> dict[str, list[Any]]:
        """The edges table's columns for the link records (eids at both ends, a < b)."""
        edge_cols: dict[str, list[Any]] = {c: [] for c in self.types["edges"]}
        for r in links:
            a, b = r.get("a"), r.get("b")
            if a not in self.eid_of or b not in self.eid_of:
                raise bad(f"{self.source}: a link names an engram the file lacks "
                          f"({str(a)[:12]} - {str(b)[:12]})")
            ea, eb = sorted((self.eid_of[a], self.eid_of[b]))  # edges keep a < b
            for c in edge_cols:
                edge_cols[c].append(ea if c == "a" else eb if c == "b" else r.get(c))
        return edge_cols

    def _log(self, forgotten: list[dict[str, Any]]) -> tuple[dict[str, list[Any]], int]:
        """The forgotten table's columns for the log records, and the next eid after them."""
        log_cols: dict[str, list[Any]] = {c: [] for c in self.types["forgotten"]}
        next_eid = self.restorer.next_eid
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
                raise bad(f"{self.source}: forgotten entry with kind {kind!r}", hint=KIND_HINT)
            values = {**r, "eid": eid, "collected": bool(r.get("collected")),
                      "kind": KIND_CODES[kind]}
            for c in log_cols:
                log_cols[c].append(values.get(c))
        return log_cols, next_eid


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


def _arrow(cols: dict[str, list[Any]], types: dict[str, str], source: str) -> pa.Table:
    """Columns of values as an Arrow table of the catalog's types; InvalidInput naming the
    file for a value that does not fit."""
    arrays = {}
    for name, values in cols.items():
        try:
            arrays[name] = pa.array(values, ARROW_OF.get(types.get(name, "")))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise bad(f"{source}: bad value in column {name}: {exc}") from None
    return pa.table(arrays)


def _field(rec: dict[str, Any], key: str, typ: type, source: str) -> Any:
    """``rec[key]`` if it is a ``typ``; InvalidInput naming the file otherwise."""
    value = rec.get(key)
    if not isinstance(value, typ):
        raise bad(f"{source}: an engram record has no valid {key!r}")
    return value
