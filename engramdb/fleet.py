"""Run one maintenance operation over every store under a :class:`~engramdb.Pool` root.

A service with a store per user needs the single-store commands (``verify``, ``gc``,
``stats``, ``export``, ``reembed``) over thousands of stores. :func:`run_fleet` finds the
stores the way :meth:`Pool.user_listing` does (every ``*.engram`` directory directly under the
root, read from the manifests: nothing is opened to list them), runs the operation on each in a
worker process, and returns a :class:`FleetResult`: one row per store.

- **Where it runs.** Locally on a process pool (``workers`` processes, default: the CPUs this
  process may use), or with ``ray_address`` as one Ray task per store (``"local"`` starts a
  Ray on this machine; ``"host:port"``/``"ray://..."``/``"auto"`` join a cluster whose nodes
  see the stores at the same paths). Ray is the optional ``ray`` extra, imported only here.
- **Never waits for a lock.** Each store is opened with no wait (``lock_timeout=0``); one held
  by a running server is reported ``locked`` and left alone. Read operations (verify, stats,
  export) open read-only, as the CLI does, so they also run beside other readers.
- **One store never stops the others.** An error (a damaged store, a full disk) is that
  store's ``failed`` row. A worker process that dies in native code (a damaged file crashing
  a library) breaks a process pool: the stores that were in flight are then rerun one at a
  time in a fresh process, so only the one that crashes is reported, and the run goes on.
  Ray reports a dead worker for its task alone.
- **A re-run resumes.** Each finished store is appended (and fsynced) to a progress log,
  ``ROOT/.fleet/<op>-<hash of the arguments>.jsonl``. A later run of the same operation with
  the same arguments skips (``skipped``) the stores it finished ``ok`` whose files have not
  changed since (a stamp of every file's size and modification time, taken under the store's
  lock or just after the operation closed it); ``resume=False`` starts over. ``.fleet`` is
  never listed as a store (a Pool lists ``*.engram`` names only, never dot names).

>>> result = run_fleet("memories", "verify")  # doctest: +SKIP
>>> result.counts()  # doctest: +SKIP
{'ok': 998, 'failed': 1, 'locked': 1, 'skipped': 0}
"""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engramdb import fleet_ops
from engramdb.encoders import Encoder, HashingEncoder
from engramdb.errors import EngramError, InvalidInput, StorageError, StoreLocked
from engramdb.pool import Pool
from engramdb.storage.manifest import MANIFEST_NAME

OPS = ("verify", "gc", "stats", "export", "reembed")
STATUSES = ("ok", "failed", "locked", "skipped")
STATE_DIR = ".fleet"  # under the root; a dot name, so no Pool ever lists it as a store
LOG_VERSION = 1
RAY_INSTALL = "pip install 'engramdb[ray]'"
_RAY_OBJECT_STORE = 100 * 2**20  # a local Ray only carries small rows: keep its shm small
_CONNECT_TIMEOUT = 5.0  # seconds to reach a Ray head before giving up
_IN_FLIGHT_PER_WORKER = 2  # queued per worker: enough to keep it busy, few to rerun on a crash


class WorkersDied(EngramError):
    """The fleet's worker processes died before running any store: the set-up is at fault."""

    default_hint = ("in a script, call run_fleet under `if __name__ == \"__main__\":` (worker "
                    "processes import the main module, as with any multiprocessing); otherwise "
                    "read the workers' errors above")


class RayUnavailable(EngramError):
    """Ray (the ``ray`` extra) is not installed, or the Ray cluster could not be reached."""

    default_hint = f"install it with {RAY_INSTALL}, or run without --ray (a local process pool)"


@dataclass
class FleetRow:
    """One store's outcome. ``status``: ``ok``, ``failed`` (``error`` says why), ``locked``
    (held by another process: left alone) or ``skipped`` (done by an earlier run of the same
    operation and unchanged since; ``result`` is that run's). ``user`` is None for a store
    whose manifest records no user. ``result`` is the operation's dict (verify's report, gc's
    counts, stats without the per-file sizes, export's counts and file)."""

    store: str
    path: str
    user: str | None
    status: str
    seconds: float = 0.0
    result: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"store": self.store, "path": self.path, "user": self.user,
                "status": self.status, "seconds": round(self.seconds, 4),
                "result": self.result, "error": self.error}


@dataclass
class FleetResult:
    """What :func:`run_fleet` did: one :class:`FleetRow` per store, sorted by directory."""

    op: str
    root: str
    args: dict[str, Any]
    backend: str  # "processes" or "ray"
    workers: int
    seconds: float
    log: str | None
    rows: list[FleetRow] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many stores ended in each status (every status present, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for row in self.rows:
            counts[row.status] += 1
        return counts

    @property
    def ok(self) -> bool:
        """True when every store is ``ok`` or was done by an earlier run (``skipped``)."""
        return all(row.status in ("ok", "skipped") for row in self.rows)

    @property
    def exit_code(self) -> int:
        """0: every store succeeded; 1: some store failed; 2: none failed, some were locked
        (the CLI's codes: 2 is "could not run", which says nothing about the store)."""
        counts = self.counts()
        if counts["failed"]:
            return 1
        return 2 if counts["locked"] else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: the run's parameters, counts and every row."""
        return {"op": self.op, "root": self.root, "args": self.args, "backend": self.backend,
                "workers": self.workers, "seconds": round(self.seconds, 3), "log": self.log,
                "ok": self.ok, "exit_code": self.exit_code, "counts": self.counts(),
                "stores": [row.to_dict() for row in self.rows]}


def run_fleet(
    root: str | os.PathLike[str],
    op: str | Callable[..., dict[str, Any]],
    *,
    dest: str | os.PathLike[str] | None = None,
    fmt: str = "jsonl",
    encoder: Encoder | str | dict[str, Any] | None = None,
    dim: int = 256,
    kwargs: dict[str, Any] | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
    resume: bool = True,
    progress: bool = False,
    state_dir: str | os.PathLike[str] | None = None,
) -> FleetResult:
    """Run ``op`` over every store under ``root`` (a Pool's directory); see the module doc.

    ``op``: ``"verify"``, ``"gc"``, ``"stats"``, ``"export"`` (needs ``dest``: a directory that
    gets one file per store, ``<store name>.jsonl``, or a Parquet directory with
    ``fmt="parquet"``), ``"reembed"`` (needs ``encoder``: an Encoder, a manifest spec dict,
    ``"hashing"`` with ``dim``, or ``"default"``; each worker builds it once), or a picklable
    module-level function ``op(path, **kwargs) -> dict`` that opens the store itself (with no
    lock wait: StoreLocked makes the row ``locked``).

    ``ray_address``: None for a local process pool of ``workers`` processes; ``"local"`` to
    start a Ray on this machine (``workers`` CPUs) and stop it afterwards, or a cluster's
    address. If this process is already connected to Ray, that connection is used and left
    running (start Ray once yourself to run several fleets without paying its start each
    time). With Ray, ``workers`` caps the stores in flight. ``resume=False`` forgets earlier
    runs (the progress log starts over); ``state_dir`` moves that log (default
    ``ROOT/.fleet``, e.g. when the root is read-only). ``progress`` draws a bar on stderr.

    In a script, call it under ``if __name__ == "__main__":``: the worker processes import
    the main module, as with any multiprocessing (spawn or fork server).

    Raises InvalidInput (bad arguments, a root that is missing or is itself a store),
    StoreLocked (the same operation is already running over this root), StorageError (the
    progress log cannot be written), RayUnavailable, WorkersDied (worker processes die before
    running any store). Per-store failures are rows, not errors.
    """
    root_path = _check_root(root)
    name, args, template = _plan(op, dest, fmt, encoder, dim, kwargs)
    _check_options(workers, ray_address, resume, progress)
    if template.get("dest"):
        _make_dest(Path(template["dest"]))
    state = Path(state_dir) if state_dir is not None else root_path / STATE_DIR
    start = time.monotonic()
    stores = _stores(root_path)
    rows: list[FleetRow] = []
    with _ProgressLog(state, name, args, resume) as log:
        if template.get("dest"):
            _sweep_dest(Path(template["dest"]), template["fmt"])
        tasks = []
        for entry in stores:  # a row now (skipped, not a store), or a task for a worker
            row, task = _prepare(entry, template, log.done.get(entry.name), log.resumed)
            rows.extend([row] if row is not None else [])
            tasks.extend([] if row is not None else [task])
        bar = _bar(len(stores), progress, name)
        if bar is not None:
            bar.update(len(rows))

        def finished(data: dict[str, Any]) -> None:
            stamp = data.pop("stamp", None)
            row = FleetRow(**data)
            rows.append(row)
            log.append(row, stamp)
            if bar is not None:
                bar.update(1)

        try:
            if ray_address is None:
                backend, used = "processes", _run_processes(tasks, workers, finished)
            else:
                backend, used = "ray", _run_ray(tasks, ray_address, workers, finished)
        finally:
            if bar is not None:
                bar.close()
    rows.sort(key=lambda r: r.store)
    return FleetResult(op=name, root=str(root_path), args=args, backend=backend, workers=used,
                       seconds=time.monotonic() - start, log=str(log.path), rows=rows)


# -- checking and planning ----------------------------------------------------------------------


def _check_root(root: str | os.PathLike[str]) -> Path:
    try:
        path = Path(root).resolve()
    except (TypeError, OSError) as exc:
        raise InvalidInput(f"bad root {root!r}: {exc}") from None
    if not path.is_dir():
        raise InvalidInput(f"{path} is not a directory",
                           hint="pass the root directory of a Pool (its stores are in it)")
    if (path / MANIFEST_NAME).exists():
        raise InvalidInput(f"{path} is a store, not a directory of stores",
                           hint="run the single-store command on it (e.g. engramdb verify PATH)")
    return path


def _check_options(workers: Any, ray_address: Any, resume: Any, progress: Any) -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise InvalidInput(f"workers must be an int >= 1 or None, got {workers!r}")
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address):
        raise InvalidInput(f"ray_address must be a non-empty str or None, got {ray_address!r}")
    if not isinstance(resume, bool) or not isinstance(progress, bool):
        raise InvalidInput("resume and progress must be True or False")


def default_workers() -> int:
    """The CPUs this process may run on (its affinity where the OS tells), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def _plan(op: str | Callable[..., dict[str, Any]], dest: Any, fmt: str, encoder: Any, dim: int,
          kwargs: dict[str, Any] | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Check the operation's arguments; return its name, the arguments that identify a run
    (hashed into the progress log's name) and the task fields every store shares."""
    if callable(op):
        qualname = f"{getattr(op, '__module__', '?')}.{getattr(op, '__qualname__', '?')}"
        if "<" in qualname:  # a lambda or a local function: no worker could import it
            raise InvalidInput(f"op {qualname} is not a module-level function",
                               hint="define the operation at the top level of a module")
        kwargs = dict(kwargs or {})
        _check_picklable({"op": op, "kwargs": kwargs}, "op and kwargs")
        args = {"function": qualname, "kwargs": kwargs}
        return "custom", json.loads(json.dumps(args, default=repr)), {
            "op": "custom", "fn": op, "kwargs": kwargs}
    if op not in OPS:
        raise InvalidInput(f"unknown operation {op!r}; use one of {', '.join(OPS)}")
    if kwargs:
        raise InvalidInput("kwargs are for a custom operation (a function)")
    if (dest is not None) != (op == "export"):
        raise InvalidInput("export needs dest (a directory)" if op == "export"
                           else f"{op} takes no dest")
    if (encoder is not None) != (op == "reembed"):
        raise InvalidInput("reembed needs encoder" if op == "reembed"
                           else f"{op} takes no encoder")
    template: dict[str, Any] = {"op": op}
    args: dict[str, Any] = {}
    if op == "export":
        if fmt not in ("jsonl", "parquet"):
            raise InvalidInput(f"unknown export format {fmt!r}; use jsonl or parquet")
        template["dest"] = str(Path(dest).resolve())
        template["fmt"] = fmt
        args = {"dest": template["dest"], "fmt": fmt}
    elif op == "reembed":
        template["encoder"], args["encoder"] = _encoder_plan(encoder, dim)
    return op, args, template


def _encoder_plan(encoder: Any, dim: int) -> tuple[dict[str, Any], Any]:
    """What a worker needs to build the reembed encoder, and what identifies it. A spec is
    sent rather than the model, so each worker builds (loads) it once."""
    if encoder == "hashing":
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise InvalidInput(f"dim must be an int >= 2, got {dim!r}")
        spec = HashingEncoder(dim=dim).spec()
        return {"spec": spec}, spec
    if encoder == "default":
        return {"default": True}, "default"  # loaded in the workers, never in this process
    if isinstance(encoder, dict):
        return {"spec": encoder}, encoder
    if isinstance(encoder, Encoder):
        spec = encoder.spec()
        if spec.get("kind") in ("hashing", "transformers"):
            return {"spec": spec}, spec  # rebuilt from its spec in each worker
        _check_picklable(encoder, "the encoder")
        return {"instance": encoder}, {"fingerprint": encoder.fingerprint}
    raise InvalidInput(f"encoder must be an Encoder, a spec dict, 'hashing' or 'default', "
                       f"got {encoder!r}")


def _check_picklable(obj: Any, what: str) -> None:
    try:
        pickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001 - pickling raises many types
        raise InvalidInput(f"{what} cannot be sent to worker processes: {exc}",
                           hint="use module-level functions and plain data") from None


def _make_dest(dest: Path) -> None:
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the export directory {dest}: {exc}") from exc


def _sweep_dest(dest: Path, fmt: str) -> None:
    """Delete the temporary files (``.NAME.FMT.fleet-XXXXXXXX``) that workers of a killed
    run of this export left in ``dest``. Called under the progress log's lock: no other run
    of the same export (same DEST and format) is writing there."""
    for tmp in dest.glob(f".*.{fmt}.fleet-????????"):
        try:
            shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
        except OSError:
            pass  # a leftover only costs disk; the export does not read it


# -- the stores ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str
    path: Path
    user: str | None
    problem: str | None = None  # why it cannot be a store at all (not a directory)


def _stores(root: Path) -> list[_Entry]:
    """Every store directory under ``root``, as :meth:`Pool.user_listing` finds them: listed
    users, stores with no recorded user, and damaged manifests (which the operation then
    reports, as opening them does: a store copied by hand still runs)."""
    with Pool(root) as pool:  # opens nothing: the listing reads manifests only
        listing = pool.user_listing()
        entries = [_Entry(pool.path_for(u).name, pool.path_for(u), u) for u in listing.users]
    entries += [_Entry(n, root / n, None) for n in listing.unknown]
    for name, why in listing.damaged.items():
        is_dir = (root / name).is_dir() and not (root / name).is_symlink()
        entries.append(_Entry(name, root / name, None, None if is_dir else why))
    return sorted(entries, key=lambda e: e.name)


def _prepare(entry: _Entry, template: dict[str, Any], done: dict[str, Any] | None,
             resumed: bool) -> tuple[FleetRow | None, dict[str, Any]]:
    """The row of a store that needs no work (skipped, or not a store), or its task.
    ``resumed``: an earlier run of the same operation made the files it finds in DEST."""
    base = {"store": entry.name, "path": str(entry.path), "user": entry.user}
    if entry.problem is not None:
        return FleetRow(**base, status="failed", error=entry.problem), {}
    redo = done is not None and done.get("status") == "ok"
    if redo and done.get("stamp") and done["stamp"] == fleet_ops.store_stamp(entry.path):
        return FleetRow(**base, status="skipped", result=done.get("result")), {}
    # A store done before and changed since, or one an earlier run of this same export was
    # killed on after its file was renamed into place and before its log line: the file is
    # this export's to replace.
    return None, {**template, **base, "replace": redo or resumed}


def _bar(total: int, enabled: bool, name: str) -> Any:
    if not enabled or total <= 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"fleet {name}", unit="store")


# -- the progress log ---------------------------------------------------------------------------


class _ProgressLog:
    """``<state>/<op>-<hash>.jsonl``: a header line, then one line per finished store,
    appended and fsynced as each finishes, so a run killed at any point resumes from it.

    The file is flocked for the run: a second run of the same operation over the same root
    is refused (StoreLocked) instead of racing the first. ``done`` maps each store to its
    last line (a torn last line, from a crash mid-append, is ignored).
    """

    def __init__(self, state: Path, op: str, args: dict[str, Any], resume: bool) -> None:
        key = json.dumps({"op": op, "args": args}, sort_keys=True, default=str)
        self.path = state / f"{op}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsonl"
        self.header = {"fleet_log": LOG_VERSION, "op": op, "args": args}
        self.resume = resume
        self.done: dict[str, dict[str, Any]] = {}
        self.resumed = False  # this run continues an earlier one (the log held its header)
        self._fd = -1

    def __enter__(self) -> _ProgressLog:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot write the fleet progress log {self.path}: {exc}",
                               hint="make the root writable, or pass another state "
                                    "directory (--state-dir)") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(f"another fleet {self.header['op']} run over this root is in "
                              f"progress (it holds {self.path})",
                              hint="wait for it to finish; run again then to resume") from None
        self._fd = fd
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        return self

    def _load(self) -> None:
        with open(self._fd, "rb", closefd=False) as f:
            data = f.read()
        if not self.resume:
            os.ftruncate(self._fd, 0)
            data = b""
        for line in data.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn line: that store is simply redone
            if isinstance(entry, dict) and isinstance(entry.get("store"), str):
                self.done[entry["store"]] = entry
        self.resumed = bool(data)
        if not data:
            self._write(self.header)
        elif not data.endswith(b"\n"):
            self._write(None)  # end the torn line, so the next entry starts a line of its own

    def append(self, row: FleetRow, stamp: str | None) -> None:
        """Record ``row`` durably (fsynced) before the run moves on."""
        self._write({**row.to_dict(), "stamp": stamp, "at": round(time.time(), 3)})

    def _write(self, entry: dict[str, Any] | None) -> None:
        line = b"\n" if entry is None else (
            json.dumps(entry, sort_keys=True, default=str).encode() + b"\n")
        try:
            os.write(self._fd, line)
            os.fsync(self._fd)
        except OSError as exc:
            raise StorageError(f"cannot append to the fleet progress log {self.path}: {exc}"
                               ) from exc

    def close(self) -> None:
        """Release the log's lock (idempotent)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the local process pool ---------------------------------------------------------------------


def _mp_context() -> Any:
    """Workers are forked from a fork server that has imported engramdb once, so each starts
    in milliseconds with nothing of this process (threads, open stores) in it; spawn where
    there is no fork server."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # Only effective before the fork server starts; '__main__' is the default list.
        ctx.set_forkserver_preload(["__main__", __name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _run_processes(tasks: list[dict[str, Any]], workers: int | None,
                   finished: Callable[[dict[str, Any]], None]) -> int:
    """Run ``tasks`` on a process pool; report each row through ``finished``. Returns the
    number of worker processes.

    Raises WorkersDied when worker processes die before any has answered (twice alone on a
    store): a fault of the set-up, not of the stores, which would otherwise fail them all.
    """
    workers = workers or default_workers()
    pending = deque(tasks)
    ctx = _mp_context()
    answered = False
    lone_deaths = 0

    def relay(data: dict[str, Any]) -> None:  # a row a live worker sent back
        nonlocal answered
        answered = True
        finished(data)

    while pending:
        suspects = _drain(pending, min(workers, len(pending)), ctx, relay)
        for task in suspects:  # the pool broke: rerun each store it had in flight alone
            if not _drain(deque([task]), 1, ctx, relay):
                continue
            finished(fleet_ops.failed_row(task, _DIED))
            lone_deaths += 1
            if not answered and lone_deaths >= 2:
                raise WorkersDied("fleet worker processes die before running any store; "
                                  "see their messages on stderr")
    return workers


_DIED = ("the worker process died on this store (a crash in native code, or killed: out of "
         "memory?)")


def _drain(pending: deque[dict[str, Any]], workers: int, ctx: Any,
           finished: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Feed ``pending`` to one pool of ``workers`` processes, a few tasks per worker at a
    time. Returns [] when all ran, or, if a worker process died (which breaks the whole
    pool), the tasks in flight then that did not finish: one of them killed it."""
    in_flight: dict[cf.Future[dict[str, Any]], dict[str, Any]] = {}
    window = workers * _IN_FLIGHT_PER_WORKER
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        while pending or in_flight:
            while pending and len(in_flight) < window:
                try:
                    in_flight[pool.submit(fleet_ops.run_one, pending[0])] = pending[0]
                except cf.process.BrokenProcessPool:  # a worker died since the last wait
                    return _after_break(in_flight, finished)
                pending.popleft()
            done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            if any(isinstance(f.exception(), cf.process.BrokenProcessPool) for f in done):
                return _after_break(in_flight, finished)
            for future in done:
                task = in_flight.pop(future)
                exc = future.exception()
                if exc is None:
                    finished(future.result())
                else:  # e.g. a result that did not pickle: run_one itself never raises
                    finished(fleet_ops.failed_row(task, f"{type(exc).__name__}: {exc}"))
        return []
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _after_break(in_flight: dict[cf.Future[dict[str, Any]], dict[str, Any]],
                 finished: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """A worker died and the pool is broken: keep the rows that finished before it, and
    return the other tasks that were in flight (the suspects)."""
    suspects = []
    for future, task in in_flight.items():
        if future.exception() is None:  # every pending future fails once the pool breaks
            finished(future.result())
        else:
            suspects.append(task)
    return suspects


# -- Ray ----------------------------------------------------------------------------------------


def _ray_connect(address: str, workers: int | None) -> tuple[Any, bool]:
    """The ray module, connected; and whether this call started the connection (and so
    shuts it down afterwards)."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(f"--ray needs the ray package, which is not installed ({exc})",
                             hint=f"install it with {RAY_INSTALL}") from None
    if ray.is_initialized():
        return ray, False
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address == "local":
        # A private cluster for this run: no dashboard (no extra server), no usage report.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        options.update(num_cpus=workers or default_workers(), include_dashboard=False,
                       object_store_memory=_RAY_OBJECT_STORE)
    hint = ("check the address (host:port of the head node, ray://host:10001, or auto), or "
            "use --ray alone for a local Ray")
    _check_reachable(address, hint)
    try:
        ray.init(address=address, **options)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError...
        raise RayUnavailable(f"cannot start or reach Ray at {address!r}: {exc}",
                             hint=hint) from None
    return ray, True


def _check_reachable(address: str, hint: str) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) nobody listens on, at once: Ray's own
    connect retries for minutes before it gives up."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return  # "auto", "local", or a form Ray itself will judge
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot reach Ray at {address!r}: {exc}", hint=hint) from None


def _run_ray(tasks: list[dict[str, Any]], address: str, workers: int | None,
             finished: Callable[[dict[str, Any]], None]) -> int:
    """Run each task as a Ray task (one CPU, no retry: a crash is that store's failure);
    at most ``workers`` (default: twice the cluster's CPUs) in flight. Returns the CPUs
    the cluster offered (0 when there was nothing to run: Ray is then not even started)."""
    if not tasks:
        return 0
    ray, started = _ray_connect(address, workers)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
        window = workers or cpus * _IN_FLIGHT_PER_WORKER
        remote = ray.remote(num_cpus=1, max_retries=0)(fleet_ops.run_one)
        pending = deque(tasks)
        in_flight: dict[Any, dict[str, Any]] = {}
        while pending or in_flight:
            while pending and len(in_flight) < window:
                task = pending.popleft()
                in_flight[remote.remote(task)] = task
            ready, rest = ray.wait(list(in_flight), num_returns=1)
            if rest:  # collect whatever else is done too, without waiting
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                task = in_flight.pop(ref)
                try:
                    data = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - WorkerCrashedError, OOM, ...
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    data = fleet_ops.failed_row(task, f"{type(exc).__name__}: {first}")
                finished(data)
        return cpus
    finally:
        if started:
            ray.shutdown()


__all__ = ["OPS", "STATUSES", "FleetResult", "FleetRow", "RayUnavailable", "WorkersDied",
           "default_workers", "run_fleet"]
