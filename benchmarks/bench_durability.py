"""What ``durability="fast"`` gains over ``"full"``: write latency per operation, run by hand.

For each mode a fresh store is written with single-row ``ingest`` calls, ``ingest_many``
batches and ``integrate`` turns (HashingEncoder, so encoding costs almost nothing and the
figures are the storage path); the two stores are written call by call in turn. Prints a
markdown table of the median and mean latency per call (one run; the mean includes the
periodic syncs of "fast") with the machine and the command line. The stores live under
``--dir`` (default: a temporary directory), which should be on the disk you care about:
fsync cost is a property of the disk.

Example::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_durability.py --single 300 --batches 20
"""

from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import engramdb
from engramdb.encoders import HashingEncoder

MODES = ("full", "fast")


def _timed(ops: dict[str, Callable[[int], object]], calls: int) -> dict[str, list[float]]:
    """Seconds each call took, per mode. The modes alternate call by call, so that a noisy
    neighbour on a shared machine slows both alike, and which goes first alternates too (the
    second would otherwise meet the first's background indexing thread every time)."""
    out: dict[str, list[float]] = {mode: [] for mode in ops}
    for i in range(calls):
        order = list(ops.items())
        for mode, op in order if i % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            op(i)
            out[mode].append(time.perf_counter() - t)
    return out


def run(root: Path, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Write one fresh store per mode; return the latencies of each kind of call, per mode."""
    enc = HashingEncoder(dim=args.dim)
    mems = {mode: engramdb.open(root / f"{mode}.engram", encoder=enc,
                                settings={"durability": mode}) for mode in MODES}
    res: dict[str, dict[str, list[float]]] = {}
    try:
        for mem in mems.values():
            mem.ingest_many([f"warm-up memory {k}" for k in range(64)])
        res["ingest (1 row)"] = _timed(
            {m: (lambda i, mem=mem, m=m: mem.ingest(f"{m} single memory {i} about things"))
             for m, mem in mems.items()}, args.single)
        res[f"ingest_many ({args.batch_rows} rows)"] = _timed(
            {m: (lambda i, mem=mem, m=m: mem.ingest_many(
                [f"{m} batch {i} row {k} of some text" for k in range(args.batch_rows)]))
             for m, mem in mems.items()}, args.batches)
        res["integrate (top_k=3)"] = _timed(
            {m: (lambda i, mem=mem, m=m: mem.integrate(f"{m} turn {i}: about row {i}?",
                                                       top_k=3))
             for m, mem in mems.items()}, args.turns)
        res["sync()"] = _timed({m: (lambda i, mem=mem: mem.sync())
                                for m, mem in mems.items()}, 1)
        res["close()"] = _timed({m: (lambda i, mem=mem: mem.close())
                                 for m, mem in mems.items()}, 1)
    finally:
        for mem in mems.values():
            mem.close()
    return res


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, measure both modes, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None, help="where the stores go")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--single", type=int, default=300, help="single-row ingest calls")
    ap.add_argument("--batches", type=int, default=20, help="ingest_many calls")
    ap.add_argument("--batch-rows", type=int, default=256)
    ap.add_argument("--turns", type=int, default=200, help="integrate calls")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="engramdb-durability-", dir=args.dir))
    try:
        res = run(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"python {sys.version.split()[0]}, engramdb {engramdb.__version__}")
    print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print()
    print("| call | n | full p50 ms | fast p50 ms | p50 speed-up | full mean ms | "
          "fast mean ms | mean speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for key, per_mode in res.items():
        a, b = per_mode["full"], per_mode["fast"]
        pa, pb = statistics.median(a) * 1e3, statistics.median(b) * 1e3
        ma, mb = statistics.fmean(a) * 1e3, statistics.fmean(b) * 1e3
        print(f"| {key} | {len(a)} | {pa:.2f} | {pb:.2f} | {pa / pb:.1f}x | {ma:.2f} | "
              f"{mb:.2f} | {ma / mb:.1f}x |")


if __name__ == "__main__":
    main()
