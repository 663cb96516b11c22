"""Show that ``tick()`` and ``integrate()`` cost the same at 10k and at 1M engrams.

Run by hand (not in CI). Example::

    .venv/bin/python benchmarks/bench_lifespan.py --sizes 10000,1000000 \\
        --markdown /tmp/bench_lifespan.md

For each size N a store is built (or reused from ``--out``) from N caller-supplied random
384-d unit vectors through ``ingest_many(texts, vectors=...)``, with a :class:`FunctionEncoder`
whose function maps a text to a deterministic vector (seeded by a hash of the text), so that
``integrate(text)`` and ``recall(text)`` can encode. The engrams are ingested pinned, so they
stay alive however many ticks this and later runs spend (the default short-term lifespan is 64
ticks: without pinning a reused store would be empty after one run).

Then, in one process, interleaving the sizes round by round (the machine is noisy; drift hits
every size alike), it measures:

- ``tick()``: median and p99 latency;
- ``integrate(text, top_k=5)`` with distinct texts: median and p99;
- ``recall(text, top_k=5)`` for context.

``recall`` contains a search whose cost may grow with N (an exact scan over every vector when
the store has no vector index; BM25 over the postings of the query's terms when it scores text
too), and ``integrate`` recalls for its turn. To separate it, the store's search methods are
wrapped with timers during the run (``_dense_search``, or ``_exact_search`` in a store without
it, and ``LexicalIndex.match``, or ``_lexical_scores`` in older code): "integrate -
search" is, per call, the integrate latency minus the time spent inside them. Likewise the
O(N) visibility mask (``HotState.visible``) is timed on its own. The report gives each
statistic per size and the ratio largest/smallest.

The 1M build takes minutes: the build's rate is measured on the first ``--probe-rows`` rows
and, if the projected build time exceeds ``--max-build-min``, the target is cut to what fits in
``--fit-build-min`` and the report says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from machine_info import describe  # noqa: E402 - benchmarks/ is on sys.path

import engramdb
from engramdb.encoders import FunctionEncoder
from engramdb.storage.manifest import MANIFEST_NAME
from engramdb.store import Store

DIM = 384
ENCODER_NAME = "bench-v1"


# -- data ---------------------------------------------------------------------------------------


def text_vector(texts: list[str]) -> np.ndarray:
    """Deterministic unit vectors: each text seeds its own generator through a hash of it."""
    out = np.empty((len(texts), DIM), np.float32)
    for i, t in enumerate(texts):
        seed = int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "big")
        v = np.random.default_rng(seed).standard_normal(DIM)
        out[i] = v / np.linalg.norm(v)
    return out


def encoder() -> FunctionEncoder:
    """The benchmark's encoder (its name is part of the store's fingerprint)."""
    return FunctionEncoder(text_vector, DIM, ENCODER_NAME)


def chunk_rows(start: int, stop: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts and random unit vectors for engrams ``start .. stop - 1`` (deterministic)."""
    texts = [f"memory {i:08d}: the user mentioned topic {i % 997} on day {i % 365} of the year"
             for i in range(start, stop)]
    rng = np.random.default_rng([seed, start])
    vecs = rng.standard_normal((stop - start, DIM), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return texts, vecs


# -- building -----------------------------------------------------------------------------------


@dataclass
class Built:
    """A store ready to measure: its size, and how it came to be."""

    requested: int
    n: int
    path: Path
    build_s: float | None  # None: reused
    note: str = ""


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _reusable(path: Path, n: int) -> dict[str, Any] | None:
    meta_file = _meta_path(path)
    if not (path / MANIFEST_NAME).exists() or not meta_file.exists():
        return None
    if hasattr(Store, "_load_index") and not (path / "index").is_dir():
        return None  # built before the store had a vector index: opening would build it
    meta = json.loads(meta_file.read_text())
    return meta if meta.get("complete") and meta.get("requested") == n else None


def index_override(args: argparse.Namespace) -> dict | None:
    """A cheaper graph for the build (--index-m / --index-efc), recorded in the store."""
    over = {}
    if args.index_m:
        over["M"] = args.index_m
    if args.index_efc:
        over["ef_construction"] = args.index_efc
    return over or None


def build_store(out: Path, n: int, args: argparse.Namespace) -> Built:
    """Build (or reuse) the store for ``n`` engrams under ``out``; see the module docstring."""
    path = out / f"n{n}.engram"
    meta = None if args.rebuild else _reusable(path, n)
    if meta is not None:
        print(f"[build] reusing {path} ({meta['n']} engrams, built in {meta['build_s']:.0f} s)",
              flush=True)
        return Built(n, meta["n"], path, None, meta.get("note", ""))
    shutil.rmtree(path, ignore_errors=True)
    _meta_path(path).unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    target, note = n, ""
    t0 = time.perf_counter()
    done = 0
    with engramdb.open(path, encoder=encoder(), index=index_override(args)) as mem:
        while done < target:
            stop = min(target, done + args.chunk)
            texts, vecs = chunk_rows(done, stop, args.seed)
            mem.ingest_many(texts, vectors=vecs, pins=[True] * len(texts))
            done = stop
            elapsed = time.perf_counter() - t0
            rate = done / elapsed
            print(f"[build] n={n}: {done:>9,}/{target:,} rows, {elapsed:6.1f} s, "
                  f"{rate:,.0f} rows/s", flush=True)
            if not note and done >= min(args.probe_rows, target) and done < target:
                projected = target / rate
                if projected > args.max_build_min * 60:
                    fit = int(rate * args.fit_build_min * 60) // args.chunk * args.chunk
                    target = max(done, fit)
                    note = (f"{n:,} requested: projected build {projected / 60:.0f} min at "
                            f"{rate:,.0f} rows/s > {args.max_build_min:g} min; built {target:,}")
                    print(f"[build] {note}", flush=True)
        count = mem.count
    build_s = time.perf_counter() - t0
    _meta_path(path).write_text(json.dumps(
        {"requested": n, "n": count, "build_s": build_s, "complete": True, "note": note}))
    return Built(n, count, path, build_s, note)


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Samples:
    """Latencies in seconds, by operation, for one store."""

    tick: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    integrate: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)  # timed part -> per integrate
    open_s: float = 0.0
    count: int = 0


class Timer:
    """Wraps a callable and accumulates the time spent in it since the last ``take()``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.spent = 0.0

    def __call__(self, *a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            self.spent += time.perf_counter() - t0

    def take(self) -> float:
        """Return the accumulated time and reset it."""
        spent, self.spent = self.spent, 0.0
        return spent


SEARCH_PARTS = ("dense search", "exact scan", "lexical")


def wrap_parts(mem: Store) -> dict[str, Timer]:
    """Wrap the store's search methods and its visibility mask with timers (this run only)."""
    timers: dict[str, Timer] = {}
    searcher = mem._searcher  # the read path (engramdb.recall.searcher.Searcher)
    timers["dense search"] = Timer(searcher.dense_search)  # index or exact scan
    searcher.dense_search = timers["dense search"]  # type: ignore[method-assign]
    timers["lexical"] = Timer(mem.lexical.match)  # BM25: the query's postings and scores
    mem.lexical.match = timers["lexical"]  # type: ignore[method-assign]
    timers["mask"] = Timer(mem.hot.visible)
    mem.hot.visible = timers["mask"]  # type: ignore[method-assign]
    return timers


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(built: list[Built], args: argparse.Namespace) -> dict[int, Samples]:
    """Open every store and measure tick / recall / integrate, interleaving the sizes."""
    samples: dict[int, Samples] = {}
    stores: dict[int, Store] = {}
    timers: dict[int, dict[str, Timer]] = {}
    tag = dt.datetime.now().strftime("%Y%m%d%H%M%S%f")
    try:
        for b in built:
            s = samples[b.n] = Samples()
            t0 = time.perf_counter()
            mem = stores[b.n] = engramdb.open(b.path, encoder=encoder())
            s.open_s = time.perf_counter() - t0
            timers[b.n] = wrap_parts(mem)
            s.parts = {name: [] for name in timers[b.n]}
            for i in range(args.warmup):  # fault the segments into the page cache
                mem.recall(f"warm-up query {i}", top_k=5)
                mem.tick()
            print(f"[measure] opened n={b.n:,} in {s.open_s:.2f} s, clock {mem.clock}",
                  flush=True)
        rounds = args.rounds
        for r in range(rounds):
            order = [b.n for b in built]
            if r % 2:
                order.reverse()  # neither size always goes first
            for n in order:
                mem, s = stores[n], samples[n]
                gc.collect()
                for _ in range(args.ticks // rounds):
                    s.tick.append(_timed(mem.tick))
                for i in range(args.turns // rounds):
                    q = f"bench recall {tag} r{r} #{i}: what did I say about topic {i}?"
                    s.recall.append(_timed(lambda q=q, m=mem: m.recall(q, top_k=5)))
                for t in timers[n].values():
                    t.take()
                for i in range(args.turns // rounds):
                    text = f"bench turn {tag} r{r} #{i}: tell me again about topic {i}"
                    s.integrate.append(_timed(
                        lambda t=text, m=mem: m.integrate(t, top_k=5)))
                    for name, t in timers[n].items():
                        s.parts[name].append(t.take())
            print(f"[measure] round {r + 1}/{rounds} done", flush=True)
        for n, mem in stores.items():
            samples[n].count = mem.count
    finally:
        for mem in stores.values():
            mem.close()
    return samples


def profile_integrate(b: Built, turns: int, html: Path | None) -> str:
    """pyinstrument text profile of ``turns`` integrate calls on store ``b``."""
    from pyinstrument import Profiler

    tag = dt.datetime.now().strftime("%Y%m%d%H%M%S%f")
    with engramdb.open(b.path, encoder=encoder()) as mem:
        mem.recall("warm-up", top_k=5)
        prof = Profiler(interval=0.0005)
        prof.start()
        for i in range(turns):
            mem.integrate(f"profile turn {tag} #{i}: topic {i}", top_k=5)
        for _ in range(turns):
            mem.tick()
        prof.stop()
    if html is not None:
        html.write_text(prof.output_html())
    return prof.output_text(unicode=False, color=False, show_all=False)


# -- reporting ----------------------------------------------------------------------------------


def _ms(xs: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(xs), q)) * 1e3 if xs else float("nan")


def report(built: list[Built], samples: dict[int, Samples], args: argparse.Namespace,
           command: str) -> str:
    """The markdown report: context, one row per statistic, one column per size."""
    ns = [b.n for b in built]
    lo, hi = ns[0], ns[-1]
    def without(n: int, names: tuple[str, ...]) -> list[float]:
        parts = [samples[n].parts[x] for x in names if x in samples[n].parts]
        return [total - sum(p[i] for p in parts)
                for i, total in enumerate(samples[n].integrate)]

    parts = [x for x in samples[lo].parts if all(x in samples[n].parts for n in ns)]
    rows: list[tuple[str, dict[int, float]]] = [
        ("tick median", {n: _ms(samples[n].tick, 0.5) for n in ns}),
        ("tick p99", {n: _ms(samples[n].tick, 0.99) for n in ns}),
        ("integrate median", {n: _ms(samples[n].integrate, 0.5) for n in ns}),
        ("integrate p99", {n: _ms(samples[n].integrate, 0.99) for n in ns}),
        ("integrate - search median", {n: _ms(without(n, SEARCH_PARTS), 0.5) for n in ns}),
        ("integrate - search p99", {n: _ms(without(n, SEARCH_PARTS), 0.99) for n in ns}),
        ("integrate - search - mask median",
         {n: _ms(without(n, (*SEARCH_PARTS, "mask")), 0.5) for n in ns}),
        *[(f"{x} inside integrate median", {n: _ms(samples[n].parts[x], 0.5) for n in ns})
          for x in parts],
        ("recall median (context)", {n: _ms(samples[n].recall, 0.5) for n in ns}),
        ("recall p99 (context)", {n: _ms(samples[n].recall, 0.99) for n in ns}),
        ("integrate - recall medians", {
            n: _ms(samples[n].integrate, 0.5) - _ms(samples[n].recall, 0.5) for n in ns}),
    ]
    ratio_head = f" {hi:,}/{lo:,} |" if len(ns) > 1 else ""
    lines = [
        "## engramdb lifespan benchmark: tick and integrate vs store size",
        "",
        f"- machine: {describe()}",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- python {platform.python_version()}, numpy {np.__version__}, "
        f"engramdb {engramdb.__version__}",
        f"- command: `{command}`",
        f"- samples per size: {len(samples[lo].tick)} ticks, {len(samples[lo].integrate)} "
        f"integrates, {len(samples[lo].recall)} recalls, in {args.rounds} interleaved rounds",
    ]
    for b in built:
        how = "reused" if b.build_s is None else f"built in {b.build_s:.0f} s"
        extra = f"; {b.note}" if b.note else ""
        lines.append(f"- store n={b.n:,} ({how}{extra}); open {samples[b.n].open_s:.2f} s; "
                     f"{samples[b.n].count:,} live engrams after the run")
    lines += [
        "",
        "| ms | " + " | ".join(f"{n:,}" for n in ns) + " |" + ratio_head,
        "|---|" + "---:|" * len(ns) + ("---:|" if len(ns) > 1 else ""),
    ]
    for name, vals in rows:
        cells = " | ".join(f"{vals[n]:.2f}" for n in ns)
        ratio = ""
        if len(ns) > 1:
            ratio = f" {vals[hi] / vals[lo]:.2f} |" if vals[lo] > 0 else " - |"
        lines.append(f"| {name} | {cells} |{ratio}")
    lines += [
        "",
        "Timed parts (wrapped for the run): dense search = `Store._dense_search` (vector "
        "index, or exact scan below its threshold), exact scan = `Store._exact_search` (stores "
        "without `_dense_search`), lexical = `LexicalIndex.match` (BM25), mask = "
        "`HotState.visible` (an O(N) numpy pass). integrate - search = integrate minus the "
        "search parts, per call.",
    ]
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build or reuse the stores, measure, print (and write) the report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,1000000",
                   help="comma-separated store sizes (engrams), smallest first")
    p.add_argument("--out", type=Path, default=Path("/tmp/engramdb-bench-lifespan"),
                   help="directory holding the stores (reused between runs)")
    p.add_argument("--rebuild", action="store_true", help="rebuild stores even if present")
    p.add_argument("--index-m", type=int, default=0,
                   help="hnswlib M for the stores built (default: engramdb's choice)")
    p.add_argument("--index-efc", type=int, default=0,
                   help="hnswlib ef_construction for the stores built (default: engramdb's)")
    p.add_argument("--chunk", type=int, default=50_000, help="rows per ingest_many call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ticks", type=int, default=200, help="tick() calls per size")
    p.add_argument("--turns", type=int, default=100,
                   help="integrate() calls (and recall() calls) per size")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the sizes")
    p.add_argument("--warmup", type=int, default=5, help="untimed recalls + ticks per store")
    p.add_argument("--probe-rows", type=int, default=100_000,
                   help="rows after which the build time is projected")
    p.add_argument("--max-build-min", type=float, default=15.0,
                   help="cut a build whose projected time exceeds this many minutes ...")
    p.add_argument("--fit-build-min", type=float, default=10.0,
                   help="... to the size that fits in this many minutes")
    p.add_argument("--profile", type=int, default=0, metavar="TURNS",
                   help="afterwards, profile TURNS integrates + ticks on the largest store "
                   "with pyinstrument and print it")
    p.add_argument("--profile-html", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 1 or args.rounds < 1:
        p.error("--sizes needs positive integers and --rounds >= 1")
    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else \
        shlex.join(["bench_lifespan.py", *argv])

    built = [build_store(args.out, n, args) for n in sizes]
    built.sort(key=lambda b: b.n)
    samples = measure(built, args)
    text = report(built, samples, args, command)
    print()
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)
        print(f"written to {args.markdown}")
    if args.profile:
        print(profile_integrate(built[-1], args.profile, args.profile_html))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
