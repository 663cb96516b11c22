"""Dense search: a query's top ``k`` engrams by cosine, from the vector index or one exact scan.

Whichever path finds the candidates, their final scores are recomputed row by row from the
stored vectors (:func:`exact_scores`), so the same query on the same store gives the same bits
however the candidates were found. Every function reads the store's parts at call time (the
engine replaces the index on ``rebuild``).
"""

from __future__ import annotations

import numpy as np

from engramdb.engine.parts import Parts

# A few ids (the turn itself) may be masked without being a filter: ask the index for this
# many more than ``k``.
_SPARE = 2


def dense_search(parts: Parts, q: np.ndarray, k: int, mask: np.ndarray, filtered: bool,
                 now: int, *, ranked: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` (eids, cosines) among ``mask``: the vector index, or an exact scan.

    ``filtered`` says the mask excludes more than expiry and a handful of ids, so the index
    must search inside it. Best first (ties: the smaller eid), or in no particular order
    unless ``ranked``.
    """
    sync_index_deaths(parts, now)
    if scan_is_cheaper(parts):
        labels, _ = exact_search(parts, q, k, mask, ranked=False)
    else:
        labels = index_candidates(parts, q, k, mask, filtered)
    # Final scores are computed row by row from the stored vectors, so a hit scores the
    # same bits whichever path found it (graph, exact scan, backlog) and however many rows
    # a product covered: the same query on the same store gives the same answer.
    scores = exact_scores(parts, labels, q)
    if not ranked and len(labels) <= k:  # already the top k
        return labels, scores
    order = np.lexsort((labels, -scores))[:k]
    return labels[order], scores[order]


def index_candidates(parts: Parts, q: np.ndarray, k: int, mask: np.ndarray,
                     filtered: bool) -> np.ndarray:
    """The vector index's best ``mask`` labels, plus the backlog's best (a few more than
    ``k``, unordered: the caller scores them)."""
    index = parts.index
    assert index is not None
    indexer = parts.indexer
    # Acknowledged rows the background indexer has not inserted yet are scanned exactly.
    # The snapshot comes first: a row leaving the backlog meanwhile is in the graph.
    pend_e, pend_v = (indexer.snapshot() if indexer is not None
                      else (np.zeros(0, np.int64), None))
    allowed = np.nonzero(mask)[0] if filtered else None
    labels, _, _ = index.search(q, k + _SPARE, fetch=parts.fetch_vectors, allowed=allowed)
    keep = (labels < len(mask)) & mask[np.minimum(labels, len(mask) - 1)]
    labels = labels[keep]
    if len(pend_e):
        ok = (pend_e < len(mask)) & mask[np.minimum(pend_e, len(mask) - 1)]
        if ok.any():
            pe = pend_e[ok]
            ps = pend_v[ok] @ q
            if len(pe) > k + _SPARE:
                pe = pe[np.argpartition(-ps, k + _SPARE - 1)[:k + _SPARE]]
            labels = np.union1d(labels, pe)
    return labels


def scan_is_cheaper(parts: Parts) -> bool:
    """Whether a scan of the segments beats asking the vector index (or there is none).

    Below its ``exact_threshold`` the index answers by an exact scan too, but of rows it
    gathers one by one through the store; reading the segments' rows in order is several
    times cheaper (a 420-turn conversation: 62 us against 420 us for a hybrid recall's
    100 candidates). Counted in stored rows, dead ones included, since the scan reads them.
    """
    index = parts.index
    if index is None:
        return True
    limit = index.config.exact_threshold
    return len(index) <= limit and sum(parts.segments.committed.values()) <= limit


def exact_scores(parts: Parts, eids: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Cosine of each stored vector with the unit query ``q``, one row at a time."""
    if len(eids) == 0:
        return np.zeros(0, np.float32)
    vecs = np.asarray(parts.fetch_vectors(eids), np.float32)
    q32 = np.asarray(q, np.float32)
    # The gathered rows are ours: multiply them in place (the same products, one array
    # fewer to allocate and to pull through the cache).
    prod = (np.multiply(vecs, q32, out=vecs) if vecs.flags.owndata and vecs.flags.writeable
            else vecs * q32)
    return prod.sum(axis=1, dtype=np.float32)


def sync_index_deaths(parts: Parts, now: int) -> None:
    """Mark engrams whose lifespan ran out as deleted in the index (O(1) unless one did)."""
    dead = parts.hot.deaths_due(now)  # also moves the visibility mask's next recompute
    index = parts.index
    if dead is not None and len(dead) and index is not None:
        indexer = parts.indexer
        if indexer is not None:
            indexer.discard(dead)
        index.mark_deleted(dead)


def exact_search(parts: Parts, q: np.ndarray, k: int, mask: np.ndarray, *,
                 ranked: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Score every ``mask`` engram exactly against ``q``; return the top k (eids, scores),
    best first (ties: the smaller eid), or in no particular order unless ``ranked``."""
    best_e: list[np.ndarray] = []
    best_s: list[np.ndarray] = []
    hot = parts.hot
    for seg, mm in parts.segments.iter_segments():
        row_eid = hot.row_eid.get(seg)
        if row_eid is None:
            continue
        found = _segment_best(mm, row_eid, q, k, mask)
        if found is not None:
            best_e.append(found[0])
            best_s.append(found[1])
    if not best_e:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    all_e, all_s = np.concatenate(best_e), np.concatenate(best_s)
    if not ranked and len(all_e) <= k:  # (one segment, no tie at the k-th score)
        return all_e, all_s
    order = np.lexsort((all_e, -all_s))[:k]  # score desc, then eid: deterministic ties
    return all_e[order], all_s[order]


def _segment_best(mm: np.ndarray, row_eid: np.ndarray, q: np.ndarray, k: int,
                  mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """One segment's best ``k`` ``mask`` rows (and every row tied with the k-th), as
    (eids, scores) in row order; None when no row of it is in ``mask``."""
    n = min(len(mm), len(row_eid))
    # A copy: forget() clears rows of this array in place (-1) while we score.
    eids = row_eid[:n].copy()
    # An eid past the mask is a row a concurrent write committed after the caller
    # took its mask: not visible to this search.
    ok = (eids >= 0) & (eids < len(mask))
    ok[ok] = mask[eids[ok]]
    rows = np.nonzero(ok)[0]
    if len(rows) == 0:
        return None
    if len(rows) == n:
        scores = np.asarray(mm[:n], np.float32) @ q
    else:
        scores = np.asarray(mm[rows], np.float32) @ q
    if len(scores) > k:
        # Every row tied with the k-th best stays, so that ties are broken by eid
        # below rather than by where argpartition happened to cut.
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        top = (scores >= kth).nonzero()[0]
    else:
        top = np.arange(len(scores))
    return eids[rows[top]], scores[top]
