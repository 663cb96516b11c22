"""Time each catalog commit of one bulk ``ingest_many``, old code against new.

Run by hand, to find where a bulk load's time goes: every ``Catalog.transaction`` commit of
one load into a new store is timed (the commit whose WAL passes DuckDB's checkpoint
threshold checkpoints, and stands out). Each side runs in its own process, alternating;
``--old`` is a checkout of earlier code (``git archive REV | tar -x -C DIR``).

    python benchmarks/bulk_commits.py --old /tmp/old --rounds 2

Prints, per run, the load's rate, the number of commits, their total and each one in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def _worker(n: int, dim: int) -> dict:
    import engramdb

    # The older layout first: an editable install resolves a module the old checkout lacks
    # (engramdb.storage) from the new one.
    try:
        from engramdb.catalog import Catalog  # code from before the storage package
    except ImportError:
        from engramdb.storage.catalog import Catalog
    times: list[float] = []
    original = Catalog.transaction

    @contextmanager
    def timed(self):  # type: ignore[no-untyped-def]
        cm = original(self)
        con = cm.__enter__()
        try:
            yield con
        except BaseException:
            if not cm.__exit__(*sys.exc_info()):
                raise
            return
        started = time.perf_counter()
        cm.__exit__(None, None, None)
        times.append(time.perf_counter() - started)

    Catalog.transaction = timed
    rng = np.random.default_rng(0)
    data = rng.standard_normal((n, dim)).astype(np.float32)
    texts = [f"engram {i}" for i in range(n)]
    store = Path(tempfile.mkdtemp(prefix="bulk-commits-")) / "m"
    try:
        with engramdb.open(store, dim=dim) as mem:
            times.clear()
            started = time.perf_counter()
            mem.ingest_many(texts, vectors=data)
            took = time.perf_counter() - started
            mem.drain_index()
    finally:
        shutil.rmtree(store.parent, ignore_errors=True)
    return {"code": os.path.dirname(engramdb.__file__), "rows_per_s": round(n / took),
            "commits": len(times), "commit_total_s": round(sum(times), 3),
            "commit_ms": [round(t * 1000) for t in times]}


def main() -> None:
    """Alternate old and new runs; print one JSON line per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=False)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        print(json.dumps(_worker(a.n, a.dim)))
        return
    sides = ["old", "new"] if a.old else ["new"]
    for _ in range(a.rounds):
        for side in sides:
            env = dict(os.environ)
            if side == "old":
                env["PYTHONPATH"] = f"{a.old}{os.pathsep}{env.get('PYTHONPATH', '')}"
            done = subprocess.run([sys.executable, __file__, "--worker", "--n", str(a.n),
                                   "--dim", str(a.dim)], env=env, check=True,
                                  capture_output=True, text=True)
            print(side, done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
