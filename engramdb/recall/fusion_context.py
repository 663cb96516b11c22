"""Hybrid recall with conversation context: candidates, evidence, the mix, the neighbour step.

:func:`fuse_context` scores a text query's candidates with :func:`hybrid.context_mix` and then
lets the best pass a share of their score to the turns around them (:func:`hybrid.spread`).
It reads memory only (the BM25 index, the conversation context, the stored vectors): no
catalog query. The stages, in order:

1. the lexical top list (:func:`_lexical_top`): the query's BM25 matches among the visible
   engrams and the best ``pool`` of those that may be returned;
2. the candidates (:func:`_candidates`): the dense and lexical top lists plus the turns right
   after them (an answer follows its question), and each one's previous turn;
3. their dense evidence (:func:`_dense_evidence`): cosines of the candidates and their
   previous turns;
4. the rest of the evidence (:func:`_evidence`, :func:`_priors`): session BM25, the speaker
   and the date the query names, query coverage, the turns' own BM25;
5. the mix, then the neighbour step (:func:`_neighbour_lift`);
6. the hits (:func:`_hits`): the best ``top_k`` and the lifted turns, with their score parts
   and their relevance (:func:`hybrid.relevance`, from the same cosines and coverage).

Everything is computed on sorted eid arrays of the few hundred candidates (no per-candidate
Python, no array the size of the store); the query's terms are looked up once, for the
turns' BM25 and the sessions' alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engramdb.derived.context import TurnContext
from engramdb.derived.lexical import LexicalIndex, LexicalMatch
from engramdb.derived.temporal import date_affinity, query_dates
from engramdb.engine.parts import Parts
from engramdb.recall import hybrid
from engramdb.recall.fusion import Found, any_equal, best_first, lexical_scores, union
from engramdb.settings import Settings

_NO_SCORE = np.zeros(1, np.float64)
# How a context candidate was found, by (in the dense top list, in the lexical top list).
_VIA = {(d, lx): hybrid.via(d, lx) if d or lx else "context"
        for d in (False, True) for lx in (False, True)}


@dataclass
class _Query:
    """One context recall's query: which engrams it may return, and its BM25 matches among
    the visible engrams (``lex_eids`` sorted, ``in_top`` marking the lexical top list)."""

    mask: np.ndarray
    visible: np.ndarray
    exclude: int | None
    terms: list[str]
    found: LexicalMatch
    posting_term: np.ndarray  # the query term of each posting (postings run term by term)
    lex_eids: np.ndarray
    lex_scores: np.ndarray
    in_top: np.ndarray

    def allowed(self, x: np.ndarray) -> np.ndarray:
        """Which of ``x`` (eids of visible engrams, or -1) may be returned."""
        mask = self.mask
        n_mask = len(mask)
        # No filter: any visible engram may be returned (the lexical matches all may be).
        if mask is self.visible and self.exclude is None:
            return x >= 0
        if n_mask == len(self.visible) and n_mask:
            ok = mask[x]  # -1 reads the last entry: cleared below
            ok &= x >= 0
        else:
            ok = (x >= 0) & (x < n_mask)
            ok[ok] = mask[x[ok]]
        if self.exclude is not None:
            ok &= x != self.exclude
        return ok

    def lexical(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BM25 of each of ``x`` (eids, or -1), as float64 (0: no match), and whether it is
        in the lexical top list."""
        lex_eids = self.lex_eids
        if not len(lex_eids):
            return np.zeros(len(x), np.float64), np.zeros(len(x), bool)
        pos = lex_eids.searchsorted(x)
        np.minimum(pos, len(lex_eids) - 1, out=pos)
        matched = lex_eids[pos] == x
        return (np.where(matched, self.lex_scores[pos], 0.0).astype(np.float64),
                matched & self.in_top[pos])


@dataclass
class _Pool:
    """The candidates (sorted eids), their previous turns (-1: none) and their cosines.

    ``need`` holds the candidates and their previous turns (sorted), ``at_c``/``at_p`` their
    positions in it; ``known`` marks those the dense search scored.
    """

    cands: np.ndarray
    prev: np.ndarray
    has_prev: np.ndarray
    known: np.ndarray
    at_c: np.ndarray
    cos: np.ndarray
    cos_prev: np.ndarray
    need: np.ndarray
    at_p: np.ndarray
    inside: np.ndarray | None  # which candidates the context arrays cover (None: all)

    def per_candidate(self, column: np.ndarray) -> np.ndarray:
        """``column[eid]`` of each candidate; -1 past the context arrays."""
        inside = self.inside
        values = column[self.cands if inside is None else np.where(inside, self.cands, 0)]
        return values if inside is None else np.where(inside, values, -1)


def fuse_context(parts: Parts, q: np.ndarray, text: str, dense_eids: np.ndarray,
                 dense_scores: np.ndarray, pool: int, weight: float, mask: np.ndarray,
                 visible: np.ndarray, exclude: int | None, top_k: int) -> Found:
    """Hybrid scores with conversation context (:func:`hybrid.context_mix`), then the
    neighbour step (:func:`hybrid.spread`).

    Only ``mask`` engrams are returned; any ``visible`` one may lend context. Returns the
    best ``top_k`` candidates (no lower one can reach the top k later: association only adds
    scores below its seeds') and the lifted turns.
    """
    s = parts.settings
    ctx = parts.context
    lex = parts.lexical
    query = _lexical_top(lex, text, mask, visible, exclude, pool)
    cands, prev = _candidates(ctx, query, dense_eids)
    if len(cands) == 0:
        return {}
    cp = _dense_evidence(parts, q, cands, prev, dense_eids, dense_scores, ctx.capacity)
    ev, weights, relevance = _evidence(s, ctx, lex, text, query, cp, weight)
    mixed = hybrid.context_mix(ev, weights)
    best = best_first(mixed, max(top_k, s.neighbour_seeds))
    lifted = _neighbour_lift(s, ctx, query, cp, mixed, best)
    return _hits(query, cp, ev, mixed, best, lifted, relevance)


def _lexical_top(lex: LexicalIndex, text: str, mask: np.ndarray, visible: np.ndarray,
                 exclude: int | None, pool: int) -> _Query:
    """The query's BM25 matches among ``visible`` and its lexical top list: the best
    ``pool`` of them that may be returned."""
    terms = lex.tokenizer(text)
    found = lex.match(terms)
    postings = found.postings
    lex_eids, lex_scores = lexical_scores(found, visible)
    query = _Query(mask=mask, visible=visible, exclude=exclude, terms=terms, found=found,
                   posting_term=np.arange(len(postings.counts)).repeat(postings.counts),
                   lex_eids=lex_eids, lex_scores=lex_scores, in_top=np.zeros(0, bool))
    in_top = query.allowed(lex_eids)
    top_at = in_top.nonzero()[0]
    if len(top_at) > pool:
        top_at = top_at[np.argpartition(-lex_scores[top_at], pool - 1)[:pool]]
        in_top = np.zeros(len(lex_eids), bool)
        in_top[top_at] = True
    query.in_top = in_top
    return query


def _candidates(ctx: TurnContext, query: _Query, dense_eids: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
    """The candidates (sorted eids): the dense and lexical top lists and the turns right
    after them that may be returned; and each one's previous visible turn (-1: none)."""
    visible = query.visible
    base = union(dense_eids, query.lex_eids[query.in_top])
    after = ctx.neighbour(base, visible, ctx.next, ascending=True)
    cands = union(base, after[query.allowed(after)])
    if len(cands) == 0:
        return cands, cands
    return cands, ctx.neighbour(cands, visible, ctx.prev, ascending=True)


def _dense_evidence(parts: Parts, q: np.ndarray, cands: np.ndarray, prev: np.ndarray,
                    dense_eids: np.ndarray, dense_scores: np.ndarray, capacity: int) -> _Pool:
    """Cosines of the candidates and of their previous turns (vectors read from the memmap
    for those the dense search did not score)."""
    has_prev = prev >= 0
    need = union(cands, prev[has_prev])
    cos_need = np.zeros(len(need), np.float64)
    known = np.zeros(len(need), bool)  # scored by the dense search (all are in need)
    at_d = need.searchsorted(dense_eids)
    known[at_d] = True
    cos_need[at_d] = dense_scores
    if len(at_d) < len(need):
        missing = ~known
        cos_need[missing] = parts.fetch_vectors(need[missing]) @ q
    at_c = need.searchsorted(cands)
    at_p = need.searchsorted(prev)
    np.minimum(at_p, len(need) - 1, out=at_p)
    cos = cos_need[at_c]
    return _Pool(cands=cands, prev=prev, has_prev=has_prev, known=known, at_c=at_c, cos=cos,
                 cos_prev=np.where(has_prev, cos_need[at_p], cos), need=need, at_p=at_p,
                 inside=None if int(cands[-1]) < capacity else cands < capacity)


def _priors(s: Settings, ctx: TurnContext, lex: LexicalIndex, text: str, query: _Query,
            cp: _Pool) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Each candidate's session BM25, whether the query names its speaker, its date
    affinity; and the speaker and date priors' weights (0: no evidence for this query)."""
    zeros = np.zeros(len(cp.cands), np.float64)
    session = speaker = date = zeros
    # A prior with no evidence for this query adds nothing: leave its term out of the mix.
    speaker_prior = date_prior = 0.0
    if s.session_prior:
        sess = cp.per_candidate(ctx.session)
        if sess.max() >= 0:  # some candidate was said in a session
            found = query.found
            by_code = ctx.session_scores(found.posting_eids, found.postings.tfs,
                                         found.postings.counts, query.visible, lex.k1, lex.b,
                                         term=query.posting_term)
            # No session (-1) and a code added since read the 0 appended.
            session = np.concatenate((by_code, _NO_SCORE))[np.minimum(sess, len(by_code))]
    if s.speaker_prior:
        named = ctx.named_roles(query.terms)
        if named:
            speaker = any_equal(cp.per_candidate(ctx.role), named).astype(np.float64)
            speaker_prior = s.speaker_prior
    if s.date_prior and s.date_key:
        asked = query_dates(text)
        if asked:
            date = date_affinity(cp.per_candidate(ctx.day), asked)
            date_prior = s.date_prior
    return session, speaker, date, speaker_prior, date_prior


def _coverage_terms(s: Settings, ctx: TurnContext, lex: LexicalIndex, query: _Query,
                    cp: _Pool) -> tuple[np.ndarray, list[int], np.ndarray, np.ndarray]:
    """The query terms' idf, document frequencies and postings (term, eid) that query
    coverage counts: the BM25 postings, plus, with ``role_lexical``, each query term that
    is a word of a role label as held by the candidates and previous turns said in that
    role (as if every turn began with its speaker's name). Such a term's document frequency
    counts the turns whose text holds it or that were said in the role (each once), its
    idf is BM25's over that count."""
    found = query.found
    term_idf, counts = found.term_idf, found.postings.counts
    posting_term, posting_eids = query.posting_term, found.posting_eids
    words = ctx.role_words
    named = [t for t in dict.fromkeys(query.terms) if t in words] if s.role_lexical else []
    roles = [(t, c) for t, c in ((t, ctx.role_codes(t)) for t in named) if c]
    if not roles:
        return term_idf, counts, posting_term, posting_eids
    terms = list(found.postings.terms)
    idf, dfs = term_idf.tolist(), list(counts)
    starts = np.concatenate(([0], np.cumsum(counts))).tolist()
    extra_term: list[np.ndarray] = []
    extra_eid: list[np.ndarray] = []
    n = len(lex)
    for term, codes in roles:
        said = int(sum(int(ctx.role_turns[c]) for c in codes))
        if term in terms:  # its text holders said in the role are counted once
            k = terms.index(term)
            text_holders = posting_eids[starts[k]:starts[k + 1]]
            dfs[k] += said - int(np.count_nonzero(ctx.said_in(text_holders, codes)))
        else:
            k = len(dfs)
            terms.append(term)
            dfs.append(said)
            idf.append(0.0)
        df = min(dfs[k], n)
        idf[k] = math.log1p((n - df + 0.5) / (df + 0.5))
        holders = cp.need[ctx.said_in(cp.need, codes)]
        extra_term.append(np.full(len(holders), k, np.int64))
        extra_eid.append(holders)
    return (np.array(idf, np.float64), dfs,
            np.concatenate([posting_term, *extra_term]),
            np.concatenate([posting_eids, *extra_eid]))


def _evidence(s: Settings, ctx: TurnContext, lex: LexicalIndex, text: str, query: _Query,
              cp: _Pool, weight: float,
              ) -> tuple[hybrid.ContextEvidence, hybrid.ContextWeights, np.ndarray]:
    """The candidates' evidence for :func:`hybrid.context_mix`, the weights to mix it, and
    the candidates' relevance (:func:`hybrid.relevance`)."""
    session, speaker, date, speaker_prior, date_prior = _priors(s, ctx, lex, text, query, cp)
    zeros = np.zeros(len(cp.cands), np.float64)
    # Coverage feeds relevance even where the mix gives it no weight (stores made before
    # coverage existed): there it is left out of the evidence, so the score parts say 0.
    term_idf, counts, posting_term, posting_eids = _coverage_terms(s, ctx, lex, query, cp)
    cover, cover_prev = hybrid.coverage(term_idf, posting_term, posting_eids, cp.need,
                                        cp.at_c, np.where(cp.has_prev, cp.at_p, -1))
    held = hybrid.held_share(term_idf, counts, len(dict.fromkeys(query.terms)))
    relevance = hybrid.relevance(cp.cos, cover, cover_prev, held)
    if not s.coverage_prior:
        cover = cover_prev = zeros
    # Without session evidence (notes said outside any session, or no session holding a
    # query term) the turns' own BM25 takes the session's place in the lexical sum.
    turn_lexical = s.turn_lexical
    if s.session_prior and not session.any():
        turn_lexical += s.session_prior
    # The turns' own BM25 (and their previous turns') count only with a weight: by default
    # coverage stands in for them, and they are looked up for the returned hits alone.
    bm25 = bm25_prev = zeros
    if turn_lexical or s.context_lexical:
        bm25, bm25_prev = query.lexical(cp.cands)[0], query.lexical(cp.prev)[0]
    ev = hybrid.ContextEvidence(cos=cp.cos, cos_prev=cp.cos_prev, bm25=bm25,
                                bm25_prev=bm25_prev, bm25_session=session,
                                speaker=speaker, date=date, coverage=cover,
                                coverage_prev=cover_prev)
    return ev, hybrid.ContextWeights(
        lexical_weight=weight, turn_lexical=turn_lexical,
        context_lexical=s.context_lexical, session_prior=s.session_prior,
        context_dense=s.context_dense, speaker_prior=speaker_prior, date_prior=date_prior,
        coverage_prior=s.coverage_prior, coverage_context=s.coverage_context), relevance


def _neighbour_lift(s: Settings, ctx: TurnContext, query: _Query, cp: _Pool,
                    mixed: np.ndarray, best: np.ndarray) -> dict[int, tuple[float, int]]:
    """The neighbour step (:func:`hybrid.spread`) from the ``neighbour_seeds`` best
    candidates to their turns before and after that may be returned."""
    if not (s.neighbour_seeds > 0 and s.neighbour_weight > 0):
        return {}
    # The seeds' neighbours and their own scores (a handful: Python is quicker than arrays).
    seeds = best[:s.neighbour_seeds]
    mask, visible, exclude = query.mask, query.visible, query.exclude
    n_mask = len(mask)
    before: list[int] = []
    after: list[int] = []
    for e, preceding in zip(cp.cands[seeds].tolist(), cp.prev[seeds].tolist(), strict=True):
        following = int(ctx.next[e]) if e < ctx.capacity else -1
        if not (0 <= following < len(visible) and visible[following]):
            following = -1  # (``preceding`` is visible already)
        for x, side in ((preceding, before), (following, after)):
            side.append(x if 0 <= x < n_mask and x != exclude and mask[x] else -1)
    return hybrid.spread(cp.cands, mixed, seeds, np.array(before, np.int64),
                         np.array(after, np.int64), s.neighbour_weight)


def _hits(query: _Query, cp: _Pool, ev: hybrid.ContextEvidence, mixed: np.ndarray,
          best: np.ndarray, lifted: dict[int, tuple[float, int]], relevance: np.ndarray,
          ) -> Found:
    """``found`` of the returned rows of the candidates: the best, then the lifted turns
    that are candidates (a lifted turn outside them has no score parts of its own).

    A lifted turn's relevance is the higher of its own (if it is a candidate) and
    :data:`hybrid.RELEVANCE_NEIGHBOUR` times its seed's own."""
    cands = cp.cands
    lifted_eids = np.fromiter(lifted, np.int64, len(lifted))
    lifted_at = cands.searchsorted(lifted_eids)
    np.minimum(lifted_at, len(cands) - 1, out=lifted_at)
    lifted_in = cands[lifted_at] == lifted_eids
    rows = np.concatenate((best, lifted_at[lifted_in]))
    n_rows = len(rows)
    seeds_at = cands.searchsorted(np.fromiter((seed for _, seed in lifted.values()), np.int64,
                                              len(lifted)))
    lifted_rel = np.maximum(np.where(lifted_in, relevance[lifted_at], 0.0),
                            hybrid.RELEVANCE_NEIGHBOUR * relevance[seeds_at])
    bm, in_lexical = query.lexical(np.concatenate((cands[rows], cp.prev[rows])))
    evidence = [ev.cos[rows], bm[:n_rows], ev.cos_prev[rows], bm[n_rows:],
                ev.bm25_session[rows], ev.speaker[rows], ev.date[rows], ev.coverage[rows],
                ev.coverage_prev[rows]]
    return _context_hits(cands[rows], len(best), mixed[rows], evidence,
                         cp.known[cp.at_c[best]], in_lexical[:len(best)], lifted, lifted_in,
                         np.concatenate((relevance[best], lifted_rel)))


def _context_hits(eids: np.ndarray, n_best: int, mixed: np.ndarray, evidence: list[np.ndarray],
                  in_dense: np.ndarray, in_lexical: np.ndarray,
                  lifted: dict[int, tuple[float, int]], lifted_in: np.ndarray,
                  relevance: np.ndarray) -> Found:
    """``found`` of a context recall.

    ``eids`` are the returned candidates: the ``n_best`` best, best first (``in_dense`` and
    ``in_lexical`` say which top lists they were in), then the ``lifted`` turns that are
    candidates (``lifted_in`` says which those are), with their unsquashed scores ``mixed``
    and their ``evidence``: one array per score part, in the order of the parts' dict;
    ``relevance`` has one entry per best row, then one per lifted turn (in ``lifted``'s
    order).
    """
    # One squash for the rows and the lifted scores (elementwise: the same bits).
    lifted_mixed = np.fromiter((m for m, _ in lifted.values()), np.float64, len(lifted))
    squashed = hybrid.squash(np.concatenate((mixed, lifted_mixed))).tolist()
    # (A dict display: several times quicker than dict(zip(names, row)).)
    parts = [{"vector": v, "lexical": lx, "context_vector": cv, "context_lexical": cl,
              "session": se, "speaker": sp, "date": da, "coverage": co, "context_coverage": cc,
              "fused": f}
             for (v, lx, cv, cl, se, sp, da, co, cc), f in zip(np.array(evidence).T.tolist(),
                                                               squashed, strict=False)]
    rel = relevance.tolist()
    found: Found = {}
    for e, d, lx, p, r in zip(eids[:n_best].tolist(), in_dense.tolist(), in_lexical.tolist(),
                              parts, rel, strict=False):
        found[e] = (p["fused"], _VIA[d, lx], [], p, r)
    if lifted:
        own_parts = iter(parts[n_best:])
        for (e, (_, seed)), score, is_in, r in zip(lifted.items(), squashed[len(eids):],
                                                   lifted_in.tolist(), rel[n_best:],
                                                   strict=True):
            p = next(own_parts) if is_in else {}
            found[e] = (score, "context", [seed, e], {**p, "context": score, "fused": score}, r)
    return found
