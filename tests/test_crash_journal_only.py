"""Crash safety of stores without a catalog file: SIGKILL a process writing turns to them.

``tests/helpers/journal_only_writer.py`` writes turns to a new store that keeps them in its
journal alone (``Settings.journal_only_turns`` 10 to 60), closing and reopening it every few
turns, until its first fold writes the catalog. A new store every two kills puts kills in
the journal-only appends, the replays on open, the closes and the first fold. After each
kill every acknowledged turn must be there with its exact text: read through a read-only
open when the store needs no recovery (it writes nothing: the check leaves the store as the
kill did), else a writable one; the store must verify clean once its rounds are done. The
default run kills 10 times; ENGRAMDB_CRASH_KILLS=N runs a long campaign (docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import engramdb
from engramdb.content import normalize_text
from engramdb.encoders import HashingEncoder
from engramdb.errors import ReadOnlyStore
from engramdb.storage.catalog import CATALOG_NAME
from tests.conftest import HELPERS, PYTHON, python_env
from tests.test_crash import _acknowledged
from tests.test_crash_points import _kill_after_progress

KILLS = int(os.environ.get("ENGRAMDB_CRASH_KILLS", "10"))
ENC = HashingEncoder(dim=32)


def _missing(store: Path, acked: dict[str, str]) -> list[str]:
    """The acknowledged turns the store does not hold with their exact text."""
    try:
        mem = engramdb.open(store, encoder=ENC, create=False, read_only=True)
    except ReadOnlyStore:  # recovery first (a torn catalog write): a writable open does it
        mem = engramdb.open(store, encoder=ENC, create=False)
    with mem:
        gone = [i for i, text in acked.items()
                if i not in mem or mem.get(i).text != normalize_text(text)]
        if not gone:
            return []
        # A turn never recalled enough dies by the lifespan engine (short_term_capacity 40;
        # seed 34 gets there at its 22nd kill, with the code before and after the vectors
        # held in memory): forgotten, which the forgetting log says, not lost.
        forgotten = {e["id"] for e in mem.forgetting_log(limit=1_000_000)}
        return [i for i in gone if i not in forgotten]


def test_sigkill_in_stores_without_a_catalog_never_loses_acknowledged_turns(
        tmp_path: Path) -> None:
    rng = random.Random(33)
    outcomes = {"journal only": 0, "with a catalog": 0}
    total = 0
    for i in range(KILLS):
        store, log = tmp_path / f"s{i // 2}.engram", tmp_path / f"acks{i // 2}.jsonl"
        proc = subprocess.Popen(
            [PYTHON, str(HELPERS / "journal_only_writer.py"), str(store), str(log), str(i)],
            env=python_env(), stderr=subprocess.PIPE)
        _kill_after_progress(proc, log, rng, 0.25)
        outcomes["with a catalog" if (store / CATALOG_NAME).exists() else "journal only"] += 1
        acked = _acknowledged(log)
        missing = _missing(store, acked)
        assert not missing, f"{len(missing)} acknowledged turns lost, e.g. {missing[0]}"
        total = max(total, len(acked))
        if i % 2 == 1:  # the store's last round: it verifies clean
            with engramdb.open(store, encoder=ENC, create=False) as mem:
                report = mem.verify()
                assert report.ok, report.problems
    assert total, "the writer never acknowledged a turn: the test proved nothing"
    print(f"\n{KILLS} kills ({outcomes}), up to {total} acknowledged turns a store")
