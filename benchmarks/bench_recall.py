"""Recall benchmark: engramdb side by side with raw hnswlib, exact numpy and chromadb.

Run by hand (not in CI). Every system runs in its own subprocess on the same clustered unit
vectors, so each one's peak RSS is its own. For each size it reports: ingest rows/s (durable
and acknowledged, encode excluded; engramdb indexes in the background and searches its backlog
exactly, so every acknowledged row is already searchable), indexed rows/s (until every row is
in the vector index and it is saved: for engramdb the close, for the others the same as
ingest), recall p50/p99 for top-10 (for engramdb: the whole ``recall(vector=...)``
call, including the text and metadata fetch), recall@10 against exact search, time to reopen,
disk bytes per engram and peak RSS.

    python benchmarks/bench_recall.py --sizes 10000 100000 --dim 384 \
        --chroma-python /tmp/chroma-venv/bin/python --markdown docs/bench_recall.md

``--highdim N DIM`` adds the activation-size rows to the same run and table: engramdb with
float16 segments at N x DIM and a full-dimension hnswlib graph built on a sample and scaled,
both from ``benchmarks/bench_highdim.py`` (its docstring says how). chromadb and exact numpy
are not run there: a full-dimension chromadb collection builds the same full-dimension graph
that takes hours here, and the exact scan is the ground truth, computed in chunks.

chromadb is not a dependency of engramdb: install it in a separate virtualenv
(``python -m venv /tmp/chroma-venv && /tmp/chroma-venv/bin/pip install chromadb numpy``) and
pass its interpreter with ``--chroma-python``; without it the chromadb column is skipped.
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
from machine_info import describe  # noqa: E402 - benchmarks/ is on sys.path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))
QUERIES = 200
K = 10


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered unit vectors with a decaying spectrum, like real embeddings (deterministic).

    The same distribution as benchmarks/bench_index.py (200 clusters, noise 1.5, component
    scales i^-0.5, randomly rotated), so the index figures and these agree.
    """
    from bench_index import clustered as index_clustered

    _, draw = index_clustered(0, dim, seed=0)
    return draw(n, seed)


def dataset(out: Path, n: int, dim: int, dtype: str) -> tuple[Path, Path, Path]:
    """Write data, queries and exact top-10 ground truth as .npy files (cached)."""
    tag = f"{n}x{dim}"
    data, queries, truth = (out / f"{tag}-data.npy", out / f"{tag}-queries.npy",
                            out / f"{tag}-truth.npy")
    if not truth.exists():
        x = clustered(n, dim, seed=1)
        q = clustered(QUERIES, dim, seed=2)  # fresh draws from the same distribution
        np.save(data, x)
        np.save(queries, q)
        stored = x.astype(dtype).astype(np.float32)  # what a float16 store really searches
        best = np.empty((QUERIES, K), np.int64)
        for i in range(0, QUERIES, 20):
            s = q[i:i + 20] @ stored.T
            best[i:i + 20] = np.argsort(-s, axis=1)[:, :K]
        np.save(truth, best)
    return data, queries, truth


# -- workers (run in subprocesses) ------------------------------------------------------------


def _timings(fn, queries: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    for q in queries[:10]:  # warm-up
        fn(q)
    results, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        results.append(fn(q))
        times.append((time.perf_counter() - t0) * 1000)
    return results, times


def worker_engramdb(args: argparse.Namespace, x: np.ndarray, qs: np.ndarray) -> dict:
    import engramdb

    path = Path(args.workdir) / "engramdb.engram"
    shutil.rmtree(path, ignore_errors=True)
    settings = engramdb.Settings(vector_dtype=args.dtype, batch_rows=10_000)
    texts = [f"engram {i}" for i in range(len(x))]
    t0 = time.perf_counter()
    with engramdb.open(path, dim=x.shape[1], settings=settings) as mem:
        for start in range(0, len(x), 50_000):
            mem.ingest_many(texts[start:start + 50_000], vectors=x[start:start + 50_000])
        ingest_s = time.perf_counter() - t0  # every row durable and acknowledged (searchable)
    indexed_s = time.perf_counter() - t0  # close drains the background indexer and saves
    t0 = time.perf_counter()
    mem = engramdb.open(path)
    open_s = time.perf_counter() - t0
    from engramdb.content import content_id

    ids = {content_id(mem.fingerprint, t): i for i, t in enumerate(texts)}
    results, times = _timings(
        lambda q: [ids[h.id] for h in mem.recall(vector=q, top_k=K, associative=False)], qs)
    mem.close()
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {"ingest_s": ingest_s, "indexed_s": indexed_s, "open_s": open_s,
            "results": results, "times": times, "bytes": size}


def worker_hnswlib(args: argparse.Namespace, x: np.ndarray, qs: np.ndarray) -> dict:
    import hnswlib

    path = Path(args.workdir) / "raw.hnsw"
    t0 = time.perf_counter()
    idx = hnswlib.Index(space="ip", dim=x.shape[1])
    idx.init_index(max_elements=len(x), M=16, ef_construction=200)
    idx.add_items(x, np.arange(len(x)), num_threads=os.cpu_count())
    idx.save_index(str(path))
    ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx = hnswlib.Index(space="ip", dim=x.shape[1])
    idx.load_index(str(path))
    open_s = time.perf_counter() - t0
    idx.set_ef(64)
    results, times = _timings(lambda q: idx.knn_query(q, k=K)[0][0].tolist(), qs)
    return {"ingest_s": ingest_s, "open_s": open_s, "results": results, "times": times,
            "bytes": path.stat().st_size}


def worker_numpy(args: argparse.Namespace, x: np.ndarray, qs: np.ndarray) -> dict:
    path = Path(args.workdir) / "raw.npy"
    t0 = time.perf_counter()
    np.save(path, x.astype(args.dtype))
    ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = np.load(path, mmap_mode="r")
    open_s = time.perf_counter() - t0

    def search(q: np.ndarray) -> list[int]:
        s = np.asarray(m, np.float32) @ q if m.dtype != np.float32 else m @ q
        top = np.argpartition(-s, K)[:K]
        return top[np.argsort(-s[top])].tolist()

    results, times = _timings(search, qs[:50])
    return {"ingest_s": ingest_s, "open_s": open_s, "results": results, "times": times,
            "bytes": path.stat().st_size}


def worker_chromadb(args: argparse.Namespace, x: np.ndarray, qs: np.ndarray) -> dict:
    import chromadb

    path = Path(args.workdir) / "chroma"
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    client = chromadb.PersistentClient(path=str(path))
    col = client.create_collection("bench", metadata={"hnsw:space": "ip"})
    step = 5000
    for start in range(0, len(x), step):
        stop = min(len(x), start + step)
        col.add(ids=[str(i) for i in range(start, stop)], embeddings=x[start:stop],
                documents=[f"engram {i}" for i in range(start, stop)])
    ingest_s = time.perf_counter() - t0
    del col, client
    t0 = time.perf_counter()
    client = chromadb.PersistentClient(path=str(path))
    col = client.get_collection("bench")
    open_s = time.perf_counter() - t0
    results, times = _timings(
        lambda q: [int(i) for i in col.query(query_embeddings=[q], n_results=K,
                                              include=["documents", "distances"])["ids"][0]],
        qs)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {"ingest_s": ingest_s, "open_s": open_s, "results": results, "times": times,
            "bytes": size}


WORKERS = {"engramdb": worker_engramdb, "hnswlib": worker_hnswlib, "numpy": worker_numpy,
           "chromadb": worker_chromadb}


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: the latter keeps the peak of the
    forked driver across exec, which would charge every worker for the driver's arrays."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(args: argparse.Namespace) -> None:
    x = np.load(args.data)
    qs = np.load(args.queries)
    out = WORKERS[args.worker](args, x, qs)
    out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out))


# -- driver ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--systems", nargs="+", default=list(WORKERS))
    parser.add_argument("--chroma-python", default=None,
                        help="interpreter of a virtualenv with chromadb installed")
    parser.add_argument("--out", type=Path, default=Path("/tmp/engramdb-bench-recall"))
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--highdim", type=int, nargs=2, metavar=("N", "DIM"), default=None,
                        help="also run bench_highdim.py at N x DIM (float16) into this table")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--queries", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    for n in args.sizes:
        data, queries, truth_path = dataset(args.out, n, args.dim, args.dtype)
        truth = np.load(truth_path)
        for system in args.systems:
            python = sys.executable
            if system == "chromadb":
                if not args.chroma_python:
                    print("skipping chromadb: pass --chroma-python", file=sys.stderr)
                    continue
                python = args.chroma_python
            work = args.out / f"{system}-{n}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent))
            print(f"{system} at {n} x {args.dim} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(
                [python, str(HERE), "--worker", system, "--data", str(data), "--queries",
                 str(queries), "--workdir", str(work), "--dtype", args.dtype],
                capture_output=True, text=True, env=env)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stderr[-3000:], file=sys.stderr)
                continue
            res = json.loads(line[0][7:])
            got = res["results"]
            recall = np.mean([len(set(g) & set(truth[i].tolist())) / K for i, g in enumerate(got)])
            t = np.array(res["times"])
            rows.append({
                "system": system, "n": n, "dim": args.dim,
                "ingest_per_s": n / res["ingest_s"],
                "indexed_per_s": n / res.get("indexed_s", res["ingest_s"]),
                "p50_ms": float(np.median(t)),
                "p99_ms": float(np.percentile(t, 99)), "recall10": float(recall),
                "open_s": res["open_s"], "bytes_per": res["bytes"] / n,
                "rss_mb": res["peak_rss_mb"],
            })
            shutil.rmtree(work, ignore_errors=True)
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    notes = []
    if args.highdim:
        n, dim = args.highdim
        print(f"bench_highdim at {n} x {dim} ...", file=sys.stderr, flush=True)
        out = args.out / "highdim.json"
        out.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, str(HERE.parent / "bench_highdim.py"), "--n",
                               str(n), "--dim", str(dim), "--json", str(out)],
                              capture_output=True, text=True)
        if proc.returncode or not out.exists():
            print(proc.stderr[-3000:], file=sys.stderr)
        else:
            high = json.loads(out.read_text())
            rows.append(high["engramdb"])
            rows.append({"p50_ms": None, "p99_ms": None, "recall10": None, "open_s": None,
                         "rss_mb": None, **high["hnswlib"]})
            notes.append(
                f"{n:,} x {dim}: engramdb stores float16; peak anonymous memory "
                f"{high['engramdb']['anon_mb']:,.0f} MB against {high['hnswlib']['anon_mb']:,.0f}"
                f" MB for the full-dim graph (ratio {high['anon_ratio']:.2f}); by phase: "
                + ", ".join(f"{k} {v:,.0f}" for k, v in high["engramdb"]["phases"].items()))
    lines = [
        f"Machine: {describe()}. Date: {time.strftime('%Y-%m-%d')}. Command: `{command}`",
        "",
        "| system | n | dim | ingest rows/s | indexed rows/s | recall p50 ms | p99 ms "
        "| recall@10 | open s | disk B/engram | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    def cell(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        lines.append(
            f"| {r['system']} | {r['n']:,} | {r['dim']} | {r['ingest_per_s']:,.0f} | "
            f"{r['indexed_per_s']:,.0f} | {cell(r['p50_ms'], '.3f')} | "
            f"{cell(r['p99_ms'], '.3f')} | {cell(r['recall10'], '.3f')} | "
            f"{cell(r['open_s'], '.2f')} | {r['bytes_per']:,.0f} | {cell(r['rss_mb'], ',.0f')} |")
    lines += [""] + notes if notes else []
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
