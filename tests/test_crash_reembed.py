"""Crash safety of ``engramdb.reembed``: SIGKILL a process re-embedding a store.

The campaign is ``benchmarks/crash_reembed.py`` (its docstring says what the worker does and
what is checked after every kill: one complete store at PATH, ``verify()`` clean, under
exactly one of the two encoders, the right one for where the kill landed, every acknowledged
turn stored under its content id and found by its vector, no work directory left at the end).
Here a few random kills, then kills right after the steps that matter most: the lock taken
back, the atomic exchange, the fallback cut between its two renames (``settle()`` must put
the new store in place), and half way through deleting the old store. ~10 s;
ENGRAMDB_REEMBED_KILLS=N runs N random kills (the long run: the benchmark itself, figures
in docs/reliability.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import crash_reembed  # noqa: E402

KILLS = int(os.environ.get("ENGRAMDB_REEMBED_KILLS", "4"))
POINTS = [("_relock", "exchange"), ("_rename_exchange", "exchange"), ("rename1", "fallback"),
          ("rmtree", "exchange")]


def test_sigkill_during_reembed_leaves_one_complete_store(tmp_path: Path) -> None:
    c = crash_reembed.campaign(tmp_path, KILLS, POINTS)
    kills = sum(c.outcomes.values())
    assert kills == KILLS + len(POINTS)
    assert c.texts and c.runs, "nothing was acknowledged or re-embedded: the test proved nothing"
    assert c.outcomes["at rename1, fallback: reembed -> new (settled: new)"] == 1
    print(f"\n[crash-reembed] {kills} kills, {c.runs} re-embeddings completed, "
          f"{len(c.texts)} acknowledged texts, 0 lost: {dict(c.outcomes)}")
