"""Reads (recall, export, report) that run while another thread forgets and collects: no
exception, no stale cache.

Recall takes no store lock; these races were found by a hostile tester and each test failed on
the code before its fix (every run for the first two, most runs for the third).
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import engramdb
from engramdb.encoders import HashingEncoder


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every few microseconds, so that the races show up in a short run."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def _race(readers: list[Callable[[], None]], writer: Callable[[], None]) -> list[str]:
    """Run ``readers`` in loops until ``writer`` returns; the readers' tracebacks."""
    stop = threading.Event()
    errors: list[str] = []

    def loop(read: Callable[[], None]) -> None:
        try:
            while not stop.is_set():
                read()
        except Exception:  # reported to the test
            errors.append(traceback.format_exc())
            stop.set()

    def write() -> None:
        try:
            writer()
        except Exception:
            errors.append(traceback.format_exc())
        finally:
            stop.set()

    threads = [threading.Thread(target=loop, args=(r,)) for r in readers]
    threads.append(threading.Thread(target=write))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_a_scan_racing_forget_never_reads_a_cleared_row(tmp_path: Path,
                                                        fast_switching: None) -> None:
    """forget() clears a segment's row -> eid entries in place; a scan that had read them
    used to fetch eid -1 (IndexError) or, worse, another row."""
    mem = engramdb.open(tmp_path / "s.engram", encoder=HashingEncoder(dim=64))
    ids = [r.id for r in mem.ingest_many([f"note {i} about topic {i % 97}"
                                          for i in range(4000)])]
    rng = np.random.default_rng(0)
    forgotten: set[str] = set()

    def read() -> None:
        for hit in mem.recall(vector=rng.standard_normal(64).astype(np.float32), top_k=10):
            assert hit.text.startswith("note ")

    def write() -> None:
        for i in range(0, 1500, 3):
            mem.forget(ids[i:i + 3])
            forgotten.update(ids[i:i + 3])

    try:
        assert _race([read, read], write) == []
        hits = mem.recall(vector=rng.standard_normal(64).astype(np.float32), top_k=50)
        assert not forgotten & {h.id for h in hits}
    finally:
        mem.close()


def test_recall_while_gc_rewrites_the_catalog_and_moves_vectors(tmp_path: Path,
                                                                fast_switching: None) -> None:
    """gc closes the catalog its readers use and moves vectors to new segments: a recall
    used to fail with "catalog read failed: connection closed" (CorruptStore) or read a
    vector through a pointer half moved (IndexError)."""
    mem = engramdb.open(tmp_path / "s.engram", encoder=HashingEncoder(dim=64),
                        settings=engramdb.Settings(segment_bytes=64 * 4 * 256))
    n = 1500
    ids = [r.id for r in mem.ingest_many(
        [f"note {i} about topic {i % 97}" for i in range(n)],
        sessions=[f"s{i % 20}" for i in range(n)], roles=["user"] * n)]

    def filtered() -> None:
        for hit in mem.recall("topic 5 note", top_k=10, where={"session": "s3"}):
            assert hit.session == "s3"

    def by_vector() -> None:
        mem.recall(vector=np.ones(64, np.float32), top_k=10)

    def write() -> None:
        for i in range(0, 40):
            mem.forget(ids[i * 7])
            mem.gc()

    try:
        assert _race([filtered, by_vector], write) == []
        assert mem.verify().ok
    finally:
        mem.close()


def test_session_lengths_cached_before_a_write_are_not_reused(tmp_path: Path) -> None:
    """A recall that read the session lengths while a write changed them must not leave its
    stale result in the cache (live scores then disagreed with a reopened store's)."""
    with engramdb.open(tmp_path / "s.engram", encoder=HashingEncoder(dim=64)) as mem:
        mem.ingest_many([f"a turn about cats {i}" for i in range(6)],
                        sessions=["s0", "s1"] * 3)
        ctx = mem.context
        version = ctx._sessions_version
        stale = ctx._session_lengths(1.2, 0.75)  # what a slow reader computed ...
        mem.ingest_many(["cats again", "and more cats"], sessions=["s2", "s2"])
        # ... and stored after the write landed, under the version it had read.
        ctx._session_norm = (1.2, 0.75, stale[0], stale[1], version)
        n, norm = ctx._session_lengths(1.2, 0.75)
        assert n == 3 and stale[0] == 2
        assert len(norm) >= 3


def test_export_and_report_while_gc_rewrites_the_catalog(tmp_path: Path,
                                                         fast_switching: None) -> None:
    """An export or a report on one thread while another forgets and collects: each is a
    consistent snapshot (no closed catalog, no vector moved under it, counts that match)."""
    from engramdb.report import collect
    from engramdb.transfer import export_store

    mem = engramdb.open(tmp_path / "s.engram", encoder=HashingEncoder(dim=64),
                        settings=engramdb.Settings(segment_bytes=64 * 4 * 256))
    n = 1200
    ids = [r.id for r in mem.ingest_many([f"note {i} about topic {i % 97}" for i in range(n)],
                                         sessions=[f"s{i % 20}" for i in range(n)])]
    exported = iter(range(10**6))

    def export() -> None:
        dest = tmp_path / f"e{next(exported)}.jsonl"
        counts = export_store(mem, dest)
        kinds = [json.loads(line)["type"] for line in dest.read_text().splitlines()]
        assert kinds.count("engram") == counts["engrams"]

    def report() -> None:
        assert collect(mem)["stats"]["count"] > 0

    def write() -> None:
        for i in range(0, 30):
            mem.forget(ids[i * 11])
            mem.gc()

    try:
        assert _race([export, report], write) == []
        assert mem.verify().ok
    finally:
        mem.close()
