"""Measure engramdb's vector index: build rate, search latency and recall@10 per configuration.

Run by hand (not in CI); the numbers ground ``IndexConfig.choose``. Example::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_index.py --sets 384x100000 2048x50000
    PYTHONPATH=. .venv/bin/python benchmarks/bench_index.py --sets 384x1000000 --configs full

Data: clustered unit vectors with a decaying spectrum (per-component standard deviation
``(i+1)**-decay`` before a random rotation), which is what sentence embeddings and LLM
activations look like: a prefix of the PCA basis carries most of the variance. With
``--decay 0`` the clusters are isotropic and any prefix is a random projection.
Queries are fresh points from the same distribution; ground truth is an exact numpy scan.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import numpy as np

from engramdb.derived.index import IndexConfig, VectorIndex
from engramdb.derived.rotation import Rotation


def clustered(n: int, dim: int, *, clusters: int = 200, noise: float = 1.5, decay: float = 0.5,
              seed: int = 0) -> tuple[np.ndarray, Callable[[int, int], np.ndarray]]:
    """``n`` unit vectors, plus a function drawing more from the same distribution."""
    rng = np.random.default_rng(seed)
    scales = (1.0 + np.arange(dim)) ** -decay
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * scales
    rot = Rotation.random(dim, seed + 1).matrix

    def draw(m: int, s: int) -> np.ndarray:
        r = np.random.default_rng(s)
        out = np.empty((m, dim), dtype=np.float32)
        for a in range(0, m, 50_000):
            b = min(m, a + 50_000)
            pts = centres[r.integers(clusters, size=b - a)]
            pts = pts + noise * r.standard_normal((b - a, dim)).astype(np.float32) * scales
            pts = pts @ rot
            out[a:b] = pts / np.linalg.norm(pts, axis=1, keepdims=True)
        return out

    return draw(n, seed + 2), draw


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k labels for each query (rows of ``q``)."""
    out = np.empty((len(q), k), dtype=np.int64)
    for a in range(0, len(q), 100):
        s = q[a:a + 100] @ x.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, axis=1)
        out[a:a + 100] = np.take_along_axis(part, np.argsort(-ps, axis=1), axis=1)
    return out


def timed_search(idx: VectorIndex, q: np.ndarray, k: int, fetch: Callable, truth: np.ndarray,
                 allowed: np.ndarray | None = None) -> dict[str, float]:
    lat = []
    hits = 0
    for i, qi in enumerate(q):
        t = time.perf_counter()
        labels, _, _ = idx.search(qi, k, fetch=fetch, allowed=allowed)
        lat.append(time.perf_counter() - t)
        hits += len(set(labels.tolist()) & set(truth[i].tolist()))
    ms = np.array(lat) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "recall": hits / truth.size}


def configs_for(dim: int, which: list[str]) -> list[tuple[str, IndexConfig, list[int]]]:
    """(name, config, ef values to try) for each candidate layout at this dimension."""
    small, mid = (96, 192) if dim <= 1024 else (256, 1024)
    tiny = 64 if dim <= 1024 else 128
    out: list[tuple[str, IndexConfig, list[int]]] = []
    if "full" in which:
        out.append((f"[{dim}]", IndexConfig(levels=[dim], exact_threshold=0), [32, 64, 128]))
    if "prefix" in which:
        for m in (5, 10, 20):
            out.append((f"[{small}]+exact m={m}",
                        IndexConfig(levels=[small], candidate_multiplier=m, exact_threshold=0),
                        [64]))
        out.append((f"[{tiny}]+exact m=20",
                    IndexConfig(levels=[tiny], candidate_multiplier=20, exact_threshold=0), [64]))
    if "two" in which:
        out.append((f"[{small},{mid}]+exact m=20",
                    IndexConfig(levels=[small, mid], candidate_multiplier=20, exact_threshold=0),
                    [64]))
    return out


def bench_set(dim: int, n: int, args: argparse.Namespace) -> list[dict]:
    t = time.perf_counter()
    x, draw = clustered(n, dim, noise=args.noise, decay=args.decay, seed=args.seed)
    q = draw(args.queries, args.seed + 99)
    truth = exact_topk(x, q, args.k)
    print(f"# {dim}-d x {n}: data + ground truth {time.perf_counter() - t:.1f}s", flush=True)

    def fetch(ls: np.ndarray) -> np.ndarray:
        return x[ls]

    labels = np.arange(n, dtype=np.int64)
    rows = []
    # Exact scan through fetch (what the index does below exact_threshold).
    for m in sorted({1_000, 2_000, 5_000, 10_000, 20_000, n} & set(range(n + 1))):
        idx = VectorIndex(dim, IndexConfig(levels=[dim], exact_threshold=m))
        sub = labels[:m]
        lat = []
        for qi in q[:100]:
            t = time.perf_counter()
            idx._exact(qi, [qi], sub, args.k, fetch)  # the scan itself, no graph
            lat.append(time.perf_counter() - t)
        ms = np.array(lat) * 1e3
        rows.append({"set": f"{dim}x{n}", "config": f"exact scan of {m}",
                     "p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99))})
        print(json.dumps(rows[-1]), flush=True)
    for name, cfg, efs in configs_for(dim, args.configs):
        cfg.ef_construction = args.ef_construction
        t = time.perf_counter()
        idx = VectorIndex.build(labels, x, cfg)
        build_s = time.perf_counter() - t
        for ef in efs:
            idx.set_ef_search(ef)
            r = timed_search(idx, q, args.k, fetch, truth)
            row = {"set": f"{dim}x{n}", "config": name, "ef": ef,
                   "build_per_s": n / build_s, **r}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.filters and name == f"[{dim}]" or (args.filters and dim > 1024
                                                     and name.endswith("m=10")):
            rows += bench_filters(idx, x, q, args, f"{dim}x{n}", name)
        del idx
    return rows


def bench_filters(idx: VectorIndex, x: np.ndarray, q: np.ndarray, args: argparse.Namespace,
                  set_name: str, name: str) -> list[dict]:
    """Filtered search: exact scan of the allowed labels vs a filtered graph walk."""
    rows = []
    n = len(x)
    rng = np.random.default_rng(5)
    for frac in (0.001, 0.005, 0.01, 0.02, 0.05, 0.2, 0.5):
        allowed = np.sort(rng.choice(n, size=max(1, int(frac * n)), replace=False))
        truth = allowed[exact_topk(x[allowed], q[:200], args.k)]
        for path, fx in (("exact-allowed", float("inf")), ("graph-filter", 0.0)):
            idx.config.filter_crossover = fx
            saved = idx.config.exact_threshold
            idx.config.exact_threshold = n if fx else 0
            r = timed_search(idx, q[:200], args.k, lambda ls: x[ls], truth, allowed)
            idx.config.exact_threshold = saved
            rows.append({"set": set_name, "config": f"{name} filter {frac:.1%} {path}", **r})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=["384x100000", "2048x50000"],
                   help="DIMxN data sets to measure")
    p.add_argument("--configs", nargs="+", default=["full", "prefix", "two"],
                   choices=["full", "prefix", "two"])
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--decay", type=float, default=0.5, help="spectrum decay exponent")
    p.add_argument("--noise", type=float, default=1.5, help="within-cluster noise scale")
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--filters", action="store_true", help="also measure filtered search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write all rows to this file")
    args = p.parse_args(argv)
    rows = []
    for s in args.sets:
        dim, n = (int(v) for v in s.lower().split("x"))
        rows += bench_set(dim, n, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print("\n| set | config | ef | build/s | p50 ms | p99 ms | recall@10 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['config']} | {r.get('ef', '')} | "
              f"{r.get('build_per_s', 0):,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
              f"{r.get('recall', float('nan')):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
