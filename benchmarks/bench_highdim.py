"""Activation-size benchmark: engramdb at 4,096-d (float16 segments) against a full-dim graph.

Run by hand (not in CI). LLM activations are 576-d to 4,096-d; a full-dimension hnswlib graph
of 250k such vectors needs about 4 GB of RAM and builds at ~100-300 vectors/s on 2 cores,
which is why engramdb indexes a PCA prefix and re-ranks exactly from the memmap
(docs/recall.md, "Dense search").

Vectors are drawn chunk by chunk from the clustered generator of ``bench_index.py`` into a
float16 file (written once per size and seed under ``--workdir``); workers map it and read
chunks, so no process holds the whole set and the engramdb worker's memory is its own. Ingest
time counts only the ``ingest_many`` calls. Each system runs in
its own subprocess (engramdb is handed float16 rows of the mapped file, the others float32
copies); a sampler thread reads ``/proc/self/status`` every 50 ms for the peak
anonymous memory (``RssAnon``: the process's own allocations; the peak ``VmHWM`` also counts
file pages of the memmapped segments, which the kernel can drop, and is reported beside it).

Reports, in one run: engramdb durable ingest rows/s, rows/s until indexed and saved, reopen
seconds, recall p50/p99 and recall@10 against an exact float32 scan of the same vectors, disk
bytes per engram, peak RSS; and a full-dimension hnswlib graph (M=16, ef_construction=200)
built on ``--hnsw-sample`` of the vectors: its build rate and its memory, which grows linearly
with the count, scaled to ``--n`` (the full build would take hours here)::

    python benchmarks/bench_highdim.py --n 250000 --dim 4096 --markdown /tmp/highdim.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))
from bench_index import clustered  # noqa: E402
from machine_info import describe  # noqa: E402

K = 10
QUERY_SEED = 7


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakMemory:
    """Samples RssAnon every 50 ms on a daemon thread; ``peak_mb`` is the largest seen."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))
            self._stop.wait(0.05)

    @property
    def peak_mb(self) -> float:
        """Largest RssAnon sampled so far, in MiB."""
        self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))
        return self.peak_kb / 1024


def data_path(args: argparse.Namespace) -> Path:
    """Where the driver writes the whole set once, as float16 (what the store keeps)."""
    return Path(args.workdir) / f"data-{args.n}x{args.dim}-{args.seed}.f16"


def write_data(args: argparse.Namespace) -> None:
    """Draw the set chunk by chunk into a float16 file, so workers only map it."""
    path = data_path(args)
    if path.exists():
        return
    _, draw = clustered(0, args.dim, seed=args.seed)
    out = np.lib.format.open_memmap(str(path) + ".tmp.npy", mode="w+", dtype=np.float16,
                                    shape=(args.n, args.dim))
    for i, start in enumerate(range(0, args.n, args.chunk)):
        m = min(args.chunk, args.n - start)
        out[start:start + m] = draw(m, 1_000 + i)
    out.flush()
    del out
    Path(str(path) + ".tmp.npy").rename(path)


def chunks(args: argparse.Namespace, mapped: bool = False):
    """Yield ``(start, vectors)`` of the set, ``--chunk`` rows at a time, read from the mapped
    file: float32 copies, or with ``mapped`` the float16 rows of the mapping themselves (file
    pages, not the worker's own memory)."""
    x = np.load(data_path(args), mmap_mode="r")
    for start in range(0, args.n, args.chunk):
        rows = x[start:start + args.chunk]
        yield start, rows if mapped else np.asarray(rows, np.float32)


def queries_path(args: argparse.Namespace) -> Path:
    """Where the driver writes the query vectors once (float32 .npy)."""
    return Path(args.workdir) / f"queries-{args.queries}x{args.dim}-{args.seed}.npy"


def write_queries(args: argparse.Namespace) -> None:
    """Draw the queries (fresh draws from the same distribution) once, in the driver: the
    generator's set-up (a dim x dim rotation, ~600 MB of temporaries at 4,096-d) must not
    count in a worker's memory."""
    if not queries_path(args).exists():
        _, draw = clustered(0, args.dim, seed=args.seed)
        np.save(queries_path(args), draw(args.queries, QUERY_SEED))


def queries(args: argparse.Namespace) -> np.ndarray:
    """The query vectors written by :func:`write_queries`."""
    return np.load(queries_path(args))


def worker_truth(args: argparse.Namespace) -> dict:
    """Exact float32 top-10 of every query, merged chunk by chunk."""
    qs = queries(args)
    best_s = np.full((len(qs), K), -np.inf, np.float32)
    best_i = np.zeros((len(qs), K), np.int64)
    for start, x in chunks(args):
        s = qs @ x.T
        i = np.broadcast_to(np.arange(start, start + len(x)), s.shape)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, i], axis=1)
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :K]
        best_s = np.take_along_axis(all_s, top, 1)
        best_i = np.take_along_axis(all_i, top, 1)
    return {"truth": best_i.tolist()}


def worker_engramdb(args: argparse.Namespace) -> dict:
    """Ingest, close (drain + save), reopen, query: one store, float16 segments."""
    import engramdb
    from engramdb.content import content_id

    mem_peak = PeakMemory()
    path = Path(args.workdir) / "engramdb.engram"
    shutil.rmtree(path, ignore_errors=True)
    settings = engramdb.Settings(vector_dtype="float16")
    ingest_s = 0.0  # only the ingest calls: reading the data is not the store's work
    phases = {"baseline": _status_kb("RssAnon") / 1024}
    with engramdb.open(path, dim=args.dim, settings=settings) as mem:
        # The vectors arrive as float16 rows of the mapped data file, what a float16 store
        # keeps: the caller's input then costs no anonymous memory, so the peak below is the
        # store's own (the full-dim graph's figure, too, excludes its input).
        for start, x in chunks(args, mapped=True):
            texts = [f"engram {i}" for i in range(start, start + len(x))]
            t0 = time.perf_counter()
            mem.ingest_many(texts, vectors=x)
            ingest_s += time.perf_counter() - t0
        del x
        config = mem.index.config.to_dict()
        phases["ingest peak"] = mem_peak.peak_mb
        t0 = time.perf_counter()
    indexed_s = ingest_s + time.perf_counter() - t0  # close waits for the graph and saves it
    phases["close peak"] = mem_peak.peak_mb
    del mem
    t0 = time.perf_counter()
    mem = engramdb.open(path)
    open_s = time.perf_counter() - t0
    phases["after reopen"] = _status_kb("RssAnon") / 1024
    ids = {content_id(mem.fingerprint, f"engram {i}"): i for i in range(args.n)}
    qs = queries(args)
    results, times = [], []
    for q in qs:
        t = time.perf_counter()
        hits = mem.recall(vector=q, top_k=K, associative=False)
        times.append((time.perf_counter() - t) * 1000)
        results.append([ids[h.id] for h in hits])
    phases["after queries"] = _status_kb("RssAnon") / 1024
    mem.close()
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {"ingest_s": ingest_s, "indexed_s": indexed_s, "open_s": open_s, "times": times,
            "results": results, "bytes": size, "config": config, "phases": phases,
            "peak_anon_mb": mem_peak.peak_mb, "peak_rss_mb": _status_kb("VmHWM") / 1024}


def worker_hnswlib(args: argparse.Namespace) -> dict:
    """A full-dimension graph over the first ``--hnsw-sample`` vectors: build rate, memory."""
    import hnswlib

    n = min(args.hnsw_sample, args.n)
    xs = []
    for _, x in chunks(args):
        xs.append(x)
        if sum(len(a) for a in xs) >= n:
            break
    x = np.concatenate(xs)[:n]
    base_kb = _status_kb("RssAnon")
    t0 = time.perf_counter()
    g = hnswlib.Index(space="ip", dim=args.dim)
    g.init_index(max_elements=n, M=16, ef_construction=200)
    g.add_items(x, np.arange(n))
    build_s = time.perf_counter() - t0
    graph_mb = (_status_kb("RssAnon") - base_kb) / 1024
    f = Path(args.workdir) / "full.hnsw"
    g.save_index(str(f))
    file_mb = f.stat().st_size / 2**20
    f.unlink()
    return {"n": n, "build_per_s": n / build_s, "graph_mb": graph_mb, "file_mb": file_mb}


WORKERS = {"truth": worker_truth, "engramdb": worker_engramdb, "hnswlib": worker_hnswlib}


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The options a worker needs (the driver's own, without its output options)."""
    return ["--n", str(args.n), "--dim", str(args.dim), "--chunk", str(args.chunk),
            "--queries", str(args.queries), "--seed", str(args.seed),
            "--hnsw-sample", str(args.hnsw_sample), "--workdir", str(args.workdir)]


def main() -> None:
    """Run every worker in its own subprocess and print (and optionally save) the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=250_000)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hnsw-sample", type=int, default=25_000)
    ap.add_argument("--workdir", default="/tmp/engramdb-bench-highdim")
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None,
                    help="also write the rows as JSON (bench_recall.py --highdim reads it)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(WORKERS[args.worker](args)), flush=True)
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_data(args)
    write_queries(args)
    print(f"data: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    out = {}
    for name in ("truth", "engramdb", "hnswlib"):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, *_worker_argv(args), "--worker", name],
                              capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{name} worker failed:\n{proc.stderr[-3000:]}")
        out[name] = json.loads(line[0][7:])
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    e, h, truth = out["engramdb"], out["hnswlib"], out["truth"]["truth"]
    recall = np.mean([len(set(g) & set(t)) / K for g, t in zip(e["results"], truth, strict=True)])
    t = np.array(e["times"])
    scale = args.n / h["n"]
    full_mb = h["graph_mb"] * scale
    lines = [
        f"Machine: {describe()}. Date: {time.strftime('%Y-%m-%d')}. "
        f"Command: `python benchmarks/bench_highdim.py {' '.join(sys.argv[1:])}`",
        "",
        "| system | n | dim | ingest rows/s | indexed rows/s | recall p50 ms | p99 ms "
        "| recall@10 | open s | disk B/engram | peak anon MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| engramdb {e['config']['levels']} | {args.n:,} | {args.dim} | "
        f"{args.n / e['ingest_s']:,.0f} | {args.n / e['indexed_s']:,.0f} | "
        f"{np.median(t):.2f} | {np.percentile(t, 99):.2f} | {recall:.3f} | {e['open_s']:.2f} | "
        f"{e['bytes'] / args.n:,.0f} | {e['peak_anon_mb']:,.0f} | {e['peak_rss_mb']:,.0f} |",
        f"| hnswlib full-dim, {h['n']:,} built, scaled x{scale:g} | {args.n:,} | {args.dim} | "
        f"{h['build_per_s']:,.0f} | {h['build_per_s']:,.0f} | - | - | - | - | "
        f"{h['file_mb'] * 2**20 / h['n']:,.0f} | {full_mb:,.0f} | - |",
        "",
        f"engramdb peak anonymous memory / full-dim graph memory: "
        f"{e['peak_anon_mb'] / full_mb:.2f}",
        "",
        "engramdb anonymous memory by phase (MB; peaks are running maxima): " + ", ".join(
            f"{k} {v:,.0f}" for k, v in e["phases"].items()),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({
            "engramdb": {
                "system": f"engramdb {e['config']['levels']}", "n": args.n, "dim": args.dim,
                "ingest_per_s": args.n / e["ingest_s"], "indexed_per_s": args.n / e["indexed_s"],
                "p50_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)),
                "recall10": float(recall), "open_s": e["open_s"],
                "bytes_per": e["bytes"] / args.n, "rss_mb": e["peak_rss_mb"],
                "anon_mb": e["peak_anon_mb"], "phases": e["phases"]},
            "hnswlib": {
                "system": f"hnswlib full-dim, {h['n']:,} built, scaled x{scale:g}", "n": args.n,
                "dim": args.dim, "ingest_per_s": h["build_per_s"],
                "indexed_per_s": h["build_per_s"], "bytes_per": h["file_mb"] * 2**20 / h["n"],
                "anon_mb": full_mb},
            "anon_ratio": e["peak_anon_mb"] / full_mb,
        }))


if __name__ == "__main__":
    main()
