"""Query coverage in hybrid recall: how much of the query a turn (and its previous turn) holds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import engramdb
from engramdb.recall import hybrid
from engramdb.settings import Settings


@st.composite
def _query_case(draw: st.DrawFn) -> tuple:
    n_terms = draw(st.integers(1, 5))
    n_docs = draw(st.integers(1, 12))
    holds = [draw(st.sets(st.integers(0, n_terms - 1), max_size=n_terms)) for _ in range(n_docs)]
    idf = np.array([draw(st.floats(0.01, 8.0)) for _ in range(n_terms)])
    cands = np.array(sorted(draw(st.sets(st.integers(0, n_docs - 1), min_size=1))), np.int64)
    prev = np.array([draw(st.integers(-1, n_docs - 1)) for _ in cands], np.int64)
    return holds, idf, cands, prev


@settings(max_examples=200, deadline=None)
@given(_query_case())
def test_coverage_is_the_idf_share_of_the_query_a_turn_holds(case: tuple) -> None:
    holds, idf, cands, prev = case
    pairs = [(t, d) for d, terms in enumerate(holds) for t in sorted(terms)]
    posting_term = np.array([t for t, _ in pairs], np.int64)
    posting_eid = np.array([d for _, d in pairs], np.int64)
    docs = np.union1d(cands, prev[prev >= 0])
    alone, with_prev = hybrid.coverage(idf, posting_term, posting_eid, docs,
                                       docs.searchsorted(cands),
                                       np.where(prev >= 0, docs.searchsorted(prev), -1))
    total = idf.sum()
    for i, (c, p) in enumerate(zip(cands.tolist(), prev.tolist(), strict=True)):
        own = holds[c]
        both = own | (holds[p] if p >= 0 else set())
        assert math.isclose(alone[i], sum(idf[t] for t in own) / total, abs_tol=1e-12)
        assert math.isclose(with_prev[i], sum(idf[t] for t in both) / total, abs_tol=1e-12)


def test_a_turn_holding_the_whole_question_outranks_one_repeating_a_word(mem) -> None:
    """BM25 rewards a turn that says one rare query word many times; coverage prefers the
    turn that holds every word of the question."""
    mem.ingest_many([f"Filler remark {i} about weather, trains and soup." for i in range(30)],
                    roles=["bob"] * 30, sessions=["s0"] * 30)
    whole = mem.ingest("We flew the red kite at the harbour festival.", role="ann",
                       session="s1").id
    mem.ingest("Kite. Kite kite, kite kite kite!", role="ann", session="s2")
    top = mem.recall("red kite harbour festival", top_k=1, associative=False)[0]
    assert top.id == whole
    assert top.scores["coverage"] == 1.0 and top.scores["context_coverage"] == 1.0


def test_settings_from_before_coverage_keep_their_ranking(tmp_path: Path, encoder) -> None:
    """A store created before coverage existed recorded every recall weight but these: it is
    opened with the formula it was made with (a turn's BM25 in full, no coverage)."""
    old = {k: v for k, v in Settings().to_dict().items()
           if k not in ("turn_lexical", "coverage_prior", "coverage_context")}
    old.update(context_lexical=0.5, speaker_prior=0.5)
    legacy = Settings.from_stored(old)
    assert (legacy.turn_lexical, legacy.coverage_prior, legacy.coverage_context) == (1, 0, 0)
    # Older still (before the context weights): the weights of that time, too.
    older = Settings.from_stored({"lexical_weight": 0.4, "hybrid_pool": 100})
    assert (older.context_lexical, older.speaker_prior, older.coverage_prior) == (0.5, 0.5, 0)
    # A record that names any coverage setting is today's; a caller's dict is never migrated.
    assert Settings.from_stored({**old, "coverage_context": 1.0}).coverage_prior == 1.0
    fresh = Settings.from_dict(old)
    assert (fresh.turn_lexical, fresh.coverage_prior) == (0.0, 1.0)

    path = tmp_path / "old.engram"
    with engramdb.open(path, encoder=encoder) as mem:
        mem.ingest_many(["the red kite", "a kite festival", "soup again"], sessions=["s"] * 3)
    manifest = json.loads((path / "MANIFEST.json").read_text())
    manifest["settings"] = old
    (path / "MANIFEST.json").write_text(json.dumps(manifest))
    explicit = Settings(**{**old, "turn_lexical": 1.0, "coverage_prior": 0.0,
                           "coverage_context": 0.0})
    with engramdb.open(path, encoder=encoder) as mem:
        assert mem.settings == explicit
        hits = mem.recall("red kite festival", top_k=3, associative=False)
        assert all(h.scores["coverage"] == 0.0 for h in hits)  # not computed: weight 0


def test_legacy_weights_reproduce_the_formula_before_coverage() -> None:
    """With turn_lexical 1 and no coverage, context_mix is the earlier formula, bit for bit."""
    rng = np.random.default_rng(5)
    n = 40
    ev = hybrid.ContextEvidence(
        cos=rng.random(n), cos_prev=rng.random(n), bm25=rng.random(n) * 9,
        bm25_prev=rng.random(n) * 9, bm25_session=rng.random(n) * 20,
        speaker=(rng.random(n) > 0.5).astype(float), date=rng.random(n),
        coverage=rng.random(n), coverage_prev=rng.random(n))
    w = hybrid.ContextWeights(turn_lexical=1.0, context_lexical=0.5, speaker_prior=0.5,
                              coverage_prior=0.0, coverage_context=0.0)
    lex = ev.bm25 + 0.5 * ev.bm25_prev + 1.0 * ev.bm25_session
    dense = ev.cos + 0.5 * ev.cos_prev
    before = 0.5 * hybrid.zscore(lex) + 0.5 * hybrid.zscore(dense)
    before = before + 0.5 * ev.speaker + 3.0 * ev.date
    np.testing.assert_array_equal(hybrid.context_mix(ev, w), before)


def test_without_sessions_a_turns_bm25_takes_the_sessions_place(mem) -> None:
    """Notes said outside any session have no session BM25: their own BM25 stands in, so
    a lexical-only mix still ranks by it (it used to score every candidate alike)."""
    mem.ingest_many([f"Plain note {i} about weather, trains and soup." for i in range(30)])
    mem.ingest("The red kite flew over the harbour.")
    mem.ingest("Kites and more kites: kite kite kite.")
    mem.settings.lexical_weight = 1.0
    mem.settings.coverage_prior = 0.0
    hits = mem.recall("red kite", top_k=5, associative=False)
    assert all(h.scores["session"] == 0.0 for h in hits)
    assert len({round(h.score, 9) for h in hits}) > 1
    assert hits[0].scores["lexical"] == max(h.scores["lexical"] for h in hits)
