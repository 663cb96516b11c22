"""Recall identity: prove that recall returns bit-identical results before and after a change.

``dump`` builds stores through the public API only (``engramdb.open``, ``ingest``,
``ingest_many``, ``integrate``, ``recall``, ``engramdb.encoders``) and writes every hit of every
recall (id, via, path, kind, text, lifespan_left, score and each entry of ``scores``; floats as
``float.hex()``) to a JSON file; ``compare`` says whether two dumps are identical. Run ``dump``
on the code before a change and on the code after it, then ``compare`` the two files::

    mkdir /tmp/old && git archive HEAD | tar -x -C /tmp/old    # the code before the change
    PYTHONPATH=/tmp/old python benchmarks/recall_identity.py dump --out /tmp/identity_old.json \
        --work /tmp/identity_work_old --cache /tmp/identity_minilm_cache
    python benchmarks/recall_identity.py dump --out /tmp/identity_new.json \
        --work /tmp/identity_work_new --cache /tmp/identity_minilm_cache
    python benchmarks/recall_identity.py compare /tmp/identity_old.json /tmp/identity_new.json

(``PYTHONPATH`` puts the old checkout ahead of an editable install; the dump's ``meta`` records
which ``engramdb`` it imported.) What is exercised:

a) LoCoMo development split (``../shared/data/locomo/locomo-dev.json``): one store per
   conversation, each turn "speaker: text [image: caption]" with its speaker as role, its
   session and its date, built with ``ingest_many`` and the default MiniLM encoder. Every
   text is encoded once into ``--cache`` (``CACHE.npy`` + ``CACHE.json`` with the model's
   spec, so ids are the model's); later runs load it, so old and new code see the same vectors
   whatever the encoder code does: give both sides of a comparison the same cache. Every
   question is asked at top_k 3/10/20, with context and associative recall on and off, with
   ``where`` filters (role, session, session list, metadata date), ``kinds``, ``vector=`` and
   with lexical-only, dense-only and turn-BM25-weighted settings; every third turn is asked
   too. One conversation is also played through ``integrate`` turn by turn (rewards, links,
   the clock; default settings and short lifespans so engrams are promoted and die); each
   turn's recalled memories are recorded, then questions are asked with ``kinds`` and
   ``since`` filters. A vectors-only store (``dim=``) of one conversation is asked by vector.
   The packaged model itself is checked on 32 texts (sha256 of its vectors).
b) A synthetic 30,000-engram store (``HashingEncoder(dim=64)``, 300 sessions, 3 roles,
   seeded texts over a Zipf vocabulary, a few duplicates, all three kinds), past the exact-scan
   threshold so search walks the HNSW graph; queried hybrid (context on/off), filtered by role,
   session and kind, and by vector; then closed, reopened (the saved-graph path) and partly
   asked again, and reopened once more with a lower ``exact_threshold`` so filtered searches
   take the filtered graph walk.

Determinism: hnswlib inserts with several threads when the process may use several CPUs, and
the graph it builds then depends on thread timing. ``dump`` therefore pins itself to one CPU
(``os.sched_setaffinity``) before opening any store (``--no-pin`` to skip), so a graph is a
function of the data alone; background indexing is drained (``drain_index``) before any recall.

    python benchmarks/recall_identity.py dump --out FILE.json [--locomo PATH] [--work DIR] \
        [--cache PATH] [--no-pin]
    python benchmarks/recall_identity.py compare A.json B.json     # exit 1 if any differ

About 3.5 minutes on 2 cores (plus ~1.5 once to build the cache), 22,551 recalls (19,411
LoCoMo, 3,140 synthetic). Skips part (a) when the data is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import engramdb  # noqa: E402
import engramdb.encoders  # noqa: E402

DEFAULT_LOCOMO = Path("/work/shared/data/locomo/locomo-dev.json")
DEFAULT_WORK = Path("/tmp/recall_identity_work")
KS = (3, 10, 20)
NO_FORGETTING = {"short_term_lifespan": 1e12, "long_term_lifespan": 1e12}


# ----------------------------------------------------------------------------------- records
def fhex(x: Any) -> Any:
    """A number as ``float.hex`` (bit-exact); anything else as it is."""
    if x is None or isinstance(x, str):
        return x
    try:
        return float(x).hex()
    except (TypeError, ValueError):
        return repr(x)


def hit_row(h: Any) -> dict[str, Any]:
    """Everything a recall hit says, floats in hex."""
    return {
        "id": h.id,
        "via": h.via,
        "path": list(h.path),
        "kind": str(getattr(h.kind, "value", h.kind)),
        "text": h.text,
        "lifespan_left": fhex(h.lifespan_left),
        "score": fhex(h.score),
        "scores": {str(k): fhex(v) for k, v in sorted(h.scores.items())},
    }


class Recorder:
    """Collects recall results under unique keys."""

    def __init__(self) -> None:
        self.recalls: dict[str, Any] = {}
        self.checks: dict[str, Any] = {}

    def add(self, key: str, value: Any) -> None:
        if key in self.recalls:
            raise RuntimeError(f"duplicate recall key {key}")
        self.recalls[key] = value

    def recall(self, key: str, mem: Any, query: Any = None, **kw: Any) -> None:
        """Run ``mem.recall`` and record its hits (or the error it raised)."""
        try:
            hits = mem.recall(query, **kw)
        except Exception as exc:  # recorded: a changed error is a difference too
            self.add(key, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self.add(key, [hit_row(h) for h in hits])


# ------------------------------------------------------------------------------ LoCoMo data
class Conv:
    """One LoCoMo conversation: turns in order and questions with evidence turn indices."""

    def __init__(self, sample_id: str, speakers: list[str]) -> None:
        self.sample_id = sample_id
        self.speakers = speakers
        self.dia: list[str] = []
        self.speaker: list[str] = []
        self.text: list[str] = []
        self.session: list[int] = []
        self.date: list[str] = []
        self.questions: list[dict[str, Any]] = []


def _norm_dia(e: str) -> list[str]:
    out = []
    for part in re.split(r"[;,\s]+", e.strip()):
        m = re.fullmatch(r"D:?(\d+):0*(\d+)", part)
        if m:
            out.append(f"D{int(m.group(1))}:{int(m.group(2))}")
    return out


def canon(text: str) -> str:
    """The form a store keeps (NFC, unified line ends, stripped), so the cache is keyed by it."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def load_locomo(path: Path) -> list[Conv]:
    """Parse LoCoMo as benchmarks/locomo.py does ("speaker: text [image: caption]"), texts in
    canonical form."""
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
                conv.dia.append(t["dia_id"])
                conv.speaker.append(t["speaker"])
                conv.text.append(canon(txt))
                conv.session.append(n)
                conv.date.append(c.get(f"session_{n}_date_time", ""))
            n += 1
        pos = {d: i for i, d in enumerate(conv.dia)}
        for q in item["qa"]:
            ev = sorted({pos[d] for e in q.get("evidence", []) for d in _norm_dia(e) if d in pos})
            if ev:
                conv.questions.append({"q": canon(q["question"]), "ev": ev})
        convs.append(conv)
    return convs


class CachedEncoder(engramdb.encoders.Encoder):
    """The packaged MiniLM's spec (so the same fingerprint and ids) with every vector read
    from a precomputed cache; a text missing from the cache is an error, never encoded."""

    def __init__(self, spec: dict[str, Any], texts: list[str], vectors: np.ndarray) -> None:
        self._spec = spec
        self.dim = int(vectors.shape[1])
        self._row = {t: i for i, t in enumerate(texts)}
        self._vectors = vectors

    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    def encode(self, texts):
        return self._vectors[[self._row[t] for t in texts]]

    def vector(self, text: str) -> np.ndarray:
        return self._vectors[self._row[text]]


def minilm_cache(cache: Path, data: Path, convs: list[Conv]) -> tuple[CachedEncoder, str]:
    """Load (or build once, with ``engramdb.encoders.default()``) the vector cache."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    meta_f, vec_f = cache.with_suffix(".json"), cache.with_suffix(".npy")
    data_sha = hashlib.sha256(data.read_bytes()).hexdigest()
    texts = list(dict.fromkeys(t for c in convs for t in c.text + [q["q"] for q in c.questions]))
    if not meta_f.exists():
        model = engramdb.encoders.default()
        t0 = time.perf_counter()
        vecs = np.ascontiguousarray(model.encode(texts), dtype=np.float32)
        print(f"encoded {len(texts)} texts in {time.perf_counter() - t0:.0f} s", flush=True)
        np.save(vec_f, vecs)
        meta_f.write_text(json.dumps({"spec": model.spec(), "texts": texts, "data_sha256": data_sha,
                                      "sha256": hashlib.sha256(vecs.tobytes()).hexdigest()}))
    meta = json.loads(meta_f.read_text())
    vecs = np.load(vec_f)
    sha = hashlib.sha256(vecs.tobytes()).hexdigest()
    if meta["data_sha256"] != data_sha or sha != meta["sha256"] or meta["texts"] != texts:
        raise SystemExit(f"{meta_f} does not match {data}: delete the cache files to rebuild")
    return CachedEncoder(meta["spec"], meta["texts"], vecs), sha


def model_check(rec: Recorder, convs: list[Conv]) -> None:
    """The packaged model's own vectors for 32 fixed texts (sha256 of the float32 bytes)."""
    model = engramdb.encoders.default()
    texts = [q["q"] for q in convs[0].questions[:16]] + convs[0].text[:16]
    vecs = np.ascontiguousarray(model.encode(texts), dtype=np.float32)
    rec.checks["minilm"] = {"fingerprint": model.fingerprint,
                            "vectors_sha256": hashlib.sha256(vecs.tobytes()).hexdigest()}


def build_plain(path: Path, conv: Conv, enc: Any, settings: dict | None = None) -> Any:
    """One store per conversation, every turn through ``ingest_many``."""
    mem = engramdb.open(path, encoder=enc, settings=engramdb.Settings(**(settings or {})))
    mem.ingest_many(conv.text, roles=conv.speaker,
                    sessions=[f"session_{n}" for n in conv.session],
                    metadatas=[{"date": d, "dia_id": i} for d, i in zip(conv.date, conv.dia)])
    drain(mem)
    return mem


def drain(mem: Any) -> None:
    """Wait for background indexing (when the code has it) so every search sees one graph."""
    if hasattr(mem, "drain_index"):
        mem.drain_index()


def locomo_plain(rec: Recorder, conv: Conv, enc: CachedEncoder, work: Path) -> None:
    """The conversation's store asked every question in many ways."""
    cid = conv.sample_id
    path = work / f"plain-{cid}.engram"
    mem = build_plain(path, conv, enc, NO_FORGETTING)
    qs = conv.questions
    for qi, q in enumerate(qs):
        ev = q["ev"][0]
        sess = f"session_{conv.session[ev]}"
        base = f"locomo/{cid}/plain/q{qi}"
        for k in KS:
            for ctx in (True, False):
                for assoc in (True, False):
                    rec.recall(f"{base}/k{k}/ctx{int(ctx)}/assoc{int(assoc)}", mem, q["q"],
                               top_k=k, context=ctx, associative=assoc)
        for role in conv.speakers:
            for ctx in (True, False):
                rec.recall(f"{base}/role={role}/ctx{int(ctx)}", mem, q["q"], top_k=10,
                           where={"role": role}, context=ctx)
        for ctx in (True, False):
            rec.recall(f"{base}/session/ctx{int(ctx)}", mem, q["q"], top_k=10,
                       where={"session": sess}, context=ctx)
        if qi % 2 == 0:
            nxt = f"session_{conv.session[ev] + 1}"
            rec.recall(f"{base}/sessions2", mem, q["q"], top_k=10,
                       where={"session": [sess, nxt], "role": conv.speaker[ev]})
            rec.recall(f"{base}/date", mem, q["q"], top_k=10,
                       where={"metadata": {"date": conv.date[ev]}})
        v = enc.vector(q["q"])
        for k in KS:
            rec.recall(f"{base}/vec/k{k}", mem, vector=v, top_k=k)
        rec.recall(f"{base}/vec/role", mem, vector=v, top_k=10,
                   where={"role": conv.speaker[ev]})
        rec.recall(f"{base}/kinds=st", mem, q["q"], top_k=10, kinds=["short_term"])
        if qi % 10 == 0:
            rec.recall(f"{base}/kinds=lt", mem, q["q"], top_k=10, kinds=["long_term"])
    for ti in range(0, len(conv.text), 3):
        rec.recall(f"locomo/{cid}/plain/turn{ti}", mem, conv.text[ti], top_k=10)
    mem.close()
    # The same store reopened with other recall settings.
    variants = {
        "dense": {"lexical_weight": 0.0},
        "lexical": {"lexical_weight": 1.0},
        "turnbm25": {"turn_lexical": 0.3, "context_lexical": 0.2},
    }
    for name, extra in variants.items():
        s = engramdb.Settings(**{**NO_FORGETTING, **extra})
        with engramdb.open(path, encoder=enc, settings=s) as mem:
            for qi, q in enumerate(qs):
                for ctx in ((True, False) if name != "turnbm25" else (True,)):
                    rec.recall(f"locomo/{cid}/{name}/q{qi}/ctx{int(ctx)}", mem, q["q"], top_k=10,
                               context=ctx)


def locomo_integrate(rec: Recorder, conv: Conv, enc: CachedEncoder, work: Path, tag: str,
                     settings: dict, full: bool) -> None:
    """The conversation played through ``integrate`` (recall, rewards, links, clock)."""
    cid = conv.sample_id
    mem = engramdb.open(work / f"integrate-{tag}-{cid}.engram", encoder=enc,
                        settings=engramdb.Settings(**settings))
    for ti, (t, sp, se, d, di) in enumerate(zip(conv.text, conv.speaker, conv.session, conv.date,
                                                 conv.dia)):
        try:
            turn = mem.integrate(t, top_k=5, role=sp, session=f"session_{se}",
                                 metadata={"date": d, "dia_id": di})
        except Exception as exc:
            rec.add(f"locomo/{cid}/{tag}/turn{ti}", {"error": f"{type(exc).__name__}: {exc}"})
            continue
        rec.add(f"locomo/{cid}/{tag}/turn{ti}", {
            "id": turn.id, "is_new": turn.is_new, "tick": turn.tick, "prompt": turn.prompt,
            "recalled": [hit_row(h) for h in turn.recalled]})
    drain(mem)
    half = len(conv.text) // 2
    for qi, q in enumerate(conv.questions):
        base = f"locomo/{cid}/{tag}/q{qi}"
        ev = q["ev"][0]
        if full:
            for k in KS:
                for ctx in (True, False):
                    for assoc in (True, False):
                        rec.recall(f"{base}/k{k}/ctx{int(ctx)}/assoc{int(assoc)}", mem, q["q"],
                                   top_k=k, context=ctx, associative=assoc)
            rec.recall(f"{base}/role", mem, q["q"], top_k=10, where={"role": conv.speaker[ev]})
            rec.recall(f"{base}/vec", mem, vector=enc.vector(q["q"]), top_k=10)
        else:
            for k in (10, 20):
                for ctx in (True, False):
                    for assoc in (True, False):
                        rec.recall(f"{base}/k{k}/ctx{int(ctx)}/assoc{int(assoc)}", mem, q["q"],
                                   top_k=k, context=ctx, associative=assoc)
        for kinds in (["working"], ["short_term"], ["long_term"], ["working", "short_term"]):
            rec.recall(f"{base}/kinds={'+'.join(kinds)}", mem, q["q"], top_k=10, kinds=kinds)
        rec.recall(f"{base}/since", mem, q["q"], top_k=10, where={"since": half})
        rec.recall(f"{base}/until", mem, q["q"], top_k=10, where={"until": half})
    mem.close()


def locomo_vectors_only(rec: Recorder, conv: Conv, enc: CachedEncoder, work: Path) -> None:
    """A store without an encoder (``dim=``), fed and asked by vector."""
    cid = conv.sample_id
    with engramdb.open(work / f"vectors-{cid}.engram", dim=enc.dim) as mem:
        mem.ingest_many(conv.text, vectors=enc.encode(conv.text), roles=conv.speaker,
                        sessions=[f"session_{n}" for n in conv.session])
        drain(mem)
        for qi, q in enumerate(conv.questions):
            v = enc.vector(q["q"])
            rec.recall(f"locomo/{cid}/vectors/q{qi}/k10", mem, vector=v, top_k=10)
            rec.recall(f"locomo/{cid}/vectors/q{qi}/k20/session", mem, vector=v, top_k=20,
                       where={"session": f"session_{conv.session[q['ev'][0]]}"})


def part_locomo(rec: Recorder, data: Path, work: Path, cache: Path,
                times: dict[str, float]) -> dict:
    t0 = time.perf_counter()
    convs = load_locomo(data)
    enc, sha = minilm_cache(cache, data, convs)
    rec.checks["locomo_cache_sha256"] = sha
    model_check(rec, convs)
    times["locomo_cache_and_model_check"] = time.perf_counter() - t0
    for conv in convs:
        t0 = time.perf_counter()
        locomo_plain(rec, conv, enc, work)
        times[f"locomo_plain_{conv.sample_id}"] = time.perf_counter() - t0
    small = min(convs, key=lambda c: len(c.text))
    t0 = time.perf_counter()
    locomo_integrate(rec, small, enc, work, "integrate", {}, full=True)
    # Short lifespans (engrams are promoted and die) and links that reach full weight at once
    # (with the default gain no associated engram outscores the hits it was reached from).
    locomo_integrate(rec, small, enc, work, "integrate-short",
                     {"short_term_lifespan": 96.0, "promote_after": 8.0,
                      "long_term_lifespan": 512.0, "link_gain": 1.0, "link_half_life": 4096.0},
                     full=False)
    locomo_vectors_only(rec, small, enc, work)
    times["locomo_integrate_vectors"] = time.perf_counter() - t0
    return {"cache_sha256": sha, "conversations": [c.sample_id for c in convs],
            "questions": sum(len(c.questions) for c in convs),
            "turns": sum(len(c.text) for c in convs)}


# ------------------------------------------------------------------------- synthetic 30k store
N_SYN, N_SESSIONS, ROLES = 30_000, 300, ("alice", "bob", "carol")


Synthetic = tuple[list[str], list[str], list[str], list[dict], list[str], np.random.Generator]


def synthetic() -> Synthetic:
    """Deterministic texts over a Zipf vocabulary (so BM25 has matches), with a few repeats."""
    rng = np.random.default_rng(20_250_101)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fi", "gu", "ha",
            "be", "xo", "wy", "qu", "ri", "mo"]
    vocab = sorted({"".join(rng.choice(syll, size=rng.integers(2, 5))) for _ in range(4000)})
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    p /= p.sum()
    perm = rng.permutation(len(vocab))
    texts, roles, sessions, metas = [], [], [], []
    for i in range(N_SYN):
        s = i // (N_SYN // N_SESSIONS)
        role = ROLES[int(rng.integers(0, 3))]
        if i > 100 and rng.random() < 0.01:
            text = texts[int(rng.integers(0, i))]  # a repeat: one content, two occurrences
        else:
            words = [vocab[perm[j]] for j in rng.choice(len(vocab), rng.integers(6, 19), p=p)]
            text = f"{role}: " + " ".join(words)
        texts.append(text)
        roles.append(role)
        sessions.append(f"s{s:03d}")
        day = 738_000 + s  # one session per day
        metas.append({"date": _iso(day), "n": i})
    return texts, roles, sessions, metas, vocab, rng


def _iso(ordinal: int) -> str:
    import datetime as dt

    return dt.date.fromordinal(ordinal).isoformat()


def synthetic_queries(texts: list[str], metas: list[dict], vocab: list[str],
                      rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for i in range(n):
        src = texts[int(rng.integers(0, len(texts)))]
        words = src.split(": ", 1)[1].split()
        pick = [words[j] for j in sorted(rng.choice(len(words), min(len(words),
                                                                     int(rng.integers(2, 6))),
                                                    replace=False))]
        pick += [vocab[int(rng.integers(0, len(vocab)))] for _ in range(int(rng.integers(0, 3)))]
        q = " ".join(pick)
        if i % 4 == 1:
            q = f"what did {ROLES[i % 3]} say about {q}"
        elif i % 4 == 2:
            q = f"{q} on {metas[int(rng.integers(0, len(metas)))]['date']}"
        out.append(q)
    return out


def part_synthetic(rec: Recorder, work: Path, times: dict[str, float]) -> dict:
    t0 = time.perf_counter()
    texts, roles, sessions, metas, vocab, rng = synthetic()
    enc = engramdb.encoders.HashingEncoder(dim=64)
    path = work / "synthetic-30k.engram"
    mem = engramdb.open(path, encoder=enc)
    block = 1000
    for b in range(0, N_SYN, block):
        kind = {3: "long_term", 7: "working"}.get((b // block) % 10, "short_term")
        mem.ingest_many(texts[b:b + block], roles=roles[b:b + block],
                        sessions=sessions[b:b + block], metadatas=metas[b:b + block],
                        kind=engramdb.Kind(kind))
    drain(mem)
    times["synthetic_build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    queries = synthetic_queries(texts, metas, vocab, rng, 500)
    vec_src = [int(rng.integers(0, N_SYN)) for _ in range(300)]
    noise = rng.standard_normal((300, 64)).astype(np.float32) * 0.05
    vectors = enc.encode([texts[j] for j in vec_src]) + noise

    def ask(tag: str, m: Any, n_q: int, n_v: int) -> None:
        for i, q in enumerate(queries[:n_q]):
            base = f"syn/{tag}/q{i}"
            for ctx in (True, False):
                rec.recall(f"{base}/ctx{int(ctx)}", m, q, top_k=10, context=ctx)
            if i % 2 == 0:
                rec.recall(f"{base}/role", m, q, top_k=10, where={"role": ROLES[i % 3]})
            if i % 5 == 0:
                rec.recall(f"{base}/session", m, q, top_k=10,
                           where={"session": sessions[(i * 97) % N_SYN]})
                rec.recall(f"{base}/kinds", m, q, top_k=10, kinds=["long_term", "working"])
            if i % 10 == 0:
                rec.recall(f"{base}/k50", m, q, top_k=50)
                rec.recall(f"{base}/k3/assoc0", m, q, top_k=3, associative=False)
        for i, v in enumerate(vectors[:n_v]):
            rec.recall(f"syn/{tag}/v{i}", m, vector=v, top_k=10)
            if i % 3 == 0:
                rec.recall(f"syn/{tag}/v{i}/role", m, vector=v, top_k=10,
                           where={"role": ROLES[i % 3]})
            if i % 10 == 0:
                rec.recall(f"syn/{tag}/v{i}/k100", m, vector=v, top_k=100)

    ask("fresh", mem, 500, 300)
    stats = mem.stats() if hasattr(mem, "stats") else {}
    mem.close()
    times["synthetic_fresh"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with engramdb.open(path, encoder=enc) as m:
        ask("reopened", m, 200, 100)
    # Search settings may change on open: a lower exact threshold sends role filters (a third
    # of the store) through the filtered graph walk instead of an exact scan.
    with engramdb.open(path, encoder=enc, index={"exact_threshold": 4000}) as m:
        ask("walk", m, 100, 60)
    times["synthetic_reopened"] = time.perf_counter() - t0
    return {"engrams": N_SYN, "count": stats.get("count"), "kinds": stats.get("kinds")}


# ------------------------------------------------------------------------------ dump, compare
def cmd_dump(args: argparse.Namespace) -> int:
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("*.engram"):
        shutil.rmtree(old)
    rec, times, meta = Recorder(), {}, {}
    t_all = time.perf_counter()
    if args.locomo.exists():
        cache = args.cache or work / "minilm_cache"
        meta["locomo"] = part_locomo(rec, args.locomo, work, cache, times)
    else:
        print(f"LoCoMo data not found at {args.locomo}; part (a) skipped", flush=True)
    n_locomo = len(rec.recalls)
    meta["synthetic"] = part_synthetic(rec, work, times)
    times["total"] = time.perf_counter() - t_all
    meta.update(engramdb=engramdb.__file__, python=sys.version.split()[0],
                cpus=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                seconds={k: round(v, 1) for k, v in times.items()},
                recalls={"locomo": n_locomo, "synthetic": len(rec.recalls) - n_locomo,
                         "total": len(rec.recalls)})
    args.out.write_text(json.dumps({"meta": meta, "checks": rec.checks, "recalls": rec.recalls},
                                   separators=(",", ":")))
    print(json.dumps(meta, indent=1))
    return 0


def _first_diff(a: Any, b: Any, where: str = "") -> str:
    """Where two JSON values first differ, with both sides."""
    if type(a) is not type(b):
        return f"{where}: {str(a)[:200]!s} != {str(b)[:200]!s}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k, "<missing>") != b.get(k, "<missing>"):
                return _first_diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{where}.{k}")
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} hits != {len(b)} hits; first: " + _first_diff(
                a[: min(len(a), len(b))] + ["<end>"], b[: min(len(a), len(b))] + ["<end>"], where)
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_diff(x, y, f"{where}[{i}]")
    return f"{where}: {str(a)[:200]} != {str(b)[:200]}"


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    ra, rb = a["recalls"], b["recalls"]
    common = [k for k in ra if k in rb]
    only_a, only_b = [k for k in ra if k not in rb], [k for k in rb if k not in ra]
    diffs = [k for k in common if ra[k] != rb[k]]
    check_diffs = [k for k in sorted(set(a["checks"]) | set(b["checks"]))
                   if a["checks"].get(k) != b["checks"].get(k)]
    print(f"A: {args.a} ({a['meta'].get('engramdb')})")
    print(f"B: {args.b} ({b['meta'].get('engramdb')})")
    print(f"compared {len(common)} recalls: {len(diffs)} differ; {len(only_a)} only in A, "
          f"{len(only_b)} only in B; checks differing: {check_diffs or 'none'}")
    for k in diffs[: args.show]:
        print(f"  DIFF {k}: {_first_diff(ra[k], rb[k])}")
    for k in only_a[: args.show]:
        print(f"  ONLY IN A {k}")
    for k in only_b[: args.show]:
        print(f"  ONLY IN B {k}")
    if diffs:
        groups: dict[str, int] = {}
        for k in diffs:
            g = "/".join(k.split("/")[:3])
            groups[g] = groups.get(g, 0) + 1
        print("  differences by group: " + ", ".join(f"{g} {n}" for g, n in groups.items()))
    return 1 if diffs or only_a or only_b or check_diffs else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="build stores, run recalls, write every result")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    d.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help="stores and the MiniLM vector cache (stores are rebuilt every run)")
    d.add_argument("--cache", type=Path, default=None,
                   help="MiniLM vector cache, CACHE.npy + CACHE.json (default WORK/minilm_cache); "
                   "built on first use: give both sides of a comparison the same one")
    d.add_argument("--no-pin", action="store_true",
                   help="do not pin to one CPU (multi-threaded HNSW builds are not reproducible)")
    c = sub.add_parser("compare", help="compare two dumps; exit 1 if any recall differs")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--show", type=int, default=5, help="differences to print")
    args = parser.parse_args()
    return cmd_dump(args) if args.cmd == "dump" else cmd_compare(args)


if __name__ == "__main__":
    sys.exit(main())
