"""Worker process for tests/test_crash_points.py: runs one operation in a loop until killed.

Usage: ``crash_ops.py OP STORE ACK_LOG SEED [EXPORT]`` with OP one of

- ``gc``: ingest a batch, forget some acknowledged engrams, ``gc()`` (segments are compacted
  and the catalog file is rewritten and swapped), over and over;
- ``index``: ingest a batch, ``close()`` (which saves the vector index), reopen, over and over;
- ``rebuild``: ingest a batch, ``rebuild()`` (vector + lexical index), over and over;
- ``import``: ``import_store`` of the EXPORT file into a fresh path next to STORE, over and
  over (STORE is then the directory the new stores go into).

Every step that completes is appended to ACK_LOG as one JSON line and fsynced *after* the
call returned, so a logged line is a promise the store made. Steps whose outcome the parent
cannot know (a forget or an import that was running when the kill came) are announced first
with an ``intent`` line, so the parent can tell "may or may not have happened" from "lost".
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.transfer import import_store

DIM = 16
# Small segments and batches: every gc has several segment files to rewrite, and one ingest
# spans several commits.
SETTINGS = {"segment_bytes": 4096, "batch_rows": 32}
WORDS = "oscar guinea pig paris sister carrots weather rain coffee piano guitar train".split()


class AckLog:
    """Append-only JSON-lines log, fsynced per line (the parent's view of what was promised)."""

    def __init__(self, path: str) -> None:
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives until the kill

    def write(self, **entry: Any) -> None:
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())


def _texts(rng: random.Random, seed: int, counter: list[int], n: int) -> list[str]:
    """Unique texts (seed + running number), so a forgotten text is never ingested again."""
    out = []
    for _ in range(n):
        counter[0] += 1
        out.append(f"{seed}-{counter[0]} " + " ".join(rng.choices(WORDS, k=5)))
    return out


def _ingest(mem: Any, log: AckLog, rng: random.Random, seed: int, counter: list[int],
            n: int) -> list[str]:
    texts = _texts(rng, seed, counter, n)
    results = mem.ingest_many(texts)
    for r, t in zip(results, texts):
        log.write(op="ingest", id=r.id, text=t)
    return [r.id for r in results]


def run_gc(store: str, log: AckLog, seed: int) -> None:
    rng = random.Random(seed)
    counter = [0]
    enc = HashingEncoder(dim=DIM)
    mem = engramdb.open(store, encoder=enc, settings=SETTINGS)
    mine: list[str] = []
    while True:
        mine += _ingest(mem, log, rng, seed, counter, rng.randint(20, 80))
        victims = rng.sample(mine, max(1, len(mine) // 3))
        log.write(op="intent_forget", ids=victims)
        mem.forget(victims)
        log.write(op="forget", ids=victims)
        gone = set(victims)
        mine = [i for i in mine if i not in gone]
        mem.gc()
        log.write(op="gc")


def run_index(store: str, log: AckLog, seed: int) -> None:
    rng = random.Random(seed)
    counter = [0]
    enc = HashingEncoder(dim=DIM)
    while True:
        mem = engramdb.open(store, encoder=enc, settings=SETTINGS)
        _ingest(mem, log, rng, seed, counter, rng.randint(10, 60))
        mem.close()  # saves the vector index: the moment this campaign aims at
        log.write(op="close")


def run_rebuild(store: str, log: AckLog, seed: int) -> None:
    rng = random.Random(seed)
    counter = [0]
    enc = HashingEncoder(dim=DIM)
    mem = engramdb.open(store, encoder=enc, settings=SETTINGS)
    while True:
        _ingest(mem, log, rng, seed, counter, rng.randint(10, 60))
        mem.rebuild()
        log.write(op="rebuild")


def run_import(store: str, log: AckLog, seed: int, export: str) -> None:
    parent = Path(store)
    parent.mkdir(parents=True, exist_ok=True)
    k = 0
    while True:
        k += 1
        dest = parent / f"imp-{seed}-{k}.engram"
        log.write(op="intent_import", dest=str(dest))
        stats = import_store(dest, export)
        log.write(op="import", dest=str(dest), count=stats["count"])


def main() -> None:
    op, store, log_path, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    log = AckLog(log_path)
    if op == "gc":
        run_gc(store, log, seed)
    elif op == "index":
        run_index(store, log, seed)
    elif op == "rebuild":
        run_rebuild(store, log, seed)
    elif op == "import":
        run_import(store, log, seed, sys.argv[5])
    else:
        raise SystemExit(f"unknown op {op!r}")


if __name__ == "__main__":
    main()
