"""Evidence recall on LoCoMo through engramdb's public API.

Each conversation goes into its own store, turn by turn, with its session and date; each
question is asked through ``recall``; a question's evidence turns must come back. Reports
R@1/5/10/20 and all-evidence-hit@10, overall and per category, for:

- dense: MiniLM cosine only (``lexical_weight=0``), no links;
- lexical: BM25 only (``lexical_weight=1``);
- hybrid: the default fusion of both (``Settings().lexical_weight``);
- hybrid+assoc: the conversation is played through ``integrate`` (each turn recalls, links to
  what it recalled and to the previous turn, and advances the clock), forgetting off, and the
  questions use associative recall;
- hybrid+assoc+forget: the same with the default lifespan settings, so engrams that were never
  used die as the clock advances.

    python benchmarks/locomo.py [--data ../shared/data/locomo/locomo-dev.json] \
        [--markdown docs/quality.md]

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

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / (
    "locomo-dev.json")
NO_FORGETTING = {"short_term_lifespan": 1e12, "long_term_lifespan": 1e12}


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
        associative: bool) -> tuple[list[dict], list[float]]:
    """Ask every question with recall; score the evidence turns that came back."""
    where: dict[str, list[int]] = {}
    for i, ident in enumerate(ids):
        where.setdefault(ident, []).append(i)
    rows, times = [], []
    with engramdb.open(path, encoder=encoder, settings=engramdb.Settings(**settings)) as mem:
        for q in conv.questions:
            t0 = time.perf_counter()
            hits = mem.recall(q["q"], top_k=max(KS), associative=associative)
            times.append((time.perf_counter() - t0) * 1000)
            ranked: list[int] = []
            for h in hits:
                ranked.extend(where.get(h.id, []))
            ev = set(q["ev"])
            r = {f"R@{k}": len(ev & set(ranked[:k])) / len(ev) for k in KS}
            r["all@10"] = float(ev <= set(ranked[:10]))
            r["cat"] = q["cat"]
            rows.append(r)
    return rows, times


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
    # name: (settings, play the conversation through integrate, associative recall)
    "dense": ({"lexical_weight": 0.0, **NO_FORGETTING}, False, False),
    "lexical": ({"lexical_weight": 1.0, **NO_FORGETTING}, False, False),
    "hybrid": (NO_FORGETTING, False, False),
    "hybrid+assoc": (NO_FORGETTING, True, True),
    "hybrid+assoc+forget": ({}, True, True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES))
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    if not args.data.exists():
        print(f"LoCoMo data not found at {args.data}; skipping")
        return 0
    from engramdb.encoders import default

    encoder = default()
    convs = load(args.data)
    results, latency = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.pipelines:
            settings, through_integrate, associative = PIPELINES[name]
            rows, times = [], []
            for conv in convs:
                path = Path(tmp) / f"{name}-{conv.sample_id}.engram"
                ids = build(conv, path, encoder, settings, through_integrate)
                r, t = ask(conv, path, encoder, ids, settings, associative)
                rows += r
                times += t
            results[name] = summarize(rows)
            latency[name] = float(np.median(times))
            a = results[name]["all"]
            print(f"{name:<22} R@5 {a['R@5']:.3f} R@10 {a['R@10']:.3f} "
                  f"recall p50 {latency[name]:.1f} ms", flush=True)
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    lines = [
        f"Data: `{args.data.name}` ({len(convs)} conversations, "
        f"{sum(len(c.questions) for c in convs)} questions with evidence). "
        f"Encoder: packaged all-MiniLM-L6-v2. Date: {time.strftime('%Y-%m-%d')}. "
        f"Command: `{command}`",
        "",
        "| pipeline | R@1 | R@5 | R@10 | R@20 | all@10 | recall p50 ms | "
        + " | ".join(f"R@10 {c}" for c in CATS.values()) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(CATS),
    ]
    for name, res in results.items():
        a = res["all"]
        cats = " | ".join(f"{res[c]['R@10']:.3f}" if c in res else "-" for c in CATS.values())
        lines.append(f"| {name} | {a['R@1']:.3f} | {a['R@5']:.3f} | {a['R@10']:.3f} | "
                     f"{a['R@20']:.3f} | {a['all@10']:.3f} | {latency[name]:.1f} | {cats} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
