"""What a fleet worker does to one store: open it (never waiting for a lock), run one
operation, close it, and describe the outcome as one row (:func:`engramdb.fleet.run_fleet`).

Everything here runs in a worker process (a process pool's or a Ray task's) and returns plain
data, so the row crosses the process boundary as a small dict. :func:`run_one` never raises:
an error is the row's ``failed`` status (``locked`` for StoreLocked), so one store never stops
the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import engramdb
from engramdb.encoders import Encoder
from engramdb.errors import EngramError, InvalidInput, ReadOnlyStore, StoreLocked
from engramdb.storage.locking import LOCK_NAME
from engramdb.storage.manifest import Manifest

# Encoders built in this worker for reembed, by spec: a model loads once per process.
_ENCODERS: dict[str, Encoder] = {}


def store_stamp(path: str | os.PathLike[str]) -> str:
    """A hash of every file's relative name, size and modification time in the store at
    ``path`` (``LOCK`` aside: each writable open rewrites it). Any write to a store changes
    a file (an append, a catalog commit, a rename), and opening and closing one without
    writing changes none, so an equal stamp means an unchanged store; "" if it is gone."""
    root = Path(path)
    found = []
    try:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                if rel == LOCK_NAME:
                    continue
                st = os.stat(full, follow_symlinks=False)
                found.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
    except OSError:
        return ""  # changed under us (or gone): never equal to a recorded stamp
    if not found:
        return ""
    return hashlib.sha256("\n".join(sorted(found)).encode()).hexdigest()[:32]


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """Run ``task["op"]`` on the store at ``task["path"]``; return its row (see
    :class:`engramdb.fleet.FleetRow`) plus ``stamp``, the store's stamp after the operation
    (None unless it succeeded)."""
    start = time.monotonic()
    status, result, error, stamp = "ok", None, None, None
    try:
        result, stamp = _OPS[task["op"]](Path(task["path"]), task)
        if task["op"] == "verify" and not result["ok"]:
            status, error = "failed", "damaged: " + "; ".join(result["problems"][:5])
    except StoreLocked as exc:
        status, error = "locked", f"{exc.message}; left alone (run the fleet again to resume)"
    except EngramError as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a damaged store can raise anything; report it
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    row = _row(task, status, error)
    row.update(seconds=time.monotonic() - start, result=_plain(result),
               stamp=stamp if status == "ok" else None)
    return row


def failed_row(task: dict[str, Any], error: str) -> dict[str, Any]:
    """The row of a store whose worker could not report (it died, or its answer was lost)."""
    return {**_row(task, "failed", error), "seconds": 0.0, "result": None, "stamp": None}


def _row(task: dict[str, Any], status: str, error: str | None) -> dict[str, Any]:
    return {"store": task["store"], "path": task["path"], "user": task["user"],
            "status": status, "error": error}


def _plain(result: Any) -> dict[str, Any] | None:
    """The result as JSON data (numpy numbers and paths become plain values)."""
    if result is None:
        return None
    return json.loads(json.dumps(result, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


# -- opening ------------------------------------------------------------------------------------


def _open(path: Path, read: bool) -> tuple[engramdb.Store, bool]:
    """Open the existing store with no lock wait: read-only for a read, unless it needs a
    writer first (recovery after a crash, an upgrade: as the CLI's read commands do). Returns
    the handle and whether it is read-only."""
    if read:
        try:
            return engramdb.open(path, create=False, read_only=True), True
        except ReadOnlyStore:
            pass
    return engramdb.open(path, create=False), False


def _with_store(path: Path, read: bool, work: Callable[[engramdb.Store], dict[str, Any]]
                ) -> tuple[dict[str, Any], str]:
    """``work(store)`` on the open store; returns its result and the store's stamp, taken
    under the store's lock for a read-only handle (no writer can move it), just after the
    close otherwise (a writable close may still write)."""
    mem, read_only = _open(path, read)
    try:
        result = work(mem)
        stamp = store_stamp(path) if read_only else None
    except BaseException:
        try:
            mem.close()
        except EngramError:
            pass  # the operation's own error is the one to report
        raise
    mem.close()
    return result, stamp if stamp is not None else store_stamp(path)


# -- the operations -----------------------------------------------------------------------------


def _verify(path: Path, task: dict[str, Any]) -> tuple[dict[str, Any], str]:
    return _with_store(path, True, lambda mem: mem.verify().to_dict())


def _gc(path: Path, task: dict[str, Any]) -> tuple[dict[str, Any], str]:
    return _with_store(path, False, lambda mem: mem.gc())


def _stats(path: Path, task: dict[str, Any]) -> tuple[dict[str, Any], str]:
    def stats(mem: engramdb.Store) -> dict[str, Any]:
        data = mem.stats()
        data["files"] = len(data.get("files") or {})  # per-file sizes: too much per store
        return data

    return _with_store(path, True, stats)


def _export(path: Path, task: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Export to ``DEST/<store name>.<fmt>``: written under a temporary name, then renamed.
    An existing file is replaced only when a run resumes an earlier run of this same export
    (its progress log says so: the file is that run's, whether or not it logged the store
    before it was killed); a first run (or ``--restart``) refuses one, as `engramdb export`
    does."""
    from engramdb.transfer import export_store

    fmt = task["fmt"]
    stem = path.name[: -len(".engram")] if path.name.endswith(".engram") else path.name
    final = Path(task["dest"]) / f"{stem}.{fmt}"
    if final.exists() and not task.get("replace"):
        raise InvalidInput(f"{final} already exists",
                           hint="export into a new DEST, or remove it (a run of the same "
                                "export resumes and replaces only files it made)")
    tmp = final.parent / f".{final.name}.fleet-{uuid.uuid4().hex[:8]}"

    def export(mem: engramdb.Store) -> dict[str, Any]:
        counts = export_store(mem, tmp, fmt)
        return {**counts, "file": str(final)}

    try:
        result = _with_store(path, True, export)
        if fmt == "parquet" and final.is_dir():
            shutil.rmtree(final)  # a directory cannot be renamed over a full one
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
    return result


def _encoder(plan: dict[str, Any]) -> Encoder:
    """The reembed encoder: sent as is, or built from its spec once per worker."""
    if "instance" in plan:
        return plan["instance"]
    key = json.dumps(plan, sort_keys=True)
    if key not in _ENCODERS:
        if plan.get("default"):
            _ENCODERS[key] = engramdb.encoders.default()
        else:
            _ENCODERS[key] = engramdb.encoders.from_spec(plan["spec"])
    return _ENCODERS[key]


def _reembed(path: Path, task: dict[str, Any]) -> tuple[dict[str, Any], str]:
    from engramdb.reembed import ID_MAP_NAME, reembed  # imported when used

    encoder = _encoder(task["encoder"])
    try:
        current = Manifest.read(path).fingerprint
    except EngramError:
        current = None  # reembed reports what is wrong with the store
    if current == encoder.fingerprint:
        # Done already (by a run whose progress was lost, or by hand): nothing to do is a
        # success here, so a fleet can be run again until every store is converted.
        return {"engrams": 0, "already": True}, store_stamp(path)
    ids = reembed(path, encoder, progress=False)
    # The map old id -> new id stays in the store (ID_MAP_NAME); the row only counts it.
    return {"engrams": len(ids), "id_map": str(path / ID_MAP_NAME)}, store_stamp(path)


def _custom(path: Path, task: dict[str, Any]) -> tuple[dict[str, Any], str]:
    result = task["fn"](path, **task["kwargs"])
    if not isinstance(result, dict):
        raise InvalidInput(f"the operation returned {type(result).__name__}, not a dict")
    return result, store_stamp(path)


_OPS: dict[str, Callable[[Path, dict[str, Any]], tuple[dict[str, Any], str]]] = {
    "verify": _verify, "gc": _gc, "stats": _stats, "export": _export, "reembed": _reembed,
    "custom": _custom,
}
