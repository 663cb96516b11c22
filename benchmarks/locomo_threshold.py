"""Can recall's ``relevance`` be thresholded? Evidence against the rest on LoCoMo.

Each conversation goes into its own store (``benchmarks/locomo.py``'s ``build``: turn by turn,
with session and date, default settings); each question is asked through ``recall`` with a
wide ``top_k`` (50), and every hit is labelled evidence (it is one of the question's evidence
turns) or not. Reported:

- ROC AUC of ``relevance`` for evidence against non-evidence hits, pooled over all questions
  (a threshold is one number for every query, so the pooled AUC is what matters), overall
  and per category; the same for ``score`` (the rank score, relative to one query's
  candidates), the cosine alone and the query coverage alone, for comparison;
- for thresholds 0.1 to 0.8: the share of evidence hits kept, of non-evidence hits dropped,
  of questions that keep at least one evidence hit (among all 50, and among the first five:
  what ``recall(q, top_k=5, min_score=t)`` gives), the mean number of hits kept per
  question, and the share of adversarial questions (category 5) that keep nothing;
- a control for queries about something never said: each store is also asked the *other*
  conversations' questions (other people, other events), and the table gives the share of
  those that keep nothing at each threshold.

    nice -n 19 python benchmarks/locomo_threshold.py [--data ../shared/data/locomo/locomo-dev.json]
        [--top-k 50] [--markdown out.md]

Encoder: the packaged all-MiniLM-L6-v2 (``engramdb.encoders.default``), every text encoded
once and cached (``locomo.MemoEncoder``), as ``benchmarks/locomo.py`` does. Skips cleanly
(exit 0) when the data is absent; the data (CC BY-NC 4.0, Maharana et al., ACL 2024) is never
copied into this repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from locomo import DEFAULT_DATA, NO_FORGETTING, MemoEncoder, build  # noqa: E402
from locomo_lab import CATS, Conv, load  # noqa: E402

import engramdb  # noqa: E402

THRESHOLDS = (0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class Asked:
    """One question asked of one store: its hits' relevance, score, cosine and coverage,
    and which hits are evidence (all False for a question from another conversation)."""

    conv: str
    cat: int
    own: bool  # asked of its own conversation's store
    relevance: np.ndarray
    score: np.ndarray
    cosine: np.ndarray
    coverage: np.ndarray
    evidence: np.ndarray


def ask_all(conv: Conv, path: Path, encoder, ids: list[str], questions: list[dict],
            own: bool, top_k: int) -> list[Asked]:
    """Ask ``questions`` of the store at ``path``; label each hit by the turns it is."""
    turns: dict[str, list[int]] = {}
    for i, ident in enumerate(ids):
        turns.setdefault(ident, []).append(i)
    out = []
    with engramdb.open(path, encoder=encoder,
                       settings=engramdb.Settings(**NO_FORGETTING)) as mem:
        for q in questions:
            hits = mem.recall(q["q"], top_k=top_k)
            ev = set(q["ev"]) if own else set()
            out.append(Asked(
                conv=conv.sample_id, cat=q["cat"], own=own,
                relevance=np.array([h.relevance for h in hits]),
                score=np.array([h.score for h in hits]),
                cosine=np.array([h.scores.get("vector", np.nan) for h in hits]),
                coverage=np.array([h.scores.get("coverage", np.nan) for h in hits]),
                evidence=np.array([bool(ev & set(turns.get(h.id, []))) for h in hits], bool)))
    return out


def auc(values: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties counted half) of ``values`` for ``positive``; NaN values
    (a hit without that evidence) are left out."""
    keep = ~np.isnan(values)
    values, positive = values[keep], positive[keep]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_rows(asked: list[Asked]) -> list[str]:
    """Markdown table: pooled AUC of relevance, score, cosine and coverage, overall and per
    category."""
    groups = {"all": [a for a in asked if a.own]}
    for c, name in CATS.items():
        groups[name] = [a for a in asked if a.own and a.cat == c]
    lines = ["| questions | n | evidence hits | other hits | AUC relevance | AUC score | "
             "AUC cosine | AUC coverage |", "|---|---|---|---|---|---|---|---|"]
    for name, group in groups.items():
        if not group:
            continue
        ev = np.concatenate([a.evidence for a in group])
        cells = [f"{auc(np.concatenate([getattr(a, f) for a in group]), ev):.3f}"
                 for f in ("relevance", "score", "cosine", "coverage")]
        lines.append(f"| {name} | {len(group)} | {int(ev.sum())} | {int((~ev).sum())} | "
                     + " | ".join(cells) + " |")
    return lines


def threshold_rows(asked: list[Asked]) -> list[str]:
    """Markdown table: what each threshold keeps and drops."""
    own = [a for a in asked if a.own]
    adversarial = [a for a in own if a.cat == 5]
    foreign = [a for a in asked if not a.own]
    rel = np.concatenate([a.relevance for a in own])
    ev = np.concatenate([a.evidence for a in own])
    lines = ["| min_score | evidence hits kept | other hits dropped | questions with evidence "
             "kept | ... in the top 5 | hits kept per question | adversarial: all dropped | "
             "other conversation's questions: all dropped |", "|---|---|---|---|---|---|---|---|"]
    top5 = np.mean([bool(a.evidence[:5].any()) for a in own])
    lines.append(f"| none | 1 | 0 | {np.mean([a.evidence.any() for a in own]):.3f} | "
                 f"{top5:.3f} | {np.mean([len(a.relevance) for a in own]):.1f} | 0 | 0 |")
    for t in THRESHOLDS:
        kept = rel >= t
        with_ev = np.mean([bool((a.evidence & (a.relevance >= t)).any()) for a in own])
        # With top_k=5: the first five hits, of which those that pass.
        in_top5 = np.mean([bool((a.evidence[:5] & (a.relevance[:5] >= t)).any()) for a in own])
        per_q = np.mean([int((a.relevance >= t).sum()) for a in own])
        adv = np.mean([not (a.relevance >= t).any() for a in adversarial]) if adversarial \
            else float("nan")
        off = np.mean([not (a.relevance >= t).any() for a in foreign]) if foreign \
            else float("nan")
        lines.append(f"| {t:.2f} | {kept[ev].mean():.3f} | {(~kept[~ev]).mean():.3f} | "
                     f"{with_ev:.3f} | {in_top5:.3f} | {per_q:.1f} | {adv:.3f} | {off:.3f} |")
    return lines


def summary(asked: list[Asked]) -> list[str]:
    """Two paragraphs: the best relevance of own and of other conversations' questions, and
    how well one threshold on relevance (or on score) tells them apart."""
    own = [a for a in asked if a.own]
    foreign = [a for a in asked if not a.own]
    found = np.mean([a.evidence.any() for a in own])

    def best(group: list[Asked], field: str, evidence_only: bool) -> np.ndarray:
        return np.array([max((x for x, e in zip(getattr(a, field), a.evidence, strict=True)
                              if e or not evidence_only), default=np.nan) for a in group])

    top_own, top_off = best(own, "relevance", False), best(foreign, "relevance", False)
    lines = [f"Questions with an evidence turn among the hits at all: {found:.3f}. Best "
             f"relevance per question, median (10th-90th percentile): own conversation "
             f"{np.median(top_own):.2f} ({np.percentile(top_own, 10):.2f}-"
             f"{np.percentile(top_own, 90):.2f}), another conversation's question "
             f"{np.median(top_off):.2f} ({np.percentile(top_off, 10):.2f}-"
             f"{np.percentile(top_off, 90):.2f}).", ""]
    cells = []
    for field in ("relevance", "score"):
        ev_best = best(own, field, True)
        ev_best = ev_best[~np.isnan(ev_best)]
        off = best(foreign, field, False)
        sep = auc(np.concatenate([ev_best, off]),
                  np.r_[np.ones(len(ev_best), bool), np.zeros(len(off), bool)])
        # The threshold that keeps an evidence hit for 80% of the questions that have one.
        t = float(np.quantile(ev_best, 0.2))
        cells.append(f"{field}: AUC {sep:.3f}; at {t:.2f}, the threshold that keeps an "
                     f"evidence hit for 80% of those questions, {np.mean(off < t):.3f} of the "
                     f"other conversations' questions keep nothing")
    lines.append("Own questions' best evidence hit against other conversations' questions' "
                 "best hit (can one threshold tell a question the store can answer from one "
                 "about people it never heard of?): " + "; ".join(cells) + ".")
    return lines


def run(convs: list[Conv], encoder, top_k: int, tmp: Path) -> list[Asked]:
    """Build every conversation's store, ask it its own questions and everyone else's."""
    asked: list[Asked] = []
    for conv in convs:
        path = tmp / f"{conv.sample_id}.engram"
        ids = build(conv, path, encoder, NO_FORGETTING, False)
        asked += ask_all(conv, path, encoder, ids, conv.questions, True, top_k)
        others = [q for c in convs if c is not conv for q in c.questions]
        asked += ask_all(conv, path, encoder, ids, others, False, top_k)
    return asked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    if not args.data.exists():
        print(f"LoCoMo data not found at {args.data}; skipping")
        return 0
    from engramdb.encoders import default

    t0 = time.perf_counter()
    convs = load(args.data)
    encoder = MemoEncoder(default())
    encoder.encode([t for c in convs for t in c.text + [q["q"] for q in c.questions]])
    print(f"encoded every text once in {time.perf_counter() - t0:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        asked = run(convs, encoder, args.top_k, Path(tmp))
    command = "nice -n 19 python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    n_own = sum(a.own for a in asked)
    lines = [
        f"Data: `{args.data.name}` ({len(convs)} conversations, {n_own} questions with "
        f"evidence, each also asked of the other conversations' stores: "
        f"{len(asked) - n_own}). top_k={args.top_k}. Encoder: packaged all-MiniLM-L6-v2. "
        f"Date: {time.strftime('%Y-%m-%d')}. {time.perf_counter() - t0:.0f} s. "
        f"Command: `{command}`",
        "", *auc_rows(asked), "", *threshold_rows(asked), "", *summary(asked),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
