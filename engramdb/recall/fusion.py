"""BM25 fusion without conversation context, and the array helpers the fusions share.

A recall's result before hydration is ``found``: ``{eid: (score, via, path, score parts,
relevance)}`` (:data:`Found`; relevance: :func:`engramdb.recall.hybrid.relevance`).
:func:`fuse` builds it from the dense and the lexical top lists with
:func:`engramdb.recall.hybrid.fuse`; :mod:`engramdb.recall.fusion_context` does the same with
the turns' conversation around them.
"""

from __future__ import annotations

import numpy as np

from engramdb.derived.lexical import LexicalMatch
from engramdb.engine.parts import Parts
from engramdb.recall import hybrid

# One hit before hydration: (score, via, path of eids that led to it, score parts, relevance).
Hit = tuple[float, str, list[int], dict[str, float], float]
# ``{eid: hit}``: one recall's hits.
Found = dict[int, Hit]


def lexical_scores(found: LexicalMatch, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BM25 scores of every engram in ``mask`` among a query's matches (``found``, from
    :meth:`LexicalIndex.match`), sorted by eid."""
    eids, scores = found.eids, found.scores
    if len(eids) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    ascending = bool((eids[1:] > eids[:-1]).all())  # slots usually follow eids
    if int(eids[-1] if ascending else eids.max()) < len(mask):
        keep = mask[eids]
    else:
        keep = (eids < len(mask)) & mask[np.minimum(eids, len(mask) - 1)]
    eids, scores = eids[keep], scores[keep]
    if ascending:  # (and so is any subset)
        return eids, scores
    order = eids.argsort()
    return eids[order], scores[order]


def fuse(parts: Parts, q: np.ndarray, dense_eids: np.ndarray, dense_scores: np.ndarray,
         lex_eids: np.ndarray, lex_scores: np.ndarray, pool: int, weight: float,
         match: LexicalMatch, n_terms: int) -> Found:
    """Score the union of the dense and the top lexical candidates (:func:`hybrid.fuse`).

    ``match`` is the query's BM25 match (of its ``n_terms`` distinct terms), from which each
    candidate's query coverage is taken for its relevance (no previous turn here)."""
    top = lex_eids
    if len(top) > pool:
        top = lex_eids[np.argpartition(-lex_scores, pool - 1)[:pool]]
    in_dense = set(dense_eids.tolist())
    in_lex = set(top.tolist())
    cands = np.array(sorted(in_dense | in_lex), np.int64)
    cos = np.empty(len(cands), np.float64)
    known = {int(e): float(x) for e, x in zip(dense_eids, dense_scores)}
    missing = np.array([e for e in cands if int(e) not in known], np.int64)
    if len(missing):
        vecs = parts.fetch_vectors(missing)
        known.update({int(e): float(x) for e, x in zip(missing, vecs @ q)})
    cos[:] = [known[int(e)] for e in cands]
    pos = np.searchsorted(lex_eids, cands)
    hit = (pos < len(lex_eids)) & (lex_eids[np.minimum(pos, len(lex_eids) - 1)] == cands)
    bm25 = np.where(hit, lex_scores[np.minimum(pos, len(lex_eids) - 1)], 0.0)
    fused = hybrid.fuse(cands, cos, bm25, weight)
    relevance = plain_relevance(match, n_terms, cands, cos)
    return {
        int(e): (float(f), hybrid.via(int(e) in in_dense, int(e) in in_lex), [],
                 {"vector": float(c), "lexical": float(b), "fused": float(f)}, float(r))
        for e, c, b, f, r in zip(cands, cos, bm25, fused, relevance)
    }


def plain_relevance(match: LexicalMatch, n_terms: int, cands: np.ndarray,
                    cos: np.ndarray) -> np.ndarray:
    """:func:`hybrid.relevance` of candidates (sorted eids) with cosines ``cos``, taken
    without conversation context: each candidate's own query coverage stands for its
    coverage with a previous turn."""
    held = hybrid.held_share(match.term_idf, match.postings.counts, n_terms)
    if held is None or not len(cands):
        return hybrid.dense_relevance(cos)
    counts = match.postings.counts
    cover, _ = hybrid.coverage(match.term_idf, np.arange(len(counts)).repeat(counts),
                               match.posting_eids, cands, np.arange(len(cands)),
                               np.full(len(cands), -1))
    return hybrid.relevance(cos, cover, cover, held)


def best_first(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest ``scores``, best first, ties by position: the first
    ``k`` of ``(-scores).argsort(kind="stable")`` without sorting the rest."""
    neg = -scores
    if len(neg) <= 2 * k:
        return neg.argsort(kind="stable")[:k]
    kth = np.partition(neg, k - 1)[k - 1]
    near = (neg <= kth).nonzero()[0]  # ascending positions: a stable sort keeps ties in order
    if len(near) < k:  # NaN scores (never below kth): the full sort places them last
        return neg.argsort(kind="stable")[:k]
    return near[neg[near].argsort(kind="stable")[:k]]


def any_equal(values: np.ndarray, wanted: set[int]) -> np.ndarray:
    """``np.isin(values, list(wanted))`` for a handful of ints, without its setup."""
    it = iter(wanted)
    out = values == next(it)
    for w in it:
        out |= values == w
    return out


def union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted distinct int64 values of two arrays of non-negative ints (eids): ``np.union1d``
    without its layers."""
    both = np.concatenate([a, b]).astype(np.int64, copy=False)
    if len(both) < 2:
        return both
    top = int(both.max())
    if top < 8 * len(both):
        # Values dense in [0, top] (a small store): marking them beats sorting.
        seen = np.zeros(top + 1, bool)
        seen[both] = True
        return seen.nonzero()[0]
    both.sort()
    keep = np.empty(len(both), bool)
    keep[0] = True
    np.not_equal(both[1:], both[:-1], out=keep[1:])
    return both[keep]
