"""Several worker processes over one root: engramdb.Pool(multiprocess=True) against one
process of threads and against SQLite in WAL mode.

Run by hand (not in CI). A request is what a chat server does for one message: open the user
(a Pool session), ``integrate`` one turn, release. The requests of a run name users drawn at
random and are dealt at random to ``--workers`` worker processes (like gunicorn or uvicorn
workers that share no state), each serving its own list one request after another. Setups:

- ``multiprocess``: each worker its own ``Pool(root, multiprocess=True)``;
- ``threads``: one process, ``--workers`` threads over one ``Pool(root)`` (default mode, stores
  stay open), the same request lists;
- ``sqlite``: each worker its own ``sqlite3`` connection to one database in WAL mode with
  ``synchronous=FULL``; a request is one ``BEGIN IMMEDIATE`` transaction that reads the
  user's 5 latest turns and inserts the turn with its vector (a user column, an index on it);
- ``default`` (only when named in ``--setups``): each worker a default-mode ``Pool(root)``,
  which keeps idle stores open and locked: the failure multiprocess mode fixes (slow: most
  requests wait out the 10 s lock timeout).

Every setup encodes with ``HashingEncoder(dim=384)``. Reported: errors surfaced to the caller,
acknowledged turns lost (after the run every store is reopened, ``verify()``d and every
acknowledged id looked up; SQLite: ``integrity_check`` and the acknowledged rowids), throughput
and p50/p99 latency of a request (open + integrate + release). Example::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_processes.py --runs 6:120,30:1000
    PYTHONPATH=. .venv/bin/python benchmarks/bench_processes.py --runs 6:120 --setups default
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from machine_info import describe  # noqa: E402 - benchmarks/ is on sys.path

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.pool import Pool

DIM = 384
LONG_LIFE = {"short_term_lifespan": 1e9}  # no acknowledged turn may expire before the check
TOPICS = ["my guinea pig Oscar", "the trip to Lisbon", "a sourdough recipe", "my sister's job",
          "the broken bike", "learning Rust", "the garden", "a job interview"]
SETUPS = ("multiprocess", "threads", "sqlite")  # run by default
OLD_SETUP = "default"  # only on request


def text_for(user: str, n: int) -> str:
    """The text of request ``n`` (for ``user``)."""
    return f"{user}, request {n}: about {TOPICS[n % len(TOPICS)]} ({n * 7919})"


# -- one worker -------------------------------------------------------------------------------


def _serve_engramdb(pool: Pool, requests: list[list], out: dict) -> None:
    for n, user in requests:
        t0 = time.perf_counter()
        try:
            with pool.session(user) as mem:
                turn = mem.integrate(text_for(user, n), top_k=5)
            out["acked"].append([user, turn.id])
        except Exception as exc:  # surfaced to the caller: counted, the run goes on
            out["errors"].append(type(exc).__name__)
        out["lat_ms"].append((time.perf_counter() - t0) * 1000)


def _serve_sqlite(db: Path, requests: list[list], out: dict) -> None:
    enc = HashingEncoder(dim=DIM)
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    con.execute("PRAGMA synchronous=FULL")
    for n, user in requests:
        t0 = time.perf_counter()
        try:
            text = text_for(user, n)
            vec = enc.encode([text])[0].astype(np.float32).tobytes()
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("SELECT text FROM turns WHERE user = ? ORDER BY id DESC LIMIT 5",
                            (user,)).fetchall()
                rowid = con.execute("INSERT INTO turns (user, text, vec) VALUES (?, ?, ?)",
                                    (user, text, vec)).lastrowid
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            out["acked"].append([user, rowid])
        except Exception as exc:
            out["errors"].append(type(exc).__name__)
        out["lat_ms"].append((time.perf_counter() - t0) * 1000)
    con.close()


def worker(setup: str, root: Path, lists: list[list[list]], result: Path) -> None:
    """One worker process: get ready, say so, wait for "go" on stdin, serve ``lists`` (one per
    thread), write the figures to ``result``."""
    out: dict = {"acked": [], "errors": [], "lat_ms": []}
    enc = HashingEncoder(dim=DIM)
    if setup == "sqlite":
        serve, pool = _serve_sqlite, root / "turns.sqlite"
    else:
        serve = _serve_engramdb
        pool = Pool(root, encoder=enc, settings=LONG_LIFE, multiprocess=setup == "multiprocess")
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    outs = [{"acked": [], "errors": [], "lat_ms": []} for _ in lists]
    threads = [threading.Thread(target=serve, args=(pool, reqs, o)) for reqs, o in zip(lists, outs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.time()
    if isinstance(pool, Pool):
        pool.close()
    for o in outs:
        for k in out:
            out[k].extend(o[k])
    result.write_text(json.dumps({**out, "start": start, "end": end}))


# -- one run ----------------------------------------------------------------------------------


def _deal(users: int, requests: int, workers: int, seed: int) -> list[list[list]]:
    """The request lists: ``requests`` (index, user) drawn at random, each dealt to a random
    worker."""
    rng = random.Random(seed)
    lists: list[list[list]] = [[] for _ in range(workers)]
    for n in range(requests):
        lists[rng.randrange(workers)].append([n, f"user-{rng.randrange(users):03d}"])
    return lists


def _make_sqlite(db: Path) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE turns (id INTEGER PRIMARY KEY, user TEXT NOT NULL, "
                "text TEXT NOT NULL, vec BLOB NOT NULL)")
    con.execute("CREATE INDEX turns_user ON turns (user, id)")
    con.close()


def _launch(setup: str, root: Path, lists: list[list[list]]) -> list[dict]:
    """Run the workers of one setup together; return their figures."""
    groups = [lists] if setup == "threads" else [[one] for one in lists]
    kind = "default" if setup == "threads" else setup
    procs, results = [], []
    for i, group in enumerate(groups):
        spec = root.parent / f"{setup}-{i}.json"
        spec.write_text(json.dumps(group))
        results.append(root.parent / f"{setup}-{i}.out.json")
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, str(root), str(spec), str(results[-1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"a {setup} worker failed to start")
    for p in procs:  # all at once
        p.stdin.write("go\n")
        p.stdin.flush()
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"{setup} workers exited with {codes}")
    return [json.loads(r.read_text()) for r in results]


def _lost(setup: str, root: Path, acked: list[list]) -> tuple[int, str]:
    """Acknowledged turns missing after the run, and whether every store checks clean."""
    by_user: dict[str, list] = {}
    for user, ident in acked:
        by_user.setdefault(user, []).append(ident)
    if setup == "sqlite":
        con = sqlite3.connect(root / "turns.sqlite")
        ok = con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        found = {r[0] for r in con.execute("SELECT id FROM turns")}
        con.close()
        return sum(1 for _, i in acked if i not in found), "ok" if ok else "DAMAGED"
    missing, clean = 0, 0
    with Pool(root) as pool:
        for user, ids in by_user.items():
            with pool.session(user) as mem:
                clean += mem.verify().ok
                missing += sum(1 for i in ids if i not in mem)
    return missing, f"{clean}/{len(by_user)}"


def run_one(setup: str, users: int, requests: int, args: argparse.Namespace) -> dict:
    """One setup on a fresh root; return its row's figures."""
    base = Path(tempfile.mkdtemp(prefix=f"bench_processes_{setup}_"))
    root = base / "root"
    root.mkdir()
    if setup == "sqlite":
        _make_sqlite(root / "turns.sqlite")
    lists = _deal(users, requests, args.workers, args.seed)
    load = os.getloadavg()[0]
    parts = _launch(setup, root, lists)
    acked = [a for p in parts for a in p["acked"]]
    errors = Counter(e for p in parts for e in p["errors"])
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    lost, clean = _lost(setup, root, acked)
    lat = np.array([x for p in parts for x in p["lat_ms"]])
    shutil.rmtree(base, ignore_errors=True)
    return {"setup": setup, "users": users, "requests": requests, "acked": len(acked),
            "errors": dict(errors), "lost": lost, "clean": clean, "wall": wall,
            "rps": requests / wall, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "load": load}


LABELS = {
    "multiprocess": "engramdb, {w} processes, `Pool(multiprocess=True)`",
    "threads": "engramdb, 1 process x {w} threads, one `Pool` (default mode)",
    "sqlite": "SQLite WAL, {w} processes, synchronous=FULL",
    "default": "engramdb, {w} processes, default-mode `Pool` (before)",
}


def _row(r: dict, workers: int) -> str:
    errors = ", ".join(f"{n} {k}" for k, n in sorted(r["errors"].items())) or "0"
    return (f"| {LABELS[r['setup']].format(w=workers)} | {r['users']} | {r['requests']:,} | "
            f"{errors} | {r['lost']} | {r['clean']} | {r['wall']:.1f} | {r['rps']:.1f} | "
            f"{r['p50']:.0f} | {r['p99']:.0f} | {r['load']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run every setup for every users:requests pair, print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="6:120,30:1000",
                    help="comma-separated USERS:REQUESTS pairs (default: 6:120,30:1000)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--setups", default=",".join(SETUPS),
                    help=f"any of {', '.join((*SETUPS, OLD_SETUP))} (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        setup, root, spec, result = args.worker
        worker(setup, Path(root), json.loads(Path(spec).read_text()), Path(result))
        return 0
    setups = [s for s in args.setups.split(",") if s]
    if set(setups) - {*SETUPS, OLD_SETUP} or args.workers < 1:
        ap.error(f"--setups takes {', '.join((*SETUPS, OLD_SETUP))}; --workers >= 1")
    runs = [tuple(int(x) for x in pair.split(":")) for pair in args.runs.split(",")]
    rows = []
    for users, requests in runs:
        for setup in setups:
            r = run_one(setup, users, requests, args)
            print(_row(r, args.workers), file=sys.stderr, flush=True)
            rows.append(r)
    cmd = "PYTHONPATH=. .venv/bin/python benchmarks/bench_processes.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print(f"\nMachine: {describe()}; Python {platform.python_version()}, sqlite "
          f"{sqlite3.sqlite_version}, engramdb {engramdb.__version__}")
    print(f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"Command: `{cmd}`\n")
    print("| setup | users | requests | errors | acked turns lost | verify clean | wall (s) "
          "| requests/s | p50 (ms) | p99 (ms) | load avg at start |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(_row(r, args.workers))
    bad = [r for r in rows if r["lost"] or (r["errors"] and r["setup"] != OLD_SETUP)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
