"""Evidence recall on LoCoMo through engramdb's public API.

Each conversation goes into its own store, turn by turn, with its session and date; each
question is asked through ``recall``; a question's evidence turns must come back. Reports
R@1/5/10/20 and all-evidence-hit@10, overall and per category, for:

- dense: MiniLM cosine only (``lexical_weight=0``, ``context=False``), no links;
- lexical: BM25 only (``lexical_weight=1``, ``context=False``): the BM25 reference;
- hybrid: the store's default recall: dense + BM25 with conversation context (previous turn,
  session, speaker and date priors, neighbour step; ``docs/recall.md``);
- hybrid+assoc: the conversation is played through ``integrate`` (each turn recalls, links to
  what it recalled and to the previous turn, and advances the clock), forgetting off, and the
  questions use associative recall;
- hybrid+assoc+forget: the same with the default lifespan settings, so engrams that were never
  used die as the clock advances.

    python benchmarks/locomo.py [--data ../shared/data/locomo/locomo-dev.json] \
        [--markdown docs/quality.md]

Every text is encoded once (batched) and the vectors are cached by a wrapper with the
model's own spec (:class:`MemoEncoder`, so the stores are the same as with the model itself):
pipelines then cost no encoding, and their "recall p50" is recall's own work. Latency of
hybrid against dense is then measured through the public API with the real encoder (query
encoding included) and with the cache, paired (each question asked of both stores in turn, so
both see the same machine load). When the data file holds conversations beyond the
development split (conv-26, conv-30, conv-41: e.g. the full locomo10.json), every table is also
given for those held-out conversations alone.

Skips cleanly (exit 0) when the data is absent. The data is CC BY-NC 4.0 (Maharana et al.,
ACL 2024) and is never copied into this repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from locomo_lab import CATS, KS, Conv, load  # noqa: E402

import engramdb  # noqa: E402
import engramdb.encoders  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / (
    "locomo-dev.json")
NO_FORGETTING = {"short_term_lifespan": 1e12, "long_term_lifespan": 1e12}
DEV_SPLIT = {"conv-26", "conv-30", "conv-41"}  # ../shared/data/locomo/README.md


def build(conv: Conv, path: Path, encoder, settings: dict, through_integrate: bool) -> list[str]:
    """Put one conversation into a new store; return the engram id of every turn."""
    s = engramdb.Settings(**settings)
    metas = [{"date": d, "dia_id": i} for d, i in zip(conv.date, conv.dia)]
    sessions = [f"session_{n}" for n in conv.session]
    with engramdb.open(path, encoder=encoder, settings=s) as mem:
        if not through_integrate:
            res = mem.ingest_many(conv.text, roles=conv.speaker, sessions=sessions,
                                  metadatas=metas)
            return [r.id for r in res]
        return [mem.integrate(t, top_k=5, role=sp, session=se, metadata=m).id
                for t, sp, se, m in zip(conv.text, conv.speaker, sessions, metas)]


def ask(conv: Conv, path: Path, encoder, ids: list[str], settings: dict,
        associative: bool, context: bool | None) -> tuple[list[dict], list[float]]:
    """Ask every question with recall; score the evidence turns that came back."""
    where: dict[str, list[int]] = {}
    for i, ident in enumerate(ids):
        where.setdefault(ident, []).append(i)
    rows, times = [], []
    with engramdb.open(path, encoder=encoder, settings=engramdb.Settings(**settings)) as mem:
        for q in conv.questions:
            t0 = time.perf_counter()
            hits = mem.recall(q["q"], top_k=max(KS), associative=associative, context=context)
            times.append((time.perf_counter() - t0) * 1000)
            ranked: list[int] = []
            for h in hits:
                ranked.extend(where.get(h.id, []))
            ev = set(q["ev"])
            r = {f"R@{k}": len(ev & set(ranked[:k])) / len(ev) for k in KS}
            r["all@10"] = float(ev <= set(ranked[:10]))
            r["cat"] = q["cat"]
            r["conv"] = conv.sample_id
            rows.append(r)
    return rows, times


class MemoEncoder(engramdb.encoders.Encoder):
    """The same model (same spec, so the same fingerprint) with its query vectors cached: to
    time what recall itself costs, without the encoder."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.cache: dict[str, np.ndarray] = {}

    def spec(self) -> dict:
        return self.inner.spec()

    def encode(self, texts):
        missing = [t for t in texts if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.inner.encode(missing)))
        return np.stack([self.cache[t] for t in texts])


def paired_latency(conv: Conv, paths: dict[str, Path], encoder, repeats: int = 3
                   ) -> dict[str, list[float]]:
    """Time ``recall`` on the dense and the hybrid store of one conversation, alternating
    question by question so both see the same load; ms per call (query encoding included
    unless ``encoder`` is a warmed :class:`MemoEncoder`)."""
    out: dict[str, list[float]] = {name: [] for name in paths}
    stores = {name: engramdb.open(path, encoder=encoder) for name, path in paths.items()}
    try:
        for _ in range(repeats):
            for q in conv.questions:
                for name, mem in stores.items():
                    context = None if name == "hybrid" else False
                    t0 = time.perf_counter()
                    mem.recall(q["q"], top_k=10, associative=False, context=context)
                    out[name].append((time.perf_counter() - t0) * 1000)
    finally:
        for mem in stores.values():
            mem.close()
    return out


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean of each metric overall and per category."""
    keys = [f"R@{k}" for k in KS] + ["all@10"]
    out = {"all": {k: float(np.mean([r[k] for r in rows])) for k in keys} | {"n": len(rows)}}
    for c, name in CATS.items():
        sub = [r for r in rows if r["cat"] == c]
        if sub:
            out[name] = {k: float(np.mean([r[k] for r in sub])) for k in keys} | {"n": len(sub)}
    return out


PIPELINES = {
    # name: (settings, play the conversation through integrate, associative recall, context)
    "dense": ({"lexical_weight": 0.0, **NO_FORGETTING}, False, False, False),
    "lexical": ({"lexical_weight": 1.0, **NO_FORGETTING}, False, False, False),
    "hybrid": (NO_FORGETTING, False, False, None),
    "hybrid+assoc": (NO_FORGETTING, True, True, None),
    "hybrid+assoc+forget": ({}, True, True, None),
}


def table(results: dict[str, dict], latency: dict[str, float]) -> list[str]:
    """Markdown rows: overall R@k, all@10, p50 and R@10 (R@5) per category."""
    lines = [
        "| pipeline | R@1 | R@5 | R@10 | R@20 | all@10 | recall p50 ms | "
        + " | ".join(f"R@10 (R@5) {c}" for c in CATS.values()) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(CATS),
    ]
    for name, res in results.items():
        a = res["all"]
        cats = " | ".join(f"{res[c]['R@10']:.3f} ({res[c]['R@5']:.3f})" if c in res else "-"
                          for c in CATS.values())
        lat = f"{latency[name]:.1f}" if name in latency else "-"
        lines.append(f"| {name} | {a['R@1']:.3f} | {a['R@5']:.3f} | {a['R@10']:.3f} | "
                     f"{a['R@20']:.3f} | {a['all@10']:.3f} | {lat} | {cats} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES))
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=1,
                        help="passes over the questions for the paired end-to-end latency")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"LoCoMo data not found at {args.data}; skipping")
        return 0
    from engramdb.encoders import default

    model = default()
    convs = load(args.data)
    encoder = MemoEncoder(model)
    t0 = time.perf_counter()
    encoder.encode([t for c in convs for t in c.text + [q["q"] for q in c.questions]])
    print(f"encoded every text once in {time.perf_counter() - t0:.0f} s", flush=True)
    results, latency, all_rows = {}, {}, {}
    paired: dict[str, list[float]] = {"dense": [], "hybrid": []}
    search: dict[str, list[float]] = {"dense": [], "hybrid": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.pipelines:
            settings, through_integrate, associative, context = PIPELINES[name]
            rows, times = [], []
            for conv in convs:
                path = Path(tmp) / f"{name}-{conv.sample_id}.engram"
                ids = build(conv, path, encoder, settings, through_integrate)
                r, t = ask(conv, path, encoder, ids, settings, associative, context)
                rows += r
                times += t
            all_rows[name] = rows
            results[name] = summarize(rows)
            latency[name] = float(np.median(times))
            a = results[name]["all"]
            print(f"{name:<22} R@5 {a['R@5']:.3f} R@10 {a['R@10']:.3f} "
                  f"recall p50 {latency[name]:.1f} ms", flush=True)
        if {"dense", "hybrid"} <= set(args.pipelines):
            for conv in convs:
                paths = {n: Path(tmp) / f"{n}-{conv.sample_id}.engram"
                         for n in ("dense", "hybrid")}
                for n, t in paired_latency(conv, paths, model, args.repeats).items():
                    paired[n] += t
                for n, t in paired_latency(conv, paths, encoder, 3).items():
                    search[n] += t
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    lines = [
        f"Data: `{args.data.name}` ({len(convs)} conversations, "
        f"{sum(len(c.questions) for c in convs)} questions with evidence). "
        f"Encoder: packaged all-MiniLM-L6-v2. Date: {time.strftime('%Y-%m-%d')}. "
        f"Command: `{command}`",
        "",
        *table(results, latency),
    ]
    held = {c.sample_id for c in convs} - DEV_SPLIT
    if held:
        lines += ["", f"Held-out conversations only ({', '.join(sorted(held))}):", ""]
        lines += table({n: summarize([r for r in rows if r["conv"] in held])
                        for n, rows in all_rows.items()}, {})
    if paired["dense"]:
        d, h = float(np.median(paired["dense"])), float(np.median(paired["hybrid"]))
        d99, h99 = (float(np.percentile(paired[n], 99)) for n in ("dense", "hybrid"))
        lines += ["", f"Paired latency ({len(paired['dense'])} recalls each, top_k=10, query "
                  f"encoding included): dense p50 {d:.1f} ms (p99 {d99:.1f}), hybrid p50 "
                  f"{h:.1f} ms (p99 {h99:.1f}); ratio hybrid/dense p50 **{h / d:.2f}x**."]
        d, h = float(np.median(search["dense"])), float(np.median(search["hybrid"]))
        d99, h99 = (float(np.percentile(search[n], 99)) for n in ("dense", "hybrid"))
        lines += ["", f"The same with the query vectors cached (what recall itself costs): "
                  f"dense p50 {d:.2f} ms (p99 {d99:.2f}), hybrid p50 {h:.2f} ms (p99 "
                  f"{h99:.2f}); ratio hybrid/dense p50 **{h / d:.2f}x**."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
