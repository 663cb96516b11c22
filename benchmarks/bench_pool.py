"""Load test of engramdb.Pool: U users x T turns through ``integrate`` from several threads.

Run by hand (not in CI). Each work item is one user's session of ``--burst`` consecutive turns
(how a chat server sees a user); items are shuffled across users and taken by ``--threads``
worker threads sharing one Pool of at most ``--max-open`` open stores, so stores are evicted
and reopened all the time. Reports throughput (turns/s), p50/p99 latency of one ``integrate``
and of acquiring a session (which includes opening or creating the store), then reopens every
store to check that it ``verify()``s clean and that every acknowledged turn is present
(``turn.id in store``). Examples::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pool.py --quick
    PYTHONPATH=. .venv/bin/python benchmarks/bench_pool.py --users 1000 --turns 100

Encoding uses HashingEncoder(dim=64) so the numbers measure the store, not a model. Stores
are created with a very long short-term lifespan so that no acknowledged turn can expire
before the check (otherwise old turns would rightly be invisible to ``in``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
from machine_info import describe  # noqa: E402 - benchmarks/ is on sys.path

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.pool import Pool

LONG_LIFE = {"short_term_lifespan": 1e9}
TOPICS = ["my guinea pig Oscar", "the trip to Lisbon", "a sourdough recipe", "my sister's job",
          "the broken bike", "learning Rust", "the garden", "a job interview"]


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def shard(args: argparse.Namespace, root: Path) -> dict:
    """Load and check this process's share of the users; return its raw figures."""
    enc = HashingEncoder(dim=args.dim)
    rng = random.Random(args.seed + args.shard)
    users = [f"user-{u:05d}" for u in range(args.users) if u % args.processes == args.shard]
    items = [(u, start, min(args.turns, start + args.burst))
             for u in users for start in range(0, args.turns, args.burst)]
    rng.shuffle(items)
    work: queue.SimpleQueue = queue.SimpleQueue()
    for it in items:
        work.put(it)
    acked: dict[str, list[str]] = {u: [] for u in users}
    integrate_s: list[float] = []
    acquire_s: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    done = [0]

    def worker(pool: Pool) -> None:
        lat, acq, mine = [], [], []
        while True:
            try:
                uid, a, b = work.get_nowait()
            except queue.Empty:
                break
            try:
                t0 = time.perf_counter()
                with pool.session(uid) as mem:
                    acq.append(time.perf_counter() - t0)
                    for t in range(a, b):
                        text = f"{uid} turn {t}: about {TOPICS[t % len(TOPICS)]} ({t * 7919})"
                        t1 = time.perf_counter()
                        turn = mem.integrate(text, top_k=5)
                        lat.append(time.perf_counter() - t1)
                        mine.append((uid, turn.id))
            except Exception as exc:  # count and report; the check below still runs
                with lock:
                    errors.append(f"{uid}: {type(exc).__name__}: {exc}")
            with lock:
                done[0] += 1
        with lock:
            integrate_s.extend(lat)
            acquire_s.extend(acq)
            for uid, ident in mine:
                acked[uid].append(ident)

    start = time.perf_counter()
    wall_start = time.time()
    with Pool(root, encoder=enc, max_open=args.max_open, settings=LONG_LIFE) as pool:
        threads = [threading.Thread(target=worker, args=(pool,)) for _ in range(args.threads)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=10)
            if args.progress:
                print(f"  [{args.shard}] {done[0]}/{len(items)} sessions, "
                      f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        wall_end = time.time()
    turns = sum(len(v) for v in acked.values())

    # The check: every store verifies clean and holds every acknowledged turn.
    check_start = time.perf_counter()
    bad_verify, missing = 0, 0
    with Pool(root, max_open=8) as pool:
        for uid in users:
            with pool.session(uid) as mem:
                if not mem.verify().ok:
                    bad_verify += 1
                missing += sum(1 for i in acked[uid] if i not in mem)
    return {"users": len(users), "turns": turns, "errors": errors, "bad_verify": bad_verify,
            "missing": missing, "check_s": time.perf_counter() - check_start,
            "wall_start": wall_start, "wall_end": wall_end,
            "integrate_ms": [x * 1000 for x in integrate_s],
            "acquire_ms": [x * 1000 for x in acquire_s]}


def run(args: argparse.Namespace) -> int:
    """Run the load test described by ``args``; return a process exit code (0: all checks ok).

    With ``--processes P`` the users are split into P disjoint shards, each loaded by its own
    process (its own Pool and ``--threads`` threads), the way a server runs several workers.
    """
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench_pool_"))
    print(f"root {root}: {args.users} users x {args.turns} turns, {args.processes} process(es) "
          f"x {args.threads} threads, max_open {args.max_open}, burst {args.burst}",
          file=sys.stderr)
    if args.processes == 1:
        args.shard = 0
        parts = [shard(args, root)]
    else:
        procs, outs = [], []
        for i in range(args.processes):
            out = root / f".shard-{i}.json"
            outs.append(out)
            procs.append(subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--root",
                                           str(root), "--shard", str(i), "--result", str(out)]))
        codes = [p.wait() for p in procs]
        if any(codes):
            print(f"a shard failed: exit codes {codes}", file=sys.stderr)
            return 1
        parts = [json.loads(o.read_text()) for o in outs]
        for o in outs:
            o.unlink()
    turns = sum(p["turns"] for p in parts)
    errors = [e for p in parts for e in p["errors"]]
    bad_verify = sum(p["bad_verify"] for p in parts)
    missing = sum(p["missing"] for p in parts)
    check_s = max(p["check_s"] for p in parts)
    load_s = max(p["wall_end"] for p in parts) - min(p["wall_start"] for p in parts)
    disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    if not args.keep and not args.root:
        shutil.rmtree(root, ignore_errors=True)

    lat = np.array([x for p in parts for x in p["integrate_ms"]])
    acq = np.array([x for p in parts for x in p["acquire_ms"]])
    cmd = "PYTHONPATH=. .venv/bin/python benchmarks/bench_pool.py " + " ".join(sys.argv[1:])
    print(f"\nMachine: {describe()}; Python {platform.python_version()}, duckdb "
          f"{duckdb.__version__}, engramdb {engramdb.__version__}")
    print(f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"Command: `{cmd}`\n")
    print("| users | turns/user | processes x threads | max_open (each) | turns acked | errors "
          "| wall (s) | turns/s | integrate p50 (ms) | integrate p99 (ms) "
          "| session acquire p50 / p99 (ms) | verify clean | acked turns missing | check (s) "
          "| disk (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.users} | {args.turns} | {args.processes} x {args.threads} | "
          f"{args.max_open} | {turns} | "
          f"{len(errors)} | {load_s:.1f} | {turns / load_s:.1f} | {_pct(lat, 50):.1f} | "
          f"{_pct(lat, 99):.1f} | {_pct(acq, 50):.1f} / {_pct(acq, 99):.1f} | "
          f"{args.users - bad_verify}/{args.users} | {missing} | {check_s:.1f} | "
          f"{disk / 2**20:.1f} |")
    for e in errors[:10]:
        print("error:", e, file=sys.stderr)
    ok = not errors and not bad_verify and not missing and turns == args.users * args.turns
    print("\nRESULT:", "ok" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the load test."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--turns", type=int, default=100, help="turns per user")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--max-open", type=int, default=64)
    ap.add_argument("--burst", type=int, default=10, help="turns per session (work item)")
    ap.add_argument("--dim", type=int, default=64, help="HashingEncoder dimension")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", help="pool directory (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary pool directory")
    ap.add_argument("--progress", action="store_true", help="print progress every 10 s")
    ap.add_argument("--quick", action="store_true", help="50 users x 20 turns")
    ap.add_argument("--processes", type=int, default=1,
                    help="worker processes, each with its own Pool over a disjoint user shard")
    ap.add_argument("--shard", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.users, args.turns = 50, 20
    if min(args.users, args.turns, args.threads, args.max_open, args.burst, args.dim,
           args.processes) < 1:
        ap.error("every count must be >= 1")
    if args.shard is not None:  # one worker process of a multi-process run
        args.result.write_text(json.dumps(shard(args, Path(args.root))))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
