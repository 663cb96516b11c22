"""``Recall.relevance``: an absolute score in [0, 1] that can be thresholded (``min_score``).

``score`` ranks a hit among one recall's candidates; ``relevance`` comes from the hit's own
evidence (its cosine, the share of the query's words it holds), so a query about something
never said scores low everywhere (docs/recall.md, "Relevance").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.errors import InvalidInput
from engramdb.recall import hybrid

TURNS = [
    ("alice", "s1", "I adopted a guinea pig named Oscar last spring."),
    ("bob", "s1", "What does Oscar like to eat?"),
    ("alice", "s1", "Mostly carrots and fresh hay, he is very picky."),
    ("bob", "s1", "Did you take him to the vet yet?"),
    ("alice", "s2", "The weather in Lyon was rainy all week."),
    ("bob", "s2", "We went hiking in the Alps last summer."),
    ("alice", "s2", "My sister works as a nurse in Berlin."),
    ("bob", "s3", "I finally finished painting the kitchen walls blue."),
    ("alice", "s3", "The concert downtown was loud but fun."),
    ("bob", "s3", "Our book club is reading a mystery novel this month."),
]
QUERIES = ["guinea pig Oscar", "what does my pet eat?", "weather in Lyon", "kitchen paint",
           "Berlin nurse sister", "something entirely unrelated"]
NEVER_SAID = "quantum chromodynamics xylophone zeppelin"


@pytest.fixture
def mem(tmp_path: Path):
    with engramdb.open(tmp_path / "m", encoder=HashingEncoder(dim=256)) as store:
        store.ingest_many([t for _, _, t in TURNS], roles=[r for r, _, _ in TURNS],
                          sessions=[s for _, s, _ in TURNS])
        yield store


def _all_modes(mem, query: str, **kw):
    """The hits of every recall path: context fusion, plain fusion, dense only."""
    yield mem.recall(query, top_k=10, **kw)
    yield mem.recall(query, top_k=10, context=False, **kw)
    yield mem.recall(vector=mem.encoder.encode([query])[0], top_k=10, **kw)


def test_relevance_is_in_unit_interval(mem) -> None:
    for q in QUERIES + [NEVER_SAID]:
        for hits in _all_modes(mem, q):
            assert hits
            for h in hits:
                assert isinstance(h.relevance, float) and 0.0 <= h.relevance <= 1.0, (q, h)


def test_never_said_scores_low_and_min_score_drops_everything(mem) -> None:
    for hits in _all_modes(mem, NEVER_SAID):
        assert max(h.relevance for h in hits) < 0.1
        # The rank score says nothing of this: the best candidate still scores high.
    assert mem.recall(NEVER_SAID, top_k=10)[0].score > 0.5
    assert mem.recall(NEVER_SAID, top_k=10, min_score=0.2) == []
    assert mem.recall(NEVER_SAID, top_k=10, context=False, min_score=0.2) == []
    turn = mem.integrate(NEVER_SAID, min_score=0.2)
    assert turn.recalled == []


def test_an_exact_repeat_scores_high(mem) -> None:
    for _, _, text in TURNS:
        for hits in _all_modes(mem, text):
            top = hits[0]
            assert top.text == text and top.relevance > 0.9, (text, top)
    # Half the words of a turn: in between.
    half = mem.recall("guinea pig", top_k=1)[0]
    assert half.text.startswith("I adopted") and 0.3 < half.relevance < 1.0


def test_min_score_filters_after_ranking(mem) -> None:
    for q in QUERIES:
        for ctx in (None, False):
            every = mem.recall(q, top_k=6, context=ctx)
            for m in (0.0, 0.1, 0.3, 0.5, 1.0):
                kept = mem.recall(q, top_k=6, context=ctx, min_score=m)
                expected = [h for h in every if h.relevance >= m]
                assert [(h.id, h.score, h.relevance) for h in kept] == [
                    (h.id, h.score, h.relevance) for h in expected]
    assert len(mem.recall("guinea pig Oscar", top_k=2, min_score=0)) == 2  # top_k still caps


def test_integrate_keeps_only_relevant_hits(mem) -> None:
    turn = mem.integrate("Oscar the guinea pig loves carrots", top_k=5, min_score=0.3)
    assert turn.recalled and all(h.relevance >= 0.3 for h in turn.recalled)
    assert all(h.text in turn.prompt for h in turn.recalled)


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf, -math.inf, "0.5", True,
                                 [0.5]])
def test_bad_min_score_raises(mem, bad) -> None:
    with pytest.raises(InvalidInput, match="min_score"):
        mem.recall("guinea pig", min_score=bad)
    with pytest.raises(InvalidInput, match="min_score"):
        mem.integrate("guinea pig", min_score=bad)
    assert len(mem) == len(TURNS)  # integrate wrote nothing


def test_ranking_is_unchanged(mem) -> None:
    """The feature only adds a field: ``score`` and the order are the fused rank's, and a
    threshold that keeps everything returns the very same hits."""
    for q in QUERIES:
        for ctx in (None, False):
            hits = mem.recall(q, top_k=10, context=ctx)
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True)
            if hits[0].via != "vector":  # (a dense-only ranking reports the cosine)
                assert all(h.score == h.scores["fused"] for h in hits)
            again = mem.recall(q, top_k=10, context=ctx, min_score=0.0)
            assert [(h.id, h.score) for h in again] == [(h.id, h.score) for h in hits]


def test_context_and_association_hits_have_relevance(mem) -> None:
    hits = mem.recall("What does Oscar like to eat?", top_k=10)
    by_id = {h.id: h for h in hits}
    lifted = [h for h in hits if h.via == "context" and len(h.path) == 2]
    assert lifted
    checked = 0
    for h in lifted:  # at least the neighbour's share of the seed's own relevance
        seed = by_id[h.path[0]]
        if seed.via != "context":  # (a lifted seed shows what it inherited, not its own)
            assert h.relevance >= hybrid.RELEVANCE_NEIGHBOUR * seed.relevance - 1e-12
            checked += 1
    assert checked
    # A link: the turn reached over it inherits its seed's relevance times the link weight.
    a = mem.recall("guinea pig Oscar", top_k=1)[0].id
    c = mem.recall("book club mystery novel", top_k=1)[0].id
    for _ in range(3):
        mem.reinforce([a, c])
    hits = mem.recall(vector=mem.encoder.encode(["guinea pig Oscar adopted"])[0], top_k=10)
    reached = [h for h in hits if h.via == "association"]
    assert [h.id for h in reached] == [c]
    seed = next(h for h in hits if h.id == a)
    weight = reached[0].scores["link"]
    assert reached[0].relevance == pytest.approx(max(seed.relevance * weight, 0.0))
    assert 0.0 < reached[0].relevance <= seed.relevance


def test_to_dict_includes_relevance(mem) -> None:
    hit = mem.recall("guinea pig Oscar", top_k=1)[0]
    d = hit.to_dict()
    assert d["relevance"] == hit.relevance
    json.dumps(d, allow_nan=False)


def test_held_share_counts_terms_the_store_lacks() -> None:
    idf = np.array([2.0, 3.0])
    assert hybrid.held_share(idf, [5, 2], 2) == 1.0
    assert hybrid.held_share(np.zeros(0), [], 0) is None
    assert hybrid.held_share(np.zeros(0), [], 3) == 0.0
    # One missing term weighs what BM25 gives a term no document holds:
    # idf + ln(2 df + 1) from any held term, the same from either.
    n, df = 100.0, 5
    idf0 = math.log1p((n - df + 0.5) / (df + 0.5))
    unseen = math.log1p((n + 0.5) / 0.5)
    assert hybrid.held_share(np.array([idf0]), [df], 2) == pytest.approx(idf0 / (idf0 + unseen))
