"""Old code against new on one store: bulk ingest rate and recall latency, alternated.

Run by hand, to check that a change is no slower. Each measurement runs in its own process,
old and new alternating, so that the machine's load falls on both alike; ``--old`` is a
checkout of the earlier code (``git archive REV | tar -x -C DIR``), put first on PYTHONPATH.
Recall runs on one store that the old code builds (a newer format may not open in older
code), opened by each side in turn, so both read the same files (separate copies of it
measured differently by up to 15%).

    python benchmarks/ab_versions.py --old /tmp/old --rounds 4
    python benchmarks/ab_versions.py --old /tmp/old --n 1000000 --rounds 2 --modes recall \
        --new-copy

``--new-copy`` gives the new code its own copy of the store (made once, after the build):
for an old code whose format the new one upgrades on open, after which the old cannot read
it. ``--modes recall`` skips the bulk-ingest runs (at 1M each builds a whole index).

Prints one JSON line per run and the medians of each side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _data(work: Path, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors and queries (seeded), cached in ``work``."""
    path = work / f"data-{n}x{dim}.npy"
    if not path.exists():
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((200, dim))
        x = centres[rng.integers(0, 200, n + 200)] + 0.5 * rng.standard_normal((n + 200, dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.save(path, x.astype(np.float32))
    x = np.load(path)
    return x[:n], x[n:]


def _worker(mode: str, store: Path, work: Path, n: int, dim: int) -> dict[str, float]:
    import engramdb

    data, queries = _data(work, n, dim)
    out: dict[str, float] = {}
    if mode == "ingest":
        shutil.rmtree(store, ignore_errors=True)
        texts = [f"engram {i}" for i in range(n)]
        opened = time.perf_counter()
        with engramdb.open(store, dim=dim) as mem:
            t = time.perf_counter()
            mem.ingest_many(texts, vectors=data)
            done = time.perf_counter()
            out["ingest_rows_per_s"] = n / (done - t)
            # A new store's catalog is made at its first write, or (earlier code) at open:
            # the rate with the open counted compares the same work.
            out["open_ingest_rows_per_s"] = n / (done - opened)
            mem.drain_index()
    else:
        with engramdb.open(store) as mem:
            mem.drain_index(save=False)
            for q in queries[:50]:
                mem.recall(vector=q, top_k=10)
            times = []
            for _ in range(5):
                for q in queries:
                    t = time.perf_counter()
                    mem.recall(vector=q, top_k=10)
                    times.append(time.perf_counter() - t)
            out["recall_p50_ms"] = statistics.median(times) * 1e3
    return out


def _run(side: str, old: Path, args: list[str]) -> dict[str, float]:
    env = dict(os.environ)
    if side == "old":
        env["PYTHONPATH"] = f"{old}{os.pathsep}{env.get('PYTHONPATH', '')}"
    done = subprocess.run([sys.executable, __file__, "--worker", *args], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Alternate old and new runs; print each run and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=False)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--work", type=Path, default=Path("/tmp/engramdb-ab"))
    parser.add_argument("--modes", default="recall,ingest",
                        help="comma-separated: recall, ingest")
    parser.add_argument("--new-copy", action="store_true",
                        help="the new code reads its own copy of the old code's store")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "STORE"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.worker:
        print(json.dumps(_worker(a.worker[0], Path(a.worker[1]), a.work, a.n, a.dim)))
        return
    if a.old is None:
        parser.error("--old DIR is required")
    common = ["--n", str(a.n), "--dim", str(a.dim), "--work", str(a.work)]
    modes = [m for m in a.modes.split(",") if m]
    if not set(modes) <= {"recall", "ingest"}:
        parser.error(f"unknown modes in {a.modes!r}")
    base = a.work / "base"
    # Built by the old code: the new one reads older formats, not the other way round.
    _run("old", a.old, ["ingest", str(base), *common])
    bases = {"old": base, "new": base}
    if a.new_copy:
        bases["new"] = a.work / "base-new"
        shutil.rmtree(bases["new"], ignore_errors=True)
        shutil.copytree(base, bases["new"])
    results: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for _ in range(a.rounds):
        for side in ("old", "new"):
            runs = {"recall": bases[side], "ingest": a.work / f"{side}-ingest"}
            for mode, store in ((m, runs[m]) for m in modes):
                got = _run(side, a.old, [mode, str(store), *common])
                print(side, mode, json.dumps(got), flush=True)
                for key, value in got.items():
                    results[side].setdefault(key, []).append(value)
    for side, metrics in results.items():
        print(side, {k: round(statistics.median(v), 3) for k, v in metrics.items()})


if __name__ == "__main__":
    main()
