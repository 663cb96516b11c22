"""I/O-error injection: a failing write, fsync, rename or catalog commit never damages a store.

Faults are injected in-process: the ``os`` module seen by engramdb's storage modules is
replaced by a proxy, and every Catalog's DuckDB connection by a proxy, each of which raises
``OSError(EIO)`` / ``duckdb.IOException`` at the n-th matching call (once, or from then on).
For every fault during ``ingest_many``, ``gc`` (after ``forget``) and ``rebuild`` we check that:

- the caller gets an :class:`engramdb.errors.EngramError`, never a raw OSError/duckdb error;
- nothing was acknowledged that was not stored, and the same handle keeps working once the
  fault is gone;
- closing and reopening the store ``verify()``s clean with every acknowledged write intact
  (id, text, vector) and nothing forgotten come back.

For ``import_store`` the caller must get an EngramError too, and the destination must be
either absent or a complete store that verifies with every exported engram, with no work
directory left next to it once the next import has run. Writes through Python file objects
(index files, manifests) fail as ``file.write``; the final rename of an import as ``os.rename``.

The default run is short; ``ENGRAMDB_FAULT_LONG=1`` tries more call positions and kinds.
Figures for docs/reliability.md are printed (``pytest -s``).
"""

from __future__ import annotations

import errno
import os
import random
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

import engramdb
from engramdb.content import check_vectors, normalize_text
from engramdb.encoders import HashingEncoder
from engramdb.engine import collect
from engramdb.errors import CommitUncertain, EngramError, StoreClosed
from engramdb.storage import catalog as catalog_mod
from engramdb.storage import fsio, segments
from engramdb.storage import journal as journal_mod
from engramdb.transfer import export as transfer_export
from engramdb.transfer import export_store, import_store
from engramdb.transfer import formats as transfer_formats
from engramdb.transfer import importer as transfer_importer

LONG = os.environ.get("ENGRAMDB_FAULT_LONG") == "1"
DIM = 16
# Small batches and segments: one ingest_many spans several commits and segment files, and
# gc has segments to compact.
# Batches of 8 commit to the catalog directly (the journal off): the turn path has its own
# sweep below (test_faults_during_turns_and_fold).
SETTINGS = {"batch_rows": 8, "segment_bytes": 4096, "journal_max_engrams": 0}
ENC = HashingEncoder(dim=DIM)

OS_KINDS = ["os.write", "os.fsync", "os.replace", "os.ftruncate", "os.open"]
DB_KINDS = ["duckdb.commit", "duckdb.stmt"]


def _call_chain() -> list[str]:
    """Names of the functions on the stack, innermost first (skipping the injector)."""
    names, frame = [], sys._getframe(2)
    while frame is not None and len(names) < 12:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names


def _after_catalog_swap(chain: list[str]) -> bool:
    """The fsync_dir right after the catalog rename in collect.rewrite_catalog (a regression:
    a failure there once left the handle writing into the unlinked old catalog)."""
    return any(a == "fsync_dir" and b == "rewrite_catalog" for a, b in zip(chain, chain[1:]))


class Injector:
    """Decides which call fails: the ``nth`` call of ``kind`` (and later ones if persistent).

    ``where`` (a predicate on the call chain) narrows which calls count; without it, calls at
    known-bug sites are left alone so the broad sweeps test everything else.
    """

    def __init__(self) -> None:
        self.kind: str | None = None
        self.nth = 0
        self.persistent = False
        self.where: Callable[[list[str]], bool] | None = None
        self.calls = 0
        self.fired = 0

    def arm(self, kind: str, nth: int, persistent: bool,
            where: Callable[[list[str]], bool] | None = None) -> None:
        self.kind, self.nth, self.persistent, self.where = kind, nth, persistent, where
        self.calls = self.fired = 0

    def disarm(self) -> None:
        self.kind = None

    def hit(self, kind: str) -> bool:
        if kind != self.kind:
            return False
        chain = _call_chain()
        if self.where is not None and not self.where(chain):
            return False
        self.calls += 1
        if self.calls == self.nth or (self.persistent and self.calls > self.nth):
            self.fired += 1
            return True
        return False


class FaultyOs:
    """Stands in for the ``os`` module inside engramdb's storage modules."""

    def __init__(self, inj: Injector) -> None:
        self._inj = inj

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _check(self, kind: str) -> None:
        if self._inj.hit(kind):
            raise OSError(errno.EIO, f"injected I/O error ({kind} #{self._inj.calls})")

    def write(self, fd: int, data: Any) -> int:
        self._check("os.write")
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        self._check("os.fsync")
        os.fsync(fd)

    def replace(self, src: Any, dst: Any) -> None:
        self._check("os.replace")
        os.replace(src, dst)

    def ftruncate(self, fd: int, length: int) -> None:
        self._check("os.ftruncate")
        os.ftruncate(fd, length)

    def open(self, path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:  # noqa: A003
        self._check("os.open")
        return os.open(path, flags, mode, **kw)

    def rename(self, src: Any, dst: Any) -> None:
        self._check("os.rename")
        os.rename(src, dst)


class FaultyFile:
    """A file object from the built-in ``open`` whose ``write`` fails on demand."""

    def __init__(self, fh: Any, inj: Injector) -> None:
        self._fh = fh
        self._inj = inj

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> FaultyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def write(self, data: Any) -> int:
        if self._inj.hit("file.write"):
            raise OSError(errno.EIO, f"injected I/O error (file.write #{self._inj.calls})")
        return self._fh.write(data)


def _faulty_open(inj: Injector) -> Callable[..., Any]:
    """Stands in for the built-in ``open`` inside engramdb's modules (files written by name)."""
    import builtins

    def faulty(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        fh = builtins.open(file, mode, *args, **kw)
        return FaultyFile(fh, inj) if any(c in mode for c in "wax+") else fh

    return faulty


class FaultyConnection:
    """Wraps a Catalog's DuckDB connection: fails COMMIT or any other statement on demand.

    ``duckdb.commit_lost`` commits for real and then raises: the commit is durable but the
    caller is told it failed (as when DuckDB's WAL fsync reports an error after the write).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, inj: Injector) -> None:
        self._con = con
        self._inj = inj

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def execute(self, sql: str, *args: Any, **kw: Any) -> Any:
        word = sql.strip().split(None, 1)[0].upper() if sql.strip() else ""
        if word == "COMMIT":
            if self._inj.hit("duckdb.commit"):
                raise duckdb.IOException("injected: could not fsync the WAL")
            if self._inj.kind == "duckdb.commit_lost":
                result = self._con.execute(sql, *args, **kw)
                if self._inj.hit("duckdb.commit_lost"):
                    raise duckdb.IOException("injected: error after the commit was written")
                return result
        elif word not in ("BEGIN", "ROLLBACK") and self._inj.hit("duckdb.stmt"):
            raise duckdb.IOException(f"injected: {word} failed")
        self._con.execute(sql, *args, **kw)
        return self


@pytest.fixture
def inj(monkeypatch: pytest.MonkeyPatch) -> Iterator[Injector]:
    """Install the proxies (disarmed); every store opened in the test goes through them."""
    injector = Injector()
    proxy = FaultyOs(injector)
    opener = _faulty_open(injector)
    for module in (segments, fsio, collect, transfer_export, transfer_formats,
                   transfer_importer, journal_mod):
        monkeypatch.setattr(module, "os", proxy)
        monkeypatch.setattr(module, "open", opener, raising=False)
    try:
        from engramdb.derived import index_files as index_mod  # the index files, when present
        monkeypatch.setattr(index_mod, "os", proxy)
        monkeypatch.setattr(index_mod, "open", opener, raising=False)
    except ImportError:
        pass
    real_init = catalog_mod.Catalog.__init__

    def init(self: Any, *args: Any, **kw: Any) -> None:
        real_init(self, *args, **kw)
        self.con = FaultyConnection(self.con, injector)

    monkeypatch.setattr(catalog_mod.Catalog, "__init__", init)
    yield injector
    injector.disarm()


class Ledger:
    """What the store must hold: acknowledged ids -> text, minus what was forgotten."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.forgotten: set[str] = set()

    def ack(self, results: list[Any], texts: list[str]) -> None:
        for r, t in zip(results, texts):
            self.texts[r.id] = normalize_text(t)
            self.forgotten.discard(r.id)

    def forget(self, ids: list[str]) -> None:
        for i in ids:
            self.texts.pop(i, None)
            self.forgotten.add(i)

    def check(self, path: Path) -> None:
        """Reopen without faults: verify clean, every acknowledged write intact."""
        with engramdb.open(path, encoder=ENC) as mem:
            report = mem.verify()
            assert report.ok, report.problems
            ids = sorted(self.texts)
            assert not any(i in mem for i in self.forgotten)
            if ids:
                # vectors() raises NotFound unless every id is live; verify() above already
                # checked that every stored text hashes to its id, so a sample of get() suffices
                want = check_vectors(ENC.encode([self.texts[i] for i in ids]), DIM, len(ids))
                np.testing.assert_array_equal(mem.vectors(ids), want)
                for i in random.Random(len(ids)).sample(ids, min(15, len(ids))):
                    assert mem.get(i).text == self.texts[i]


def _texts(tag: str, n: int, rng: random.Random, ledger: Ledger) -> list[str]:
    """New texts plus a few already stored ones (the refcount path)."""
    out = [f"{tag} memory {k} {rng.random():.6f}" for k in range(n)]
    old = list(ledger.texts.values())
    return out + rng.sample(old, min(3, len(old)))


def _attempt(inj: Injector, kind: str, nth: int, persistent: bool, op: Callable[[], Any],
             where: Callable[[list[str]], bool] | None = None) -> tuple[Any, BaseException | None]:
    """Run ``op`` with the fault armed; an escaping non-EngramError fails the test."""
    inj.arm(kind, nth, persistent, where)
    try:
        return op(), None
    except EngramError as exc:
        assert inj.fired, f"{type(exc).__name__} without an injected fault: {exc}"
        return None, exc
    except BaseException as exc:
        pytest.fail(f"{kind} #{nth}: raw {type(exc).__name__} escaped: {exc!r}")
    finally:
        inj.disarm()


def _positions(count: int) -> list[tuple[int, bool]]:
    """(nth, persistent) pairs to try when the operation makes ``count`` matching calls.

    Short run: the first, middle and last call once, and persistently from the first; the
    long run tries every call once and persistently from a few.
    """
    if LONG:
        return [(n, False) for n in range(1, count + 1)] + [
            (n, True) for n in sorted({1, 2, count // 2 or 1, count})]
    return [(n, False) for n in sorted({1, max(1, (count + 1) // 2), count})] + [(1, True)]


def _run_ingest_faults(inj: Injector, path: Path, kind: str) -> int:
    rng = random.Random(zlib.crc32(kind.encode()))
    ledger = Ledger()
    fired = 0
    with engramdb.open(path, encoder=ENC, settings=SETTINGS) as mem:
        base = _texts("base", 20, rng, ledger)
        ledger.ack(mem.ingest_many(base), base)
        # A fault-free pass counts the matching calls an ingest_many makes.
        inj.arm(kind, 0, False)
        base = _texts("count", 20, rng, ledger)
        ledger.ack(mem.ingest_many(base), base)
        count = inj.calls
        inj.disarm()
    for step, (nth, persistent) in enumerate(_positions(count)):
        with engramdb.open(path, encoder=ENC) as mem:
            texts = _texts(f"s{step}", 20, rng, ledger)
            results, exc = _attempt(inj, kind, nth, persistent, partial(mem.ingest_many, texts))
            fired += inj.fired > 0
            if exc is None:
                ledger.ack(results, texts)
            # The fault is gone: the same handle must keep working (or, after an uncertain
            # commit, have closed itself so that only a reopen settles what was committed).
            after = _texts(f"after{step}", 5, rng, ledger)
            with _usable(mem, exc, path) as live:
                ledger.ack(live.ingest_many(after), after)
        ledger.check(path)
    return fired


@contextmanager
def _usable(mem: Any, exc: BaseException | None, path: Path) -> Iterator[Any]:
    """The handle to go on with: ``mem``, or a new one if an uncertain commit closed it."""
    if isinstance(exc, CommitUncertain):
        with pytest.raises(StoreClosed):
            mem.ingest_many(["refused after an uncertain commit"])
        with engramdb.open(path, encoder=ENC) as again:
            yield again
    else:
        yield mem


def _run_gc_faults(inj: Injector, path: Path, kind: str) -> int:
    rng = random.Random(zlib.crc32(kind.encode()))
    ledger = Ledger()
    fired = 0
    with engramdb.open(path, encoder=ENC, settings=SETTINGS) as mem:
        base = _texts("base", 80, rng, ledger)  # two segments of 64 rows
        ledger.ack(mem.ingest_many(base), base)
        # A fault-free pass counts the matching calls a forget + gc makes.
        victims = rng.sample(sorted(ledger.texts), 6)
        mem.forget(victims)
        ledger.forget(victims)
        inj.arm(kind, 0, False)
        mem.gc()
        count = inj.calls
        inj.disarm()
    for step, (nth, persistent) in enumerate(_positions(count)):
        with engramdb.open(path, encoder=ENC) as mem:
            victims = rng.sample(sorted(ledger.texts), 6)
            assert mem.forget(victims) == len(victims)
            ledger.forget(victims)
            _, exc = _attempt(inj, kind, nth, persistent, mem.gc)
            fired += inj.fired > 0
            after = _texts(f"after{step}", 5, rng, ledger)
            with _usable(mem, exc, path) as live:
                ledger.ack(live.ingest_many(after), after)
                if exc is not None:
                    live.gc()  # a retry without faults must finish the job
        ledger.check(path)
    return fired


@pytest.mark.parametrize("kind", ["os.write", "os.fsync", "os.open", "os.ftruncate",
                                  *DB_KINDS])
def test_faults_during_ingest_many(inj: Injector, tmp_path: Path, kind: str) -> None:
    if not LONG and kind in ("os.open", "os.ftruncate"):
        pytest.skip("ENGRAMDB_FAULT_LONG=1")
    fired = _run_ingest_faults(inj, tmp_path / "f.engram", kind)
    assert fired, f"no {kind} fault ever fired: the test proved nothing"


def _turn_session(path: Path, texts: list[str], ledger: Ledger) -> None:
    """Open, integrate ``texts`` (each acknowledged as it returns), close: the fold."""
    mem = engramdb.open(path, encoder=ENC)
    try:
        for t in texts:
            ledger.ack([mem.integrate(t, top_k=3, session="s")], [t])
    finally:
        mem.close()


@pytest.mark.parametrize("kind", ["os.write", "os.fsync", "os.ftruncate", *DB_KINDS])
def test_faults_during_turns_and_fold(inj: Injector, tmp_path: Path, kind: str) -> None:
    """Turns through the journal and the fold at close: a failed append refuses the turn
    and changes nothing; a failed fold closes the handle and the reopen replays the
    journal; every acknowledged turn survives."""
    path = tmp_path / "t.engram"
    rng = random.Random(zlib.crc32(kind.encode()))
    ledger = Ledger()
    with engramdb.open(path, encoder=ENC, settings={"segment_bytes": 4096}):
        pass
    _turn_session(path, _texts("base", 6, rng, ledger), ledger)
    inj.arm(kind, 0, False)
    _turn_session(path, _texts("count", 6, rng, ledger), ledger)
    count = inj.calls
    inj.disarm()
    fired = 0
    for step, (nth, persistent) in enumerate(_positions(count)):
        texts = _texts(f"t{step}", 6, rng, ledger)
        _, exc = _attempt(inj, kind, nth, persistent,
                          partial(_turn_session, path, texts, ledger))
        fired += inj.fired > 0
        _turn_session(path, _texts(f"after{step}", 3, rng, ledger), ledger)
        ledger.check(path)
    assert fired, f"no {kind} fault ever fired: the test proved nothing"


@pytest.mark.parametrize("kind", ["os.write", "os.fsync", "os.replace", "os.open",
                                  "os.ftruncate", *DB_KINDS])
def test_faults_during_gc(inj: Injector, tmp_path: Path, kind: str) -> None:
    if not LONG and kind in ("os.open", "os.ftruncate"):
        pytest.skip("ENGRAMDB_FAULT_LONG=1")
    fired = _run_gc_faults(inj, tmp_path / "g.engram", kind)
    assert fired or kind == "os.ftruncate", f"no {kind} fault ever fired"


def _try_more(mem: Any, texts: list[str], ledger: Ledger) -> None:
    """Write on after an uncertain commit: refusing (EngramError) is fine, damage is not."""
    try:
        ledger.ack(mem.ingest_many(texts), texts)
    except EngramError:
        pass


def test_commit_reported_failed_after_it_was_written_ingest(inj: Injector, tmp_path: Path) -> None:
    """COMMIT reaches the WAL and then raises: the write may be stored without an ack, but
    the store must not be damaged and the handle must not reuse the committed rows."""
    path = tmp_path / "lost.engram"
    rng = random.Random(7)
    ledger = Ledger()
    with engramdb.open(path, encoder=ENC, settings=SETTINGS) as mem:
        base = _texts("base", 20, rng, ledger)
        ledger.ack(mem.ingest_many(base), base)
        texts = _texts("lost", 20, rng, ledger)
        _, exc = _attempt(inj, "duckdb.commit_lost", 1, False, partial(mem.ingest_many, texts))
        assert exc is not None
        _try_more(mem, _texts("after", 20, rng, ledger), ledger)
    ledger.check(path)


def test_commit_reported_failed_after_it_was_written_gc(inj: Injector, tmp_path: Path) -> None:
    """As above, for the commits gc makes (collecting, moving pointers)."""
    path = tmp_path / "lostgc.engram"
    rng = random.Random(8)
    ledger = Ledger()
    with engramdb.open(path, encoder=ENC, settings=SETTINGS) as mem:
        base = _texts("base", 100, rng, ledger)
        ledger.ack(mem.ingest_many(base), base)
    for nth in (1, 2):
        with engramdb.open(path, encoder=ENC) as mem:
            victims = rng.sample(sorted(ledger.texts), 6)
            mem.forget(victims)
            ledger.forget(victims)
            _, exc = _attempt(inj, "duckdb.commit_lost", nth, False, mem.gc)
            _try_more(mem, _texts(f"after{nth}", 5, rng, ledger), ledger)
        ledger.check(path)


@pytest.mark.parametrize("kind", ["os.fsync", "os.open"])
def test_gc_dir_fsync_failure_after_catalog_rename_keeps_later_writes(
        inj: Injector, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "rename.engram"
    rng = random.Random(9)
    ledger = Ledger()
    with engramdb.open(path, encoder=ENC, settings=SETTINGS) as mem:
        base = _texts("base", 60, rng, ledger)
        ledger.ack(mem.ingest_many(base), base)
        victims = rng.sample(sorted(ledger.texts), 6)
        mem.forget(victims)
        ledger.forget(victims)
        _, exc = _attempt(inj, kind, 1, False, mem.gc, where=_after_catalog_swap)
        assert exc is not None and inj.fired == 1
        after = _texts("after", 5, rng, ledger)
        ledger.ack(mem.ingest_many(after), after)  # acknowledged ...
    ledger.check(path)  # ... and must survive the reopen


# -- rebuild and import -------------------------------------------------------------------------

# What each campaign did, printed for docs/reliability.md (``pytest -s``).
FIGURES: dict[str, dict[str, int]] = {}


def _figure(op: str, kind: str, **add: int) -> None:
    row = FIGURES.setdefault(f"{op} {kind}", {})
    for key, value in add.items():
        row[key] = row.get(key, 0) + value


def _print_figures(op: str, kind: str) -> None:
    print(f"\nFAULTS {op} {kind}: {FIGURES.get(f'{op} {kind}', {})}")


def _new_positions(count: int) -> list[tuple[int, bool]]:
    """Call positions for the rebuild and import campaigns: every one (and persistent from a
    few) in the long run; the last once and persistent from the middle otherwise."""
    if LONG:
        return _positions(count)
    return sorted({(count, False), (max(1, (count + 1) // 2), True)})


REBUILD_KINDS = ["file.write", "os.fsync", "os.replace", "os.open", "duckdb.commit",
                 "duckdb.stmt"]
REBUILD_SHORT = {"os.fsync"}


def _run_rebuild_faults(inj: Injector, path: Path, kind: str) -> None:
    rng = random.Random(zlib.crc32(b"rebuild" + kind.encode()))
    ledger = Ledger()
    with engramdb.open(path, encoder=ENC, settings=SETTINGS,
                       index={"exact_threshold": 8}) as mem:  # a graph to rebuild
        base = _texts("base", 60, rng, ledger)
        ledger.ack(mem.ingest_many(base), base)
        mem.integrate("a turn about base memory 3", top_k=3)  # links, a working engram
        ledger.texts[mem.integrate("and memory 4", top_k=2).id] = "and memory 4"
        victims = rng.sample(sorted(ledger.texts), 4)
        mem.forget(victims)
        ledger.forget(victims)
        # A fault-free pass counts the matching calls a rebuild makes.
        inj.arm(kind, 0, False)
        mem.rebuild()
        count = inj.calls
        inj.disarm()
    assert count, f"rebuild makes no {kind} call: nothing to inject"
    for step, (nth, persistent) in enumerate(_new_positions(count)):
        with engramdb.open(path, encoder=ENC) as mem:
            texts = _texts(f"r{step}", 10, rng, ledger)
            ledger.ack(mem.ingest_many(texts), texts)
            _, exc = _attempt(inj, kind, nth, persistent, mem.rebuild)
            _figure("rebuild", kind, iterations=1, faults=inj.fired, errors=exc is not None)
            after = _texts(f"after{step}", 5, rng, ledger)
            with _usable(mem, exc, path) as live:
                ledger.ack(live.ingest_many(after), after)
                if exc is not None:
                    live.rebuild()  # a retry without faults must finish the job
        ledger.check(path)
        _figure("rebuild", kind, checked=len(ledger.texts))


@pytest.mark.parametrize("kind", REBUILD_KINDS)
def test_faults_during_rebuild(inj: Injector, tmp_path: Path, kind: str) -> None:
    """A fault at the n-th call of a rebuild: an EngramError, and a store that reopens clean
    with every acknowledged write (the retry rebuilds it all)."""
    if not LONG and kind not in REBUILD_SHORT:
        pytest.skip("ENGRAMDB_FAULT_LONG=1")
    _run_rebuild_faults(inj, tmp_path / "rb.engram", kind)
    _print_figures("rebuild", kind)
    assert FIGURES[f"rebuild {kind}"].get("faults"), f"no {kind} fault ever fired"


IMPORT_KINDS = ["os.write", "file.write", "os.fsync", "os.replace", "os.open", "os.rename",
                "duckdb.commit", "duckdb.stmt"]
IMPORT_SHORT = {"os.fsync"}


def _export_source(root: Path) -> tuple[Path, Ledger]:
    """A small store with links, forgotten engrams and several segments, exported to JSONL."""
    rng = random.Random(11)
    ledger = Ledger()
    src = root / "src.engram"
    with engramdb.open(src, encoder=ENC, settings=SETTINGS) as mem:
        base = _texts("src", 70, rng, ledger)
        ledger.ack(mem.ingest_many(base), base)
        ledger.texts[mem.integrate("a turn about src memory 5", top_k=3).id] = \
            "a turn about src memory 5"
        victims = rng.sample(sorted(ledger.texts), 5)
        mem.forget(victims)
        ledger.forget(victims)
        dump = root / "src.jsonl"
        export_store(mem, dump)
    return dump, ledger


def _work_dirs(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.glob(f".{dest.name}.import-*"))


def _run_import_faults(inj: Injector, root: Path, kind: str) -> None:
    dump, ledger = _export_source(root)
    out = root / "imports"
    out.mkdir()
    inj.arm(kind, 0, False)
    import_store(out / "count.engram", dump)
    count = inj.calls
    inj.disarm()
    ledger.check(out / "count.engram")
    assert count, f"import makes no {kind} call: nothing to inject"
    for step, (nth, persistent) in enumerate(_new_positions(count)):
        dest = out / f"dest{step}.engram"
        _, exc = _attempt(inj, kind, nth, persistent, partial(import_store, dest, dump))
        left = _work_dirs(dest)
        _figure("import", kind, iterations=1, faults=inj.fired, errors=exc is not None,
                left_behind=len(left))
        if exc is None:
            ledger.check(dest)  # a complete store ...
        else:
            assert not dest.exists(), f"{kind} #{nth}: a failed import left {dest.name}"
            # ... or nothing; and a retry without faults (which also clears any abandoned
            # work directory of this destination) gives the complete store.
            import_store(dest, dump)
            ledger.check(dest)
        assert not _work_dirs(dest), _work_dirs(dest)
        _figure("import", kind, checked=len(ledger.texts))


@pytest.mark.parametrize("kind", IMPORT_KINDS)
def test_faults_during_import(inj: Injector, tmp_path: Path, kind: str) -> None:
    """A fault at the n-th call of import_store: an EngramError, and the destination is
    absent or complete; no work directory survives the next import."""
    if not LONG and kind not in IMPORT_SHORT:
        pytest.skip("ENGRAMDB_FAULT_LONG=1")
    _run_import_faults(inj, tmp_path, kind)
    _print_figures("import", kind)
    assert FIGURES[f"import {kind}"].get("faults"), f"no {kind} fault ever fired"
