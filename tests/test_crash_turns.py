"""Crash safety of the turn path: SIGKILL a process integrating turns through the journal.

``tests/helpers/turn_writer.py`` integrates turns (and single ingests) and logs each one that
returned; it folds every few turns, so the kills land in journal appends, in folds (the
catalog commit, the segment fsyncs, the journal's truncation) and in closes. After each kill
the store must open, verify clean, and hold every acknowledged turn with its exact text and
vector. The default run kills 12 times; ENGRAMDB_CRASH_KILLS=N runs a long campaign (the
figures are in docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import numpy as np

import engramdb
from engramdb.content import check_vectors, decompress_text, normalize_text
from engramdb.encoders import HashingEncoder
from tests.conftest import HELPERS, PYTHON, python_env
from tests.test_crash import _acknowledged
from tests.test_crash_points import _kill_after_progress

KILLS = int(os.environ.get("ENGRAMDB_CRASH_KILLS", "12"))


def test_sigkill_during_turns_never_loses_acknowledged_turns(tmp_path: Path) -> None:
    store, log = tmp_path / "turns.engram", tmp_path / "acks.jsonl"
    rng = random.Random(21)
    enc = HashingEncoder(dim=32)
    replays = 0
    for i in range(KILLS):
        proc = subprocess.Popen(
            [PYTHON, str(HELPERS / "turn_writer.py"), str(store), str(log), str(i)],
            env=python_env(), stderr=subprocess.PIPE)
        _kill_after_progress(proc, log, rng, 0.4)
        proc.wait()
        proc.stderr.close()
        acked = _acknowledged(log)
        with engramdb.open(store, encoder=enc) as mem:
            replays += any("turn journal" in r for r in mem.recovered)
            report = mem.verify()
            assert report.ok, report.problems
            # Stored, alive or not: the lifespan engine may have expired an old turn (it
            # is gone only after a gc, which the writer never runs).
            with mem.snapshot() as snap:
                rows = {i: (seg, row, text) for i, seg, row, text in snap.query(
                    'SELECT id, seg, "row", text FROM engrams')}
                missing = sorted(set(acked) - set(rows))
                assert not missing, f"{len(missing)} acknowledged turns lost"
                for ident in rng.sample(sorted(acked), min(40, len(acked))):
                    seg, row, _ = rows[ident]
                    raw = enc.encode([normalize_text(acked[ident])])
                    np.testing.assert_array_equal(snap.vector(seg, row),
                                                  check_vectors(raw, 32, 1)[0])
                    assert decompress_text(rows[ident][2]) == normalize_text(acked[ident])
    assert acked, "the writer never acknowledged a turn: the test proved nothing"
    print(f"\n{KILLS} kills, {len(acked)} acknowledged turns, {replays} opens replayed "
          "the journal")
