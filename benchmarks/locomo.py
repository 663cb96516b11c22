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
        [--markdown docs/quality.md] [--pipelines NAME ...] [--set KEY=JSON ...] [--as-app]

``--as-app`` stores every conversation twice: in the lab's *prefixed* form (each turn's text
is "speaker: text [image: caption]") and as a chatbot stores it (*app*: the text alone, the
speaker as role, the session, and metadata ``{"date", "dia_id", "image_caption"}``, with
``lexical_metadata="image_caption"`` so the caption is searched as words of the turn and, with
``embed_metadata`` (on by default), embedded with its text), runs
the pipelines (default: hybrid and hybrid+assoc+forget) on both, and adds R@5 and R@10 with 95%
bootstrap intervals over questions, per category, and the paired difference app - prefixed,
then the paired recall latency of the two hybrid stores with cached query vectors.
``--set`` gives settings to every pipeline (``--set role_lexical=false``: the formula before
roles took part in query coverage).

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
import json
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
# What an app storing the caption as metadata sets to have it searched (Settings docs).
APP_SETTINGS = {"lexical_metadata": "image_caption"}


def turns(conv: Conv, form: str) -> tuple[list[str], list[dict]]:
    """The texts and metadata of a conversation's turns as ``form`` stores them:
    ``"prefixed"``, "speaker: text [image: caption]" (the lab's form), or ``"app"``, what a
    chatbot stores: the text alone, the caption (when there is one) under the metadata key
    ``image_caption`` (the speaker is the role either way)."""
    metas = [{"date": d, "dia_id": i} for d, i in zip(conv.date, conv.dia)]
    if form == "prefixed":
        return conv.text, metas
    return conv.raw, [m | {"image_caption": c} if c else m
                      for m, c in zip(metas, conv.caption, strict=True)]


def build(conv: Conv, path: Path, encoder, settings: dict, through_integrate: bool,
          form: str = "prefixed") -> list[str]:
    """Put one conversation into a new store in ``form`` (:func:`turns`); return the engram
    id of every turn."""
    s = engramdb.Settings(**settings)
    texts, metas = turns(conv, form)
    sessions = [f"session_{n}" for n in conv.session]
    with engramdb.open(path, encoder=encoder, settings=s) as mem:
        if not through_integrate:
            res = mem.ingest_many(texts, roles=conv.speaker, sessions=sessions,
                                  metadatas=metas)
            return [r.id for r in res]
        return [mem.integrate(t, top_k=5, role=sp, session=se, metadata=m).id
                for t, sp, se, m in zip(texts, conv.speaker, sessions, metas)]


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
                    context = False if name.startswith("dense") else None
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
        lat = f"{latency[name]:.2f}" if name in latency else "-"
        lines.append(f"| {name} | {a['R@1']:.3f} | {a['R@5']:.3f} | {a['R@10']:.3f} | "
                     f"{a['R@20']:.3f} | {a['all@10']:.3f} | {lat} | {cats} |")
    return lines


def bootstrap(rows: list[dict], metric: str, base: list[dict] | None = None,
              n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``metric`` over ``rows`` (or of its difference from ``base``, the same
    questions in the same order) and a 95% bootstrap interval over questions."""
    x = np.array([r[metric] for r in rows])
    if base is not None:
        x = x - np.array([r[metric] for r in base])
    idx = np.random.default_rng(seed).integers(0, len(x), (n, len(x)))
    means = x[idx].mean(1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means,
                                                                                   97.5))


def interval_table(all_rows: dict[str, list[dict]], pairs: list[tuple[str, str]]) -> list[str]:
    """Markdown rows: R@5 and R@10 with 95% bootstrap intervals, overall and per category,
    for every pipeline, then the paired difference of each (new, reference) pair."""
    groups = ["all", *CATS.values()]
    lines = ["| pipeline | metric | " + " | ".join(groups) + " |",
             "|---|---|" + "---|" * len(groups)]

    def cell(rows: list[dict], metric: str, base: list[dict] | None, group: str) -> str:
        keep = [i for i, r in enumerate(rows) if group == "all" or CATS[r["cat"]] == group]
        if not keep:
            return "-"
        m, lo, hi = bootstrap([rows[i] for i in keep], metric,
                              None if base is None else [base[i] for i in keep])
        sign = "+" if base is not None else ""
        return f"{m:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"

    for name, rows in all_rows.items():
        for metric in ("R@5", "R@10"):
            lines.append(f"| {name} | {metric} | "
                         + " | ".join(cell(rows, metric, None, g) for g in groups) + " |")
    for new, ref in pairs:
        if new in all_rows and ref in all_rows:
            for metric in ("R@5", "R@10"):
                lines.append(f"| {new} - {ref} | {metric} | " + " | ".join(
                    cell(all_rows[new], metric, all_rows[ref], g) for g in groups) + " |")
    return lines


def run_pipelines(convs: list[Conv], names: list[str], forms: list[str], encoder,
                  tmp: str, extra: dict) -> tuple[dict, dict, dict]:
    """Every pipeline in every form over every conversation, ``extra`` settings on top of
    the pipeline's: (summaries, recall p50 ms, per-question rows), keyed by pipeline name
    (with " (form)" when there are two forms)."""
    results, latency, all_rows = {}, {}, {}
    for name in names:
        base, through_integrate, associative, context = PIPELINES[name]
        for form in forms:
            settings = base | (APP_SETTINGS if form == "app" else {}) | extra
            key = name if len(forms) == 1 else f"{name} ({form})"
            rows, times = [], []
            for conv in convs:
                path = Path(tmp) / f"{name}-{form}-{conv.sample_id}.engram"
                ids = build(conv, path, encoder, settings, through_integrate, form)
                r, t = ask(conv, path, encoder, ids, settings, associative, context)
                rows += r
                times += t
            all_rows[key] = rows
            results[key] = summarize(rows)
            latency[key] = float(np.median(times))
            a = results[key]["all"]
            print(f"{key:<30} R@5 {a['R@5']:.3f} R@10 {a['R@10']:.3f} "
                  f"recall p50 {latency[key]:.2f} ms", flush=True)
    return results, latency, all_rows


def latency_lines(convs: list[Conv], paths: dict[str, str], model, encoder, tmp: str,
                  repeats: int) -> list[str]:
    """Paired recall latency of the stores named in ``paths`` (pipeline-form -> file
    prefix): end to end with ``model`` when it is given, and with cached query vectors."""
    lines = []
    for label, enc, reps in (("query encoding included", model, repeats),
                             ("query vectors cached (what recall itself costs)", encoder, 3)):
        if enc is None:
            continue
        times: dict[str, list[float]] = {n: [] for n in paths}
        for conv in convs:
            conv_paths = {n: Path(tmp) / f"{p}-{conv.sample_id}.engram"
                          for n, p in paths.items()}
            for n, t in paired_latency(conv, conv_paths, enc, reps).items():
                times[n] += t
        parts = [f"{n} p50 {np.median(t):.2f} ms (p99 {np.percentile(t, 99):.2f})"
                 for n, t in times.items()]
        first, *rest = list(times)
        ratios = [f"{r}/{first} **{np.median(times[r]) / np.median(times[first]):.2f}x**"
                  for r in rest]
        lines += ["", f"Paired latency, {label} ({len(times[first])} recalls each, "
                  f"top_k=10): " + ", ".join(parts) + "; " + ", ".join(ratios) + "."]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pipelines", nargs="+", default=None)
    parser.add_argument("--as-app", action="store_true",
                        help="store each turn as a chatbot does (text, role, metadata) and "
                        "compare it with the prefixed form, with bootstrap intervals")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=JSON",
                        help="settings for every pipeline, e.g. role_lexical=false")
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
    forms = ["prefixed", "app"] if args.as_app else ["prefixed"]
    names = args.pipelines or (["hybrid", "hybrid+assoc+forget"] if args.as_app
                               else list(PIPELINES))
    encoder = MemoEncoder(model)
    t0 = time.perf_counter()
    encoder.encode([t for c in convs for f in forms for t in turns(c, f)[0]]
                   + [q["q"] for c in convs for q in c.questions])
    print(f"encoded every text once in {time.perf_counter() - t0:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        extra = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        results, latency, all_rows = run_pipelines(convs, names, forms, encoder, tmp, extra)
        if args.as_app and "hybrid" in names:
            paths = {f"hybrid ({f})": f"hybrid-{f}" for f in forms}
            timing = latency_lines(convs, paths, None, encoder, tmp, args.repeats)
        elif {"dense", "hybrid"} <= set(names):
            timing = latency_lines(convs, {"dense": "dense-prefixed",
                                           "hybrid": "hybrid-prefixed"},
                                   model, encoder, tmp, args.repeats)
        else:
            timing = []
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    lines = [
        f"Data: `{args.data.name}` ({len(convs)} conversations, "
        f"{sum(len(c.questions) for c in convs)} questions with evidence). "
        f"Encoder: packaged all-MiniLM-L6-v2. Date: {time.strftime('%Y-%m-%d')}. "
        f"Command: `{command}`",
        "",
        *table(results, latency),
    ]
    if args.as_app:
        pairs = [(f"{n} (app)", f"{n} (prefixed)") for n in names]
        lines += ["", "R@5 and R@10 with 95% bootstrap intervals over questions (2,000 "
                  "resamples; differences paired by question):", ""]
        lines += interval_table(all_rows, pairs)
    held = {c.sample_id for c in convs} - DEV_SPLIT
    if held:
        lines += ["", f"Held-out conversations only ({', '.join(sorted(held))}):", ""]
        lines += table({n: summarize([r for r in rows if r["conv"] in held])
                        for n, rows in all_rows.items()}, {})
    lines += timing
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
