"""Reopen benchmark: how long ``engramdb.open()`` takes on a large store, and the first recalls.

Run by hand (not in CI). Builds a store once per size under ``--out`` (384-d clustered unit
vectors from the generator of ``bench_index.py``, synthetic sentences so that the BM25 index has
a realistic vocabulary plus one unique number per engram, the worst case for its term count),
then, in ``--repeats`` fresh subprocesses, times:

* ``open``: ``engramdb.open(path)``, wall clock and CPU (all threads; on a shared machine the
  CPU column is the steadier one);
* ``first vec``: the first ``recall(vector=q)`` right after open;
* ``first text``: the first hybrid ``recall(text)`` (dense + BM25) right after that;
* ``ready``: open plus those two recalls (open loads everything before it returns; a store
  that offers ``wait_ready()`` is also waited for);
* ``vec p50`` / ``text p50``: the median of the next 200 recalls of each kind.

Each worker also checks that the recalls made right after open return exactly what the same
queries return once everything is loaded. Figures are medians over the repeats; the store's
files are in the page cache after the first repeat unless ``--cold`` evicts them before each.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_open.py --sizes 100000 1000000 --repeats 3

The 1M build takes a while (hnswlib insertion bound: 44 minutes on the loaded 2-core box) and
~3.7 GB of disk; it is kept and reused by later runs (``--rebuild`` to start again).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from machine_info import describe  # noqa: E402

DIM = 384
QUERIES = 200
K = 10
VOCAB = 50_000


def vectors(n: int, out: Path) -> np.ndarray:
    """``n`` x 384 clustered unit vectors, cached as .npy (bench_recall's file if present)."""
    for cached in (Path("/tmp/engramdb-bench-recall") / f"{n}x{DIM}-data.npy",
                   out / f"{n}x{DIM}-data.npy"):
        if cached.exists():
            return np.load(cached, mmap_mode="r")
    from bench_index import clustered

    _, draw = clustered(0, DIM, seed=0)
    x = draw(n, 1)
    np.save(out / f"{n}x{DIM}-data.npy", x)
    return x


def words() -> list[str]:
    """A fixed vocabulary of pronounceable pseudo-words (deterministic)."""
    rng = np.random.default_rng(7)
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    out: dict[str, None] = {}
    while len(out) < VOCAB:
        k = int(rng.integers(2, 4))
        out["".join(syll[i] for i in rng.integers(len(syll), size=k))] = None
    return list(out)


def texts(start: int, stop: int, vocab: list[str]) -> list[str]:
    """Sentences of 6-15 Zipf-distributed words plus one number unique to the engram."""
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, stop):
        n = int(rng.integers(6, 16))
        picks = np.minimum(rng.zipf(1.2, size=n), VOCAB) - 1
        out.append(" ".join(vocab[j] for j in picks) + f" (note {i})")
    return out


def queries(vocab: list[str]) -> tuple[np.ndarray, list[str]]:
    from bench_index import clustered

    _, draw = clustered(0, DIM, seed=0)
    rng = np.random.default_rng(11)
    qtexts = [" ".join(vocab[j] for j in rng.integers(20, 2000, size=3))
              for _ in range(QUERIES + 1)]
    return draw(QUERIES + 1, 2), qtexts


def build(path: Path, n: int, out: Path) -> dict:
    import engramdb
    from engramdb.encoders import HashingEncoder

    x = vectors(n, out)
    vocab = words()
    shutil.rmtree(path, ignore_errors=True)
    settings = engramdb.Settings(batch_rows=10_000)
    t0 = time.perf_counter()
    with engramdb.open(path, encoder=HashingEncoder(dim=DIM), settings=settings) as mem:
        for start in range(0, n, 50_000):
            stop = min(n, start + 50_000)
            mem.ingest_many(texts(start, stop, vocab), vectors=np.asarray(x[start:stop]))
            print(f"  {stop:,} / {n:,} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                  flush=True)
    info = {"n": n, "build_s": time.perf_counter() - t0,
            "bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file())}
    (path.parent / f"{path.stem}.json").write_text(json.dumps(info))
    return info


def worker(path: Path, code: Path | None) -> dict:
    if code is not None:  # another engramdb checkout (e.g. the code before a change)
        sys.path.insert(0, str(code))
    import engramdb

    qv, qt = queries(words())
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0, t0 = time.process_time(), time.perf_counter()
    mem = engramdb.open(path)
    open_s = time.perf_counter() - t0
    open_cpu_s = time.process_time() - c0  # every thread of this process, DuckDB's included
    r1 = resource.getrusage(resource.RUSAGE_SELF)

    def ids(hits: list) -> list[str]:
        return [h.id for h in hits]

    t0 = time.perf_counter()
    early_vec = ids(mem.recall(vector=qv[0], top_k=K, associative=False))
    first_vec_ms = (time.perf_counter() - t0) * 1e3
    # A store of caller-supplied vectors (--store) has no encoder: no text recalls then.
    texts = mem.manifest.encoder_spec.get("kind") != "vectors"
    t0 = time.perf_counter()
    early_text = ids(mem.recall(qt[0], top_k=K, associative=False)) if texts else []
    first_text_ms = (time.perf_counter() - t0) * 1e3 if texts else float("nan")
    t0 = time.perf_counter()
    if hasattr(mem, "wait_ready"):
        mem.wait_ready()
    ready_s = (open_s + first_vec_ms / 1e3 + (first_text_ms / 1e3 if texts else 0.0)
               + time.perf_counter() - t0)
    vec_t, text_t = [], []
    for i in range(1, QUERIES + 1):
        t0 = time.perf_counter()
        mem.recall(vector=qv[i], top_k=K, associative=False)
        vec_t.append((time.perf_counter() - t0) * 1e3)
        if texts:
            t0 = time.perf_counter()
            mem.recall(qt[i], top_k=K, associative=False)
            text_t.append((time.perf_counter() - t0) * 1e3)
    same = (ids(mem.recall(vector=qv[0], top_k=K, associative=False)) == early_vec
            and (not texts or ids(mem.recall(qt[0], top_k=K, associative=False)) == early_text))
    t0 = time.perf_counter()
    mem.close()
    close_s = time.perf_counter() - t0
    rss = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) / 1024
    return {"open_s": open_s, "open_cpu_s": open_cpu_s,
            "open_user_s": r1.ru_utime - r0.ru_utime, "open_sys_s": r1.ru_stime - r0.ru_stime,
            "open_faults": float(r1.ru_minflt - r0.ru_minflt), "first_vec_ms": first_vec_ms,
            "first_text_ms": first_text_ms,
            "ready_s": ready_s, "vec_p50_ms": float(np.median(vec_t)),
            "text_p50_ms": float(np.median(text_t)) if texts else float("nan"),
            "close_s": close_s,
            "same_after_load": same, "recovered": mem.recovered, "peak_rss_mb": rss}


def evict(path: Path) -> None:
    """Ask the kernel to drop this store's files from the page cache (clean pages only)."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/engramdb-bench-open"))
    parser.add_argument("--build-only", action="store_true", help="build the stores and stop")
    parser.add_argument("--rebuild", action="store_true", help="build the stores again")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--code", type=Path, default=None,
                        help="import engramdb from this directory instead (e.g. a copy of the "
                             "code before a change); it must be able to read the stores")
    parser.add_argument("--cold", action="store_true",
                        help="drop the store's files from the page cache before each open "
                             "(posix_fadvise DONTNEED on each file: no other file is touched)")
    parser.add_argument("--store", type=Path, default=None,
                        help="time opens of this existing 384-d store instead of building one")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.code)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    rows = []
    for n in args.sizes if args.store is None else [0]:
        path = args.out / f"n{n}.engram" if args.store is None else args.store
        if args.store is None and (args.rebuild or not (args.out / f"n{n}.json").exists()):
            print(f"building {n:,} engrams ...", file=sys.stderr, flush=True)
            print(json.dumps(build(path, n, args.out)), file=sys.stderr, flush=True)
        if args.build_only:
            continue
        runs = []
        env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent))
        for _ in range(args.repeats):
            if args.cold:
                evict(path)
            cmd = [sys.executable, str(HERE), "--worker", str(path)]
            if args.code is not None:
                cmd += ["--code", str(args.code)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stderr[-3000:], file=sys.stderr)
                sys.exit(1)
            runs.append(json.loads(line[0][7:]))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]
               if isinstance(runs[0][k], float)}
        med["same"] = all(r["same_after_load"] for r in runs)
        med["each"] = " / ".join(f"{r['open_s']:.2f}" for r in runs)
        rows.append((n, med))
    if not rows:
        return
    lines = [
        f"Machine: {describe()}. Date: {time.strftime('%Y-%m-%d')}. Command: `{command}`",
        "",
        "| n | open s | open CPU s | user s | system s | page faults | first vec ms "
        "| first text ms | ready s | vec p50 ms | text p50 ms | close s | same after load "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, m in rows:
        lines.append(
            f"| {n or args.store} | {m['open_s']:.2f} | {m['open_cpu_s']:.2f} "
            f"| {m['open_user_s']:.2f} | {m['open_sys_s']:.2f} | {m['open_faults']:,.0f} "
            f"| {m['first_vec_ms']:.1f} "
            f"| {m['first_text_ms']:.1f} "
            f"| {m['ready_s']:.2f} | {m['vec_p50_ms']:.3f} | {m['text_p50_ms']:.3f} "
            f"| {m['close_s']:.2f} | {'yes' if m['same'] else 'NO'} | {m['peak_rss_mb']:,.0f} |")
    lines += ["", "open s of each repeat: " + "; ".join(
        f"{n or args.store}: {m['each']}" for n, m in rows)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
