"""I/O-error injection: a failing write, fsync, rename or catalog commit never damages a store.

Faults are injected in-process: the ``os`` module seen by engramdb's storage modules is
replaced by a proxy, and every Catalog's DuckDB connection by a proxy, each of which raises
``OSError(EIO)`` / ``duckdb.IOException`` at the n-th matching call (once, or from then on).
For every fault during ``ingest_many`` and ``gc`` (after ``forget``) we check that:

- the caller gets an :class:`engramdb.errors.EngramError`, never a raw OSError/duckdb error;
- nothing was acknowledged that was not stored, and the same handle keeps working once the
  fault is gone;
- closing and reopening the store ``verify()``s clean with every acknowledged write intact
  (id, text, vector) and nothing forgotten come back.

The default run is short; ``ENGRAMDB_FAULT_LONG=1`` tries more call positions and kinds.
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
from engramdb import catalog as catalog_mod
from engramdb import collect, fsio, segments
from engramdb.content import check_vectors, normalize_text
from engramdb.encoders import HashingEncoder
from engramdb.errors import CommitUncertain, EngramError, StoreClosed

LONG = os.environ.get("ENGRAMDB_FAULT_LONG") == "1"
DIM = 16
# Small batches and segments: one ingest_many spans several commits and segment files, and
# gc has segments to compact.
SETTINGS = {"batch_rows": 8, "segment_bytes": 4096}
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
    for module in (segments, fsio, collect):
        monkeypatch.setattr(module, "os", proxy)
    try:
        from engramdb import index as index_mod  # derived index files, when present
        monkeypatch.setattr(index_mod, "os", proxy)
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
