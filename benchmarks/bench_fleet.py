"""Fleet maintenance over many small stores: a local process pool against a local Ray, and
both against one ``engramdb verify PATH`` per store in a shell loop.

Run by hand (not in CI). Builds ``--stores`` per-user stores under one Pool root
(HashingEncoder 64-d, ``--turns`` turns each through ``ingest_many``, built by two processes),
then runs ``verify``, ``gc`` and ``stats`` over all of them with :func:`engramdb.fleet.run_fleet`
on the local process pool and on a local Ray (started per round, its start-up timed apart),
each run from scratch (``resume=False``); with ``--rounds`` the order of the two backends
alternates from round to round (the load of a shared machine drifts). For each run: wall
time, stores/s, the median time a worker spent on one store, the peak RSS of the driver, of
the largest worker, and of all the driver's descendant processes together (sampled every
50 ms with psutil;
RSS counts shared pages once per process, so the sum overstates what they take together).
Then ``engramdb verify PATH`` is run once per store for a sample of ``--sample`` stores in a
bash loop; its time per store is extrapolated to all the stores. Examples::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fleet.py
    PYTHONPATH=. .venv/bin/python benchmarks/bench_fleet.py --rounds 2 --root /tmp/fleet-root
    PYTHONPATH=. .venv/bin/python benchmarks/bench_fleet.py --stores 60 --sample 10

gc on the stores of this benchmark has nothing to erase (nothing was forgotten and nothing
expired): it measures the open, the checks and the close, as a nightly gc of idle users does.
Later gc runs go over stores an earlier one already collected, which is the same work here.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine_info import describe  # noqa: E402 - benchmarks/ is on sys.path

from engramdb.encoders import HashingEncoder
from engramdb.fleet import run_fleet
from engramdb.pool import Pool

OPS = ("verify", "gc", "stats")
TOPICS = ["my guinea pig Oscar", "the trip to Lisbon", "a sourdough recipe", "my sister's job",
          "the broken bike", "learning Rust", "the garden", "a job interview"]


def _build_chunk(root: str, users: list[str], turns: int) -> int:
    with Pool(root, encoder=HashingEncoder(dim=64), max_open=4) as pool:
        for n, user in enumerate(users):
            texts = [f"{user} talked about {TOPICS[(n + t) % len(TOPICS)]} (turn {t})."
                     for t in range(turns)]
            with pool.session(user) as mem:
                mem.ingest_many(texts, roles=["user"] * turns, sessions=["s1"] * turns)
    return len(users)


def build(root: Path, stores: int, turns: int, processes: int = 2) -> float:
    """Create ``stores`` stores under ``root`` (missing ones only); return the seconds."""
    with Pool(root) as pool:
        have = set(pool.users())
    users = [f"user-{i:05d}" for i in range(stores) if f"user-{i:05d}" not in have]
    start = time.perf_counter()
    if users:
        chunks = [users[i::processes] for i in range(processes)]
        with cf.ProcessPoolExecutor(processes) as ex:
            sum(ex.map(_build_chunk, [str(root)] * processes, chunks, [turns] * processes))
    return time.perf_counter() - start


class Sampler:
    """Peak RSS of this process's descendants, sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.05) -> None:
        import psutil

        self.psutil = psutil
        self.every = every
        self.peak_driver = 0  # this process
        self.peak_worker = 0  # the largest single worker process
        self.peak_total = 0  # all descendants at one sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = self.psutil.Process()
        while not self._stop.is_set():
            self.peak_driver = max(self.peak_driver, me.memory_info().rss)
            total = 0
            for child in me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    name = child.name()
                except self.psutil.Error:
                    continue
                total += rss
                # Workers: Ray's are titled "ray::..."; a process pool's are python processes.
                if name.startswith("ray::") or name.startswith("python"):
                    self.peak_worker = max(self.peak_worker, rss)
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.every)


def run_backend(root: Path, backend: str, workers: int, state: Path) -> list[dict]:
    rows = []
    for op in OPS:
        load = os.getloadavg()[0]
        with Sampler() as sampler:
            start = time.perf_counter()
            result = run_fleet(root, op, workers=workers, resume=False, state_dir=state,
                               ray_address="local" if backend == "ray" else None)
            wall = time.perf_counter() - start
        per_store = sorted(r.seconds for r in result.rows)
        rows.append({
            "backend": backend, "op": op, "stores": len(result.rows),
            "counts": result.counts(), "wall_s": round(wall, 2),
            "stores_per_s": round(len(result.rows) / wall, 1),
            "median_store_ms": round(1000 * per_store[len(per_store) // 2], 1),
            "driver_peak_rss_mib": round(sampler.peak_driver / 2**20, 0),
            "worker_peak_rss_mib": round(sampler.peak_worker / 2**20, 0),
            "descendants_peak_rss_mib": round(sampler.peak_total / 2**20, 0),
            "load_avg": round(load, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def shell_loop(root: Path, sample: int) -> dict:
    """``engramdb verify PATH`` once per store, for ``sample`` stores spread over the root."""
    paths = sorted(p for p in root.iterdir() if p.name.endswith(".engram"))
    step = max(1, len(paths) // sample)
    chosen = [str(p) for p in paths[::step][:sample]]
    exe = Path(sys.executable).with_name("engramdb")
    script = 'for p in "$@"; do "$EXE" verify "$p" > /dev/null || exit 1; done'
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(["bash", "-c", script, "_", *chosen], check=True,
                   env={**os.environ, "EXE": str(exe)})
    wall = time.perf_counter() - start
    per = wall / len(chosen)
    return {"sample": len(chosen), "wall_s": round(wall, 2), "per_store_ms": round(1000 * per),
            "extrapolated_s": round(per * len(paths), 1), "stores": len(paths),
            "load_avg": round(load, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", type=int, default=1000)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--workers", type=int, default=None, help="default: the CPUs")
    ap.add_argument("--sample", type=int, default=50, help="stores in the shell loop")
    ap.add_argument("--root", type=Path, help="build (or reuse) the stores here")
    ap.add_argument("--backends", default="processes,ray")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the runs, alternating which backend goes first")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    root = args.root or tmp / "root"
    workers = args.workers or len(os.sched_getaffinity(0))
    print(f"# {describe()}; Python {platform.python_version()}; "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    built = build(root, args.stores, args.turns)
    print(f"built {args.stores} stores in {built:.1f} s under {root}", flush=True)
    figures: dict = {"machine": describe(), "stores": args.stores, "turns": args.turns,
                     "workers": workers, "build_s": round(built, 1), "runs": []}
    backends = args.backends.split(",")
    try:
        for round_ in range(args.rounds):
            # Alternate the order each round: the machine's load drifts, so neither backend
            # always gets the quieter minutes.
            for backend in backends if round_ % 2 == 0 else backends[::-1]:
                if backend == "ray":
                    figures.setdefault("ray_start_s", []).append(_start_ray(workers))
                try:
                    runs = run_backend(root, backend, workers, tmp / backend)
                finally:
                    if backend == "ray":
                        import ray

                        ray.shutdown()
                figures["runs"] += [{**r, "round": round_ + 1} for r in runs]
        figures["shell_loop"] = shell_loop(root, args.sample)
        print(json.dumps(figures["shell_loop"]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the progress logs (and the stores, without --root)
    print(_markdown(figures))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


def _start_ray(workers: int) -> float:
    import logging

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=100 * 2**20,
             logging_level=logging.WARNING, log_to_driver=False)
    took = round(time.perf_counter() - start, 1)
    print(f"ray started in {took} s", flush=True)
    return took


def _markdown(fig: dict) -> str:
    lines = ["| round | backend | op | stores | ok | wall (s) | stores/s | median per store (ms) | "
             "driver peak RSS (MiB) | largest worker RSS (MiB) | all descendants RSS (MiB) | "
             "load avg |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in fig["runs"]:
        lines.append(f"| {r.get('round', 1)} | {r['backend']} | {r['op']} | {r['stores']:,} | "
                     f"{r['counts']['ok']:,} | {r['wall_s']} | {r['stores_per_s']} | "
                     f"{r['median_store_ms']} | "
                     f"{r['driver_peak_rss_mib']:.0f} | {r['worker_peak_rss_mib']:.0f} | "
                     f"{r['descendants_peak_rss_mib']:.0f} | {r['load_avg']} |")
    if fig.get("ray_start_s"):
        lines.append(f"\nRay start-up (ray.init, local, {fig['workers']} CPUs): "
                     f"{', '.join(f'{t} s' for t in fig['ray_start_s'])}")
    s = fig.get("shell_loop")
    if s:
        lines.append(f"\nshell loop: {s['sample']} x `engramdb verify PATH` in {s['wall_s']} s "
                     f"= {s['per_store_ms']} ms a store; x {s['stores']:,} stores = "
                     f"{s['extrapolated_s']} s (extrapolated)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
