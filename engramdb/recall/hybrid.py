"""Fusing dense and lexical rankings into one recall ranking.

On real conversations BM25 beats a small dense model and plain reciprocal rank fusion drags
the better ranking down (LoCoMo dev R@10: BM25 0.60, RRF 0.58); a z-scored linear fusion of the
two lifted it to 0.67 (benchmarks/locomo_lab.py). So each candidate's dense cosine and BM25 score
are standardised over the candidate pool (the union of both top lists) and mixed with
``lexical_weight``; the mix is squashed into (0, 1) with a logistic so that associative recall
can scale it by a link weight.

Conversations add evidence that a lone turn lacks (:func:`context_mix`, measured in
``benchmarks/locomo_lab.py`` and ``docs/quality.md``): an answer often completes the question
asked in the turn before it, so a turn's dense score is raised by its previous turn's, and
its lexical evidence counts the query terms that it and its previous turn hold; a question
about a topic usually matches the session where it was discussed, so each turn gets its
session's BM25 as a prior; the speaker a question names and the date it names are priors too.
Finally the best hits pass a share of their score to the turns right before and after them
(:func:`spread`).

A turn's lexical evidence is its *coverage* of the query (:func:`coverage`): the idf-weighted
share of the query's distinct terms it contains, added as is (a share in [0, 1], not
z-scored). On short turns BM25's term-frequency saturation and length norm mostly add noise:
a model fitted on LoCoMo with both put almost no weight on a turn's BM25 and a large one on
its coverage; with the defaults, leave-one-conversation-out R@1 rose by 6 points and R@5 by
2.4 (docs/quality.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engramdb.content import check_finite
from engramdb.errors import InvalidInput


def zscore(x: np.ndarray) -> np.ndarray:
    """Standardise; a constant vector maps to zeros.

    The same arithmetic as ``(x - x.mean()) / x.std()`` (one pairwise sum for the mean, one
    for the squared deviations), without numpy's per-call Python layers: recall calls this on
    a few hundred candidates, where those layers cost more than the sums.
    """
    n = x.size
    if n == 0:
        return np.zeros_like(x)
    dev = x - np.add.reduce(x) / n
    std = math.sqrt(np.add.reduce(dev * dev) / n)
    return np.zeros_like(x) if std == 0.0 else dev / std


def fuse(
    eids: np.ndarray, dense: np.ndarray, lexical: np.ndarray, lexical_weight: float
) -> np.ndarray:
    """Fused scores in (0, 1) for candidates with the given dense and lexical scores."""
    mixed = (1.0 - lexical_weight) * zscore(dense.astype(np.float64)) + lexical_weight * zscore(
        lexical.astype(np.float64)
    )
    return 1.0 / (1.0 + np.exp(-mixed))


def via(in_dense: bool, in_lexical: bool) -> str:
    """How a candidate was found: "vector", "lexical" or "hybrid" (in both top lists)."""
    if in_dense and in_lexical:
        return "hybrid"
    return "vector" if in_dense else "lexical"


@dataclass(frozen=True)
class ContextEvidence:
    """Per-candidate evidence for one query; every array has one entry per candidate.

    ``cos_prev`` is the cosine of the candidate's previous turn (its own cosine when it has
    none); ``bm25_prev`` and ``bm25_session`` are 0 where there is no previous turn or
    session; ``speaker`` is 1 where the candidate's speaker is named in the query; ``date`` is
    the date affinity of :func:`engramdb.derived.temporal.date_affinity`; ``coverage`` and
    ``coverage_prev`` are :func:`coverage` of the candidate alone and of the candidate with
    its previous turn (its own where it has none).
    """

    cos: np.ndarray
    cos_prev: np.ndarray
    bm25: np.ndarray
    bm25_prev: np.ndarray
    bm25_session: np.ndarray
    speaker: np.ndarray
    date: np.ndarray
    coverage: np.ndarray
    coverage_prev: np.ndarray


@dataclass(frozen=True)
class ContextWeights:
    """How much each kind of evidence counts (the recall settings of the same names)."""

    lexical_weight: float = 0.5
    turn_lexical: float = 0.0  # share of a turn's own BM25 in its lexical score
    context_lexical: float = 0.0  # share of the previous turn's BM25 in it
    session_prior: float = 1.0  # share of the session's BM25 in it
    context_dense: float = 0.5  # share of the previous turn's cosine in a turn's dense score
    speaker_prior: float = 0.75  # added where the turn's speaker is named in the query
    date_prior: float = 3.0  # times the date affinity
    coverage_prior: float = 1.0  # times the turn's coverage of the query ...
    coverage_context: float = 2.5  # ... plus this times the coverage with its previous turn


def context_mix(ev: ContextEvidence, w: ContextWeights) -> np.ndarray:
    """Unsquashed scores of the candidates: z-scored lexical (BM25) and dense evidence, each
    with its context, mixed by ``lexical_weight``; plus query coverage and the speaker and
    date priors."""
    # (In this order: with turn_lexical 1 and no coverage the arithmetic is, bit for bit,
    # that of the formula before coverage, which stores made then keep.)
    lex = (w.turn_lexical * np.asarray(ev.bm25, np.float64) + w.context_lexical * ev.bm25_prev
           + w.session_prior * ev.bm25_session)
    dense = np.asarray(ev.cos, np.float64) + w.context_dense * ev.cos_prev
    mixed = w.lexical_weight * zscore(lex) + (1.0 - w.lexical_weight) * zscore(dense)
    # (mixed is a new array: the priors are added in place, the same sums.)
    if w.coverage_prior:
        mixed += w.coverage_prior * (ev.coverage + w.coverage_context * ev.coverage_prev)
    if w.speaker_prior:
        mixed += w.speaker_prior * ev.speaker
    if w.date_prior:
        mixed += w.date_prior * ev.date
    return mixed


def coverage(term_idf: np.ndarray, posting_term: np.ndarray, posting_eid: np.ndarray,
             docs: np.ndarray, own_at: np.ndarray, prev_at: np.ndarray,
             ) -> tuple[np.ndarray, np.ndarray]:
    """How much of a query each candidate holds: ``(alone, with its previous turn)``.

    A candidate's coverage is the sum of the idf of the query's distinct terms it contains
    over the sum of all of them (terms no document holds are left out), so 1 means every
    term is there, weighted by how rare each is. ``term_idf`` has one entry per term;
    postings ``posting_term``/``posting_eid`` say which documents hold which term (each pair
    once). ``docs`` are the sorted eids of the candidates and of their previous turns;
    ``own_at`` gives each candidate's position in ``docs``, ``prev_at`` its previous turn's
    (-1: none).
    """
    n, n_terms = len(own_at), len(term_idf)
    total = float(term_idf.sum())
    if n == 0 or n_terms == 0 or total <= 0.0 or len(posting_eid) == 0:
        return np.zeros(n), np.zeros(n)
    # Which terms each document holds: a few hundred documents by a few terms, small enough
    # for a dense table (sorting (document, term) pairs instead cost 5x). Two spare rows:
    # postings of other documents land in the first, and "no previous turn" reads the
    # second, which stays empty (cheaper than filtering the postings and masking the rows).
    spill, empty = len(docs), len(docs) + 1
    at = docs.searchsorted(posting_eid)
    np.minimum(at, spill - 1, out=at)
    held = np.zeros((len(docs) + 2, n_terms), bool)
    held[np.where(docs[at] == posting_eid, at, spill), posting_term] = True
    own = held[own_at]
    both = own | held[np.where(prev_at >= 0, prev_at, empty)]
    return own @ term_idf / total, both @ term_idf / total


def spread(eids: np.ndarray, mixed: np.ndarray, seeds: np.ndarray, before: np.ndarray,
           after: np.ndarray, weight: float) -> dict[int, tuple[float, int]]:
    """Neighbour step: each seed passes ``weight`` times its score (measured from the lowest
    score of the pool) to the turns right before and after it.

    ``eids`` are the pool's candidates (ascending) and ``mixed`` their unsquashed scores;
    ``seeds`` are positions in them, best first; ``before``/``after`` give each seed's
    neighbours as eids (-1: none, or one that may not be returned). Returns
    ``{eid: (new unsquashed score, seed eid)}`` for every neighbour whose score rises; a
    neighbour outside the pool starts from the pool's lowest score. A neighbour of several
    seeds keeps the highest score passed to it, from the first seed that passed it.
    """
    if len(seeds) == 0:
        return {}
    floor = float(mixed.min())
    # Each seed's neighbours, before then after, and the score each of them has.
    nbs = np.empty(2 * len(seeds), np.int64)
    nbs[0::2] = before
    nbs[1::2] = after
    pos = eids.searchsorted(nbs)
    np.minimum(pos, len(eids) - 1, out=pos)
    own = np.where(eids[pos] == nbs, mixed[pos], floor).tolist()
    neighbours = nbs.tolist()
    out: dict[int, tuple[float, int]] = {}
    for j, (seed, score) in enumerate(zip(eids[seeds].tolist(), mixed[seeds].tolist(),
                                          strict=True)):
        passed = floor + weight * (score - floor)
        for k in (2 * j, 2 * j + 1):
            nb = neighbours[k]
            if nb < 0:
                continue
            best = out[nb][0] if nb in out else own[k]
            if passed > best:
                out[nb] = (passed, seed)
    return out


def squash(mixed: np.ndarray | float) -> np.ndarray | float:
    """Map unsquashed scores into (0, 1) with the logistic (monotone)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(mixed, np.float64)))


# ----------------------------------------------------------------------------- relevance
# A hit's ``score`` ranks it among one query's candidates (z-scores over the pool, then a
# logistic): it says nothing about whether the query is answered at all. ``relevance`` is an
# absolute figure in [0, 1] built only from a candidate's own evidence, so it can be compared
# across queries and stores and thresholded (``recall(..., min_score=)``; docs/recall.md,
# "Relevance"). The constants were chosen on LoCoMo (benchmarks/locomo_threshold.py,
# docs/quality.md), where the pooled AUC of evidence against the rest stays within 0.84-0.855
# over a wide range of them.
RELEVANCE_LEXICAL = 0.6  # share of the lexical part (query coverage) in relevance
RELEVANCE_CONTEXT = 0.75  # share of the coverage with the previous turn in the lexical part
COSINE_FLOOR = 0.2  # a cosine at or below this is no dense evidence ...
COSINE_CEILING = 0.8  # ... and one at or above this is full evidence
RELEVANCE_NEIGHBOUR = 0.5  # a turn lifted by the neighbour step keeps this share of its seed's


def held_share(term_idf: np.ndarray, counts: list[int], n_terms: int) -> float | None:
    """The share of a query's idf mass that the store holds at all: 1 when every distinct
    query term is in some live document, lower for each term none holds; None when the query
    has no index terms (nothing lexical to go on).

    ``term_idf``/``counts`` are the BM25 idf and document frequency of the ``n_terms`` query
    terms the store holds (:class:`engramdb.derived.lexical.LexicalMatch`). A term no
    document holds weighs what BM25 would give it, ``ln(1 + (N + 0.5) / 0.5)``; from any
    held term's ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))`` that is ``idf + ln(2 df + 1)``,
    so the store's size need not be read.
    """
    if n_terms <= 0:
        return None
    held = float(term_idf.sum())
    missing = n_terms - len(term_idf)
    if missing <= 0:
        return 1.0
    if len(term_idf) == 0 or held <= 0.0:
        return 0.0
    unseen = float(term_idf[0]) + math.log(2.0 * counts[0] + 1.0)
    return held / (held + missing * unseen)


def dense_relevance(cos: np.ndarray) -> np.ndarray:
    """The dense part of relevance: the cosine mapped linearly from [floor, ceiling] to
    [0, 1] and clipped."""
    return np.clip((np.asarray(cos, np.float64) - COSINE_FLOOR)
                   / (COSINE_CEILING - COSINE_FLOOR), 0.0, 1.0)


def relevance(cos: np.ndarray, cover: np.ndarray, cover_prev: np.ndarray,
              held: float | None) -> np.ndarray:
    """Absolute relevance in [0, 1] of candidates from their own evidence only.

    ``cos`` is each candidate's cosine with the query, ``cover``/``cover_prev`` its
    :func:`coverage` alone and with its previous turn, ``held`` the query's
    :func:`held_share` (None: the query has no index terms, so relevance is the dense part
    alone)::

        lexical   = held x ((1 - c) coverage + c coverage_with_previous_turn)
        dense     = clip((cos - floor) / (ceiling - floor), 0, 1)
        relevance = l x lexical + (1 - l) x dense
    """
    dense = dense_relevance(cos)
    if held is None:
        return dense
    lexical = held * ((1.0 - RELEVANCE_CONTEXT) * np.asarray(cover, np.float64)
                      + RELEVANCE_CONTEXT * np.asarray(cover_prev, np.float64))
    return np.clip(RELEVANCE_LEXICAL * lexical + (1.0 - RELEVANCE_LEXICAL) * dense, 0.0, 1.0)


def check_min_score(min_score: object) -> float | None:
    """Validate ``recall``'s and ``integrate``'s ``min_score``: None, or a finite number in
    [0, 1] (a bound on :attr:`engramdb.types.Recall.relevance`)."""
    if min_score is None:
        return None
    value = check_finite(min_score, "min_score")
    if not 0.0 <= value <= 1.0:
        raise InvalidInput(f"min_score must be in [0, 1] (a relevance), got {min_score!r}",
                           hint="pass None to keep every hit; docs/recall.md, \"Relevance\"")
    return value
