"""Crash between the journal append and the fold: SIGKILL a process whose keyed writes
(upserts of stored keys, ``forget(keys=)``, new keys, turns) all wait in the turn journal.

``tests/helpers/keyed_journal_writer.py`` applies a list of operations rebuilt from its seed,
acknowledging each (fsynced log line) after the call returns, with fold thresholds no run
reaches. After a kill at a random moment the parent reopens the store, which replays the
journal, and checks:

- no acknowledged write is lost: the journal holds every acknowledged record (counted
  before the open), and the open replays them; odd seeds write to a store with its catalog
  from the start, even ones to a store without one (nothing is ever folded in either);
- the store is the one the catalog path gives: a store that commits every write to the
  catalog (``journal_max_engrams=0``), given the acknowledged operations (plus the one in
  flight, if it landed), holds the same rows, table by table (engrams, occurrences and their
  keys, BM25 and context rows, links, the forgetting log, counters);
- ``verify()`` passes.

The default run kills 4 times; ENGRAMDB_CRASH_KILLS=N runs more.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.storage.journal import TurnJournal
from tests.conftest import HELPERS, PYTHON, python_env
from tests.helpers.keyed_journal_writer import DIM, SETTINGS, apply, make_ops
from tests.test_crash_points import _kill_after_progress
from tests.test_journal import _catalog_rows

KILLS = int(os.environ.get("ENGRAMDB_CRASH_KILLS", "4"))
ENC = HashingEncoder(dim=DIM)


def _acked(log: Path) -> int:
    return sum(json.loads(line)["op"] == "ack" for line in log.read_text().splitlines())


def _reference(path: Path, ops: list, start: int, stop: int) -> dict:
    """The catalog rows after ``ops[start:stop]`` on top of what ``path`` holds, every
    write a catalog commit."""
    settings = {**SETTINGS, "journal_max_engrams": 0}
    with engramdb.open(path, encoder=ENC, settings=settings) as mem:
        for op in ops[start:stop]:
            apply(mem, op)
    return _catalog_rows(path)


def test_sigkill_before_the_fold_replays_the_catalog_path_store(tmp_path: Path) -> None:
    rng = random.Random(17)
    kinds: dict[str, int] = {}
    replayed_total = 0
    for run in range(KILLS):
        store, log = tmp_path / f"s{run}.engram", tmp_path / f"acks{run}.jsonl"
        seed = 1000 + run
        proc = subprocess.Popen(
            [PYTHON, str(HELPERS / "keyed_journal_writer.py"), str(store), str(log),
             str(seed)], env=python_env(), stderr=subprocess.PIPE)
        _kill_after_progress(proc, log, rng, 0.8)
        acked = _acked(log)
        replayed = len(TurnJournal(store, durable=False, read_only=True).read()[0])
        with engramdb.open(store, encoder=ENC, create=False) as mem:
            assert mem.verify().ok  # a read of the catalog: folds the replayed writes
        # Nothing was folded before the kill: every acknowledged write comes from the journal.
        assert replayed in (acked, acked + 1), (replayed, acked)
        ops = make_ops(seed)
        ref = tmp_path / f"ref{run}.engram"
        want = _reference(ref, ops, 0, acked)
        if replayed == acked + 1:  # the write in flight landed: its record was whole
            want = _reference(ref, ops, acked, acked + 1)
        assert _catalog_rows(store) == want, f"run {run}: {acked} acknowledged writes"
        for op in ops[:replayed]:
            kinds[op[0]] = kinds.get(op[0], 0) + 1
        replayed_total += replayed
    assert kinds.get("upsert", 0) and kinds.get("forget_keys", 0), kinds
    calls = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    print(f"\n[crash-journal-keys] {KILLS} kills, {replayed_total} journaled writes replayed "
          f"and matched the catalog path ({calls})")
