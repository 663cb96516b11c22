"""Crash safety: SIGKILL a writer during ingest_many; no acknowledged write may be lost.

The default suite runs 30 kills; set ENGRAMDB_CRASH_KILLS=300 for a long campaign (``-s``
prints the figures).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

import engramdb
from engramdb.content import check_vectors, normalize_text
from engramdb.encoders import HashingEncoder
from tests.conftest import HELPERS, PYTHON, python_env


def _acknowledged(log: Path) -> dict[str, str]:
    acked: dict[str, str] = {}
    if not log.exists():
        return acked
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # the writer died while logging: that line was never complete
        acked[entry["id"]] = entry["text"]
    return acked


def _cut_torn_tail(log: Path) -> None:
    """Cut a last line the killed writer left unfinished, so that the next writer's first
    line does not run into it (and get skipped with it)."""
    if not log.exists():
        return
    data = log.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(log, "r+b") as fh:
            fh.truncate(end)


def test_sigkill_during_ingest_never_loses_acknowledged_writes(tmp_path: Path) -> None:
    kills = int(os.environ.get("ENGRAMDB_CRASH_KILLS", "30"))
    store, log = tmp_path / "crash.engram", tmp_path / "acks.jsonl"
    rng = random.Random(1234)
    enc = HashingEncoder(dim=32)
    checked = total = 0
    for i in range(kills):
        proc = subprocess.Popen(
            [PYTHON, str(HELPERS / "crash_writer.py"), str(store), str(log), str(i)],
            env=python_env(), stderr=subprocess.PIPE,
        )
        # Wait until the writer is acknowledging batches, then kill it at a random moment:
        # most of its time is spent inside ingest_many (encode, append, fsync, commit).
        start_size = log.stat().st_size if log.exists() else 0
        deadline = time.monotonic() + 30
        while (log.stat().st_size if log.exists() else 0) == start_size:
            if proc.poll() is not None:
                raise AssertionError(f"writer died: {proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "writer made no progress in 30 s"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        _cut_torn_tail(log)
        acked = _acknowledged(log)
        with engramdb.open(store, encoder=enc) as mem:
            report = mem.verify()
            assert report.ok, report.problems
            ids = sorted(acked)
            stored = mem.vectors(ids) if ids else np.zeros((0, 32))
            # What the store keeps: the encoder's vectors scaled to unit length.
            raw = enc.encode([normalize_text(acked[i]) for i in ids])
            np.testing.assert_array_equal(stored, check_vectors(raw, 32, len(ids)))
            for ident in rng.sample(ids, min(20, len(ids))):
                assert mem.get(ident).text == normalize_text(acked[ident])
            checked = len(ids)
            total += checked
    assert checked > 0, "the writer never acknowledged anything: the test proved nothing"
    print(f"\n[crash] {kills} kills, 0 acknowledged writes lost: {checked} acknowledged ids "
          f"checked after the last kill (id, exact vector, 20 texts), {total} id checks in all")
