"""Crash campaign for ``engramdb.reembed``: SIGKILL a process re-embedding a store, then check.

A worker process (this file with ``--worker``) loops over one store: it writes a few turns
(``integrate``, small ``ingest_many`` batches and keyed ingests, through the turn journal),
leaves them in the journal half the time (the handle is dropped without ``close()``, so the
re-embedding's open must replay and fold them), then re-embeds the store to the other of two
HashingEncoders (dim 16 and dim 24), and again. Every acknowledged turn and the start and end
of every re-embedding are logged, fsynced (the crash tests' ``AckLog``). The parent kills it:

- **random**: at a random moment after its first new log line (``_kill_after_progress`` of
  tests/test_crash_points.py), so kills fall in the turns, in every step of a re-embedding
  (export, encoding, import, verify, the switch) and between runs;
- **at a point**: right after one named step of the re-embedding (``POINTS``), in the
  atomic switch (``renameat2(RENAME_EXCHANGE)``) or the fallback's two renames.

After each kill the parent runs :func:`engramdb.reembed.settle` (it must find nothing to do
unless the fallback was cut between its renames), opens the store, and checks: ``verify()``
is clean; the manifest names one of the two encoders, the old one if the kill came before the
re-embedding was logged as started, the new one once it was logged as done, either in
between; every acknowledged turn's text is stored, its id is the content id under that
encoder, and a recall by its vector finds it. At the end a last re-embedding runs in the
parent and no work directory of a killed run may be left.

    PYTHONPATH=. .venv/bin/python benchmarks/crash_reembed.py --kills 40

prints a Markdown summary (docs/reliability.md, "Re-embedding"). tests/test_crash_reembed.py
runs a few kills of each kind.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from crash_ops import AckLog, _texts  # noqa: E402 - the crash tests' fsynced log and texts

import engramdb  # noqa: E402
from engramdb.content import content_id, decompress_text, normalize_text  # noqa: E402
from engramdb.encoders import HashingEncoder  # noqa: E402

rb = importlib.import_module("engramdb.reembed")  # the module, whatever engramdb.reembed names

ENCODERS = (HashingEncoder(dim=16), HashingEncoder(dim=24, seed=3))
BY_FP = {e.fingerprint: e for e in ENCODERS}
# Nothing expires (every acknowledged turn must stay); turns pile up in the journal.
SETTINGS = {"short_term_lifespan": 1e9, "long_term_lifespan": 1e9, "journal_fold_turns": 500}
# Steps of a re-embedding after which the worker kills itself, and what PATH must hold then
# ("old" / "new" encoder). "rename1" is the fallback's first rename (PATH is empty until
# settle()); "rmtree" kills half way through deleting the old store from the work directory.
POINTS = {
    "open_store": "old", "export_store": "old", "_reencode": "old", "import_store": "old",
    "_write_id_map": "old", "_signature": "old", "_relock": "old", "mark_ready": "old",
    "_rename_exchange": "new", "rename1": "new", "_exchange": "new", "rmtree": "new",
}
FALLBACK_ONLY = {"rename1"}


# -- the worker -----------------------------------------------------------------------------------


def _die_after(point: str) -> None:
    """Make the re-embedding SIGKILL this process right after ``point``."""
    def kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "rename1":
        real_rename = os.rename

        def rename(src: Any, dst: Any) -> None:
            real_rename(src, dst)
            if Path(dst).name == "old":
                kill()
        rb.os.rename = rename  # type: ignore[attr-defined]
    elif point == "rmtree":
        real_rmtree, real_create = rb.shutil.rmtree, rb._Work.create
        mine: list[Path] = []

        def create(store_dir: Path) -> Any:
            work = real_create(store_dir)
            mine.append(work.path)
            return work

        def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
            if Path(path) in mine:  # this run's work directory, the old store inside
                (Path(path) / "store" / "MANIFEST.json").unlink(missing_ok=True)
                real_rmtree(Path(path) / "store" / "segments", ignore_errors=True)
                kill()
            real_rmtree(path, *args, **kwargs)
        rb._Work.create = create  # type: ignore[method-assign]
        rb.shutil.rmtree = rmtree  # type: ignore[attr-defined]
    else:
        owner = rb._Work if point == "mark_ready" else rb
        real = getattr(owner, point)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            kill()
            return out
        setattr(owner, point, wrapped)


def _turns(store: str, log: AckLog, rng: random.Random, seed: int, counter: list[int]) -> None:
    """A few acknowledged turns; half the time the handle is dropped unclosed (the journal
    keeps them until the next open replays them)."""
    mem = engramdb.open(store, encoder=None if os.path.exists(store) else ENCODERS[0],
                        settings=SETTINGS)
    for _ in range(rng.randint(3, 10)):
        how = rng.random()
        if how < 0.5:
            text = _texts(rng, seed, counter, 1)[0]
            mem.integrate(text, top_k=2, session=f"s{seed}")
            log.write(op="turn", texts=[text])
        elif how < 0.85:
            texts = _texts(rng, seed, counter, rng.randint(2, 5))
            mem.ingest_many(texts, roles=["user"] * len(texts))
            log.write(op="turn", texts=texts)
        else:
            text = _texts(rng, seed, counter, 1)[0]
            mem.ingest(text, key=f"k{seed}-{counter[0]}", metadata={"w": counter[0]})
            log.write(op="turn", texts=[text])
    if rng.random() < 0.5:
        mem.close()
    else:
        del mem
        gc.collect()  # released without a fold: the turns stay in journal.bin


def worker(store: str, log_path: str, seed: int, mode: str, point: str) -> None:
    """Turns, then a re-embedding to the other encoder, over and over, until killed. With
    ``point``, one round that dies at that step (exit 3 if it never got there)."""
    rng = random.Random(seed)
    counter = [0]
    log = AckLog(log_path)
    if mode == "fallback":
        rb._rename_exchange = lambda a, b: False  # as on a file system without it
    if point != "-":
        _die_after(point)
    while True:
        _turns(store, log, rng, seed, counter)
        current = rb.Manifest.read(Path(store)).fingerprint
        target = next(e for e in ENCODERS if e.fingerprint != current)
        log.write(op="start", to=target.fingerprint, t=time.time())
        rb.reembed(store, target)
        log.write(op="done", to=target.fingerprint, t=time.time())
        if point != "-":
            raise SystemExit(3)


# -- the parent -----------------------------------------------------------------------------------


@dataclass
class Campaign:
    """What the log promised so far, and what the kills found."""

    store: Path
    log: Path
    texts: set[str] = field(default_factory=set)
    current: str = ENCODERS[0].fingerprint  # the encoder PATH is known to be under
    offset: int = 0
    runs: int = 0  # re-embeddings logged as done
    outcomes: Counter = field(default_factory=Counter)  # where each kill landed
    steps: Counter = field(default_factory=Counter)  # step of the re-embedding at the kill
    durations: list[float] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # work directories already looked at

    def read(self) -> str | None:
        """Apply the log's new lines; return the target of a re-embedding started and not
        logged as done (the kill came during it), else None."""
        from tests.test_crash import _cut_torn_tail

        _cut_torn_tail(self.log)
        data = self.log.read_bytes() if self.log.exists() else b""
        pending, started = None, None
        for line in data[self.offset:].decode("utf-8").splitlines():
            e = json.loads(line)
            if e["op"] == "turn":
                self.texts.update(normalize_text(t) for t in e["texts"])
            elif e["op"] == "start":
                pending, started = e["to"], e["t"]
            else:
                assert e["to"] == pending, "a re-embedding ended that was not started"
                self.current, pending = e["to"], None
                self.runs += 1
                self.durations.append(e["t"] - started)
        self.offset = len(data)
        return pending

    def step(self) -> str:
        """Which step a killed re-embedding was in, read from what its work directory holds
        (before anything cleans it)."""
        fresh = [p for p in self.store.parent.iterdir()
                 if rb._WORK_TAG in p.name and p.name not in self.seen]
        self.seen.update(p.name for p in fresh)
        if not fresh:
            return "opening the old store (no work directory yet)"
        work = max(fresh, key=lambda p: p.stat().st_mtime)
        names = {p.name for p in work.iterdir()}
        if not self.store.exists():
            return "fallback switch, between the renames"
        if rb._READY in names:
            ready = (work / rb._READY).read_text().strip()
            if rb.Manifest.read(self.store).fingerprint == ready:
                return "switched, deleting the old store"
            return "switch: READY written, before the exchange"
        if "store" in names:
            return "new store built, verifying it / closing the old one"
        if any(n.startswith(".store.import-") for n in names):
            return "import (restore, rebuild, verify)"
        if "reembed.jsonl.body" in names or "export.jsonl" in names:
            return "encoding with the new encoder"
        return "export"

    def check(self, pending: str | None, mode: str, expect: str | None = None) -> str:
        """Settle, open and check the store after a kill; return where the kill landed."""
        if pending is not None:
            self.steps[self.step()] += 1
        settled = rb.settle(self.store)
        assert settled is None or mode == "fallback", f"settle() moved a store: {settled}"
        with engramdb.open(self.store, create=False) as mem:
            report = mem.verify()
            assert report.ok, report.problems
            fp = mem.fingerprint
            allowed = {self.current} if pending is None else {self.current, pending}
            assert fp in allowed, f"store under {fp[:12]}, expected one of {allowed}"
            if expect is not None:
                want = self.current if expect == "old" else pending
                assert fp == want, f"after the step the store should be {expect}"
            with mem.snapshot() as snap:
                rows = {decompress_text(t): i for i, t in snap.query(
                    "SELECT id, text FROM engrams")}
            lost = sorted(self.texts - set(rows))
            assert not lost, f"{len(lost)} acknowledged turns lost, e.g. {lost[0]!r}"
            enc = BY_FP[fp]
            sample = random.Random(len(self.texts)).sample(sorted(self.texts),
                                                           min(5, len(self.texts)))
            for text in sample:
                assert rows[text] == content_id(fp, text), "an id of the other encoder"
                hits = mem.recall(vector=enc.encode([text])[0], top_k=1, associative=False)
                assert hits and hits[0].text == text, f"recall by its vector misses {text!r}"
        landed = ("turns" if pending is None else
                  "reembed -> new" if fp == pending else "reembed -> old")
        if settled is not None:
            landed += f" (settled: {settled})"
        self.current = fp
        return landed


def _spawn(c: Campaign, seed: int, mode: str, point: str) -> subprocess.Popen:
    from tests.conftest import python_env

    return subprocess.Popen(
        [sys.executable, __file__, "--worker", str(c.store), str(c.log), str(seed), mode,
         point], env=python_env(), stderr=subprocess.PIPE)


def random_kill(c: Campaign, seed: int, mode: str, rng: random.Random) -> str:
    """One worker killed at a random moment; the check's verdict."""
    from tests.test_crash_points import _kill_after_progress

    # About one round of the worker: its turns, then a re-embedding as long as the last ones.
    window = 0.3 + 2.0 * (max(c.durations[-3:]) if c.durations else 1.0)
    proc = _spawn(c, seed, mode, "-")
    _kill_after_progress(proc, c.log, rng, window)
    landed = c.check(c.read(), mode)
    c.outcomes[f"random, {mode}: {landed}"] += 1
    return landed


def point_kill(c: Campaign, seed: int, mode: str, point: str) -> str:
    """One worker that kills itself right after ``point``; the check's verdict."""
    proc = _spawn(c, seed, mode, point)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, (
        f"worker did not die at {point}: exit {proc.returncode}: {err.decode()[-2000:]}")
    pending = c.read()
    assert pending is not None, f"{point}: the kill came outside the re-embedding"
    landed = c.check(pending, mode, POINTS[point])
    c.outcomes[f"at {point}, {mode}: {landed}"] += 1
    return landed


def finish(c: Campaign) -> None:
    """A last re-embedding in this process cleans every leftover work directory."""
    target = next(e for e in ENCODERS if e.fingerprint != c.current)
    rb.reembed(c.store, target)
    c.current = target.fingerprint
    c.check(None, "exchange")
    left = [p.name for p in c.store.parent.iterdir() if rb._WORK_TAG in p.name]
    assert not left, f"work directories left: {left}"


def campaign(root: Path, kills: int, points: list[tuple[str, str]], seed: int = 19
             ) -> Campaign:
    """``kills`` random kills (every fourth in fallback mode), then one kill at each
    (point, mode) of ``points``; returns the campaign with its outcomes."""
    c = Campaign(root / "crash.engram", root / "acks.jsonl")
    rng = random.Random(seed)
    for i in range(kills):
        random_kill(c, seed * 1000 + i, "fallback" if i % 4 == 3 else "exchange", rng)
    for j, (point, mode) in enumerate(points):
        point_kill(c, seed * 1000 + kills + j, mode, point)
    finish(c)
    return c


def all_points() -> list[tuple[str, str]]:
    """Every step in the atomic switch's mode, and the fallback's steps of the switch."""
    out = [(p, "exchange") for p in POINTS if p not in FALLBACK_ONLY]
    return out + [(p, "fallback") for p in ("mark_ready", "rename1", "_exchange", "rmtree")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40, help="random kills")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--no-points", action="store_true", help="random kills only")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        points = [] if args.no_points else all_points()
        c = campaign(Path(tmp), args.kills, points, args.seed)
    elapsed = time.perf_counter() - t0
    total = args.kills + len(points)
    print(f"{total} kills ({args.kills} random, {len(points)} at named steps) in "
          f"{elapsed:.0f} s; {c.runs} re-embeddings completed; {len(c.texts)} acknowledged texts "
          f"checked after every kill, 0 lost; every reopen verified clean, under one "
          f"encoder; re-embedding took {min(c.durations):.2f}-{max(c.durations):.2f} s.\n")
    print("| where the kill landed | kills |\n|---|---|")
    for what, n in sorted(c.outcomes.items()):
        print(f"| {what} | {n} |")
    print("\n| step of the re-embedding at the kill (from its work directory) | kills |\n"
          "|---|---|")
    for what, n in c.steps.most_common():
        print(f"| {what} | {n} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
    else:
        raise SystemExit(main())
