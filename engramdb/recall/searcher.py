"""The read path of one open store: search, fuse, associate, hydrate.

A :class:`Searcher` answers a recall whose query is already encoded and whose filters are
already a mask: the dense search (:mod:`engramdb.recall.dense`), BM25 fusion with or without
conversation context (:mod:`engramdb.recall.fusion`, :mod:`engramdb.recall.fusion_context`),
association over the Hebbian links, then the hits (:mod:`engramdb.recall.hydrate`). It changes
nothing, and reads the store's :class:`Parts` at call time (the engine replaces some of them).
The caller holds the read gate (or the write lock) around a recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engramdb.derived.lexical import LexicalMatch
from engramdb.engine import links as lk
from engramdb.engine.parts import Parts
from engramdb.recall import dense, fusion, hybrid, hydrate
from engramdb.recall.fusion import Found, Hit
from engramdb.recall.fusion_context import fuse_context
from engramdb.types import Engram, Recall

# How many of the best hits association starts from.
_ASSOCIATION_SEEDS = 5


class Searcher:
    """Recall over one open store's parts (see the module docstring)."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts

    def recall(
        self, q: np.ndarray, text: str | None, top_k: int, mask: np.ndarray, occ_sql: str,
        occ_params: list[Any], associative: bool, now: int, *, filtered: bool,
        exclude: int | None = None, context: bool | None = None,
        visible: np.ndarray | None = None, min_score: float | None = None,
    ) -> list[Recall]:
        """Search (hybrid when there is query ``text``), expand over links, fetch, rank.

        ``mask`` says which eids may be returned; ``filtered`` says it excludes more than
        expiry and a handful of ids, so the vector index must search inside it. ``exclude``
        is one more eid not to return (a turn must not recall itself). ``visible`` (default
        ``mask``) says which engrams may lend context (a previous turn, a session) to those
        returned; ``context`` overrides ``settings.context``. The hits' occurrences are those
        matching ``occ_sql``. With ``min_score``, the ranked hits whose relevance is below it
        are dropped (after the cut to ``top_k``: the hits are those of the same recall without
        it, less the dropped ones).
        """
        parts = self._parts
        found = self._found(q, text, top_k, mask, now, filtered, exclude, context, visible)
        if associative and found and parts.has_links:
            seeds = [e for e, _ in sorted(found.items(), key=_rank)[:_ASSOCIATION_SEEDS]]
            associate(parts, found, seeds, mask, now, exclude)
        ranked = sorted(found.items(), key=_rank)[:top_k]
        if min_score is not None:
            ranked = [hit for hit in ranked if hit[1][4] >= min_score]
        if not ranked:
            return []
        return hydrate.recall_hits(parts, ranked, occ_sql, occ_params, now)

    def _found(self, q: np.ndarray, text: str | None, top_k: int, mask: np.ndarray, now: int,
               filtered: bool, exclude: int | None, context: bool | None,
               visible: np.ndarray | None) -> Found:
        """The scored candidates before association: dense, fused, or fused with context."""
        parts = self._parts
        s = parts.settings
        weight = s.lexical_weight if text is not None else 0.0
        pool = max(top_k, s.hybrid_pool) if weight > 0 else top_k
        # Fusion scores the dense top list as a set: it need not come ranked.
        eids, scores = self.dense_search(q, pool, mask, filtered, now, ranked=weight == 0)
        if exclude is not None:
            keep = eids != exclude
            eids, scores = eids[keep], scores[keep]
        if weight > 0 and (s.context if context is None else context):
            assert text is not None
            return fuse_context(parts, q, text, eids, scores, pool, weight, mask,
                                mask if visible is None else visible, exclude, top_k)
        if weight > 0:
            assert text is not None
            lex = parts.lexical
            terms = lex.tokenizer(text)
            match = lex.match(terms)
            n_terms = len(dict.fromkeys(terms))
            lex_eids, lex_scores = self.lexical_scores(match, mask)
            if exclude is not None and len(lex_eids):
                keep = lex_eids != exclude
                lex_eids, lex_scores = lex_eids[keep], lex_scores[keep]
            if len(lex_eids):
                return fusion.fuse(parts, q, eids, scores, lex_eids, lex_scores, pool, weight,
                                   match, n_terms)
            # No lexical match: the dense top list, ranked; none holds a query term.
            order = np.lexsort((eids, -scores))
            eids, scores = eids[order[:top_k]], scores[order[:top_k]]
            held = hybrid.held_share(match.term_idf, match.postings.counts, n_terms)
            relevance = hybrid.relevance(scores, np.zeros(len(eids)), np.zeros(len(eids)), held)
        else:
            eids, scores = eids[:top_k], scores[:top_k]
            relevance = hybrid.dense_relevance(scores)
        return {e: (x, "vector", [], {"vector": x}, r)
                for e, x, r in zip(eids.tolist(), scores.tolist(), relevance.tolist())}

    def dense_search(self, q: np.ndarray, k: int, mask: np.ndarray, filtered: bool,
                     now: int, *, ranked: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (eids, cosines) among ``mask`` (:func:`dense.dense_search`)."""
        return dense.dense_search(self._parts, q, k, mask, filtered, now, ranked=ranked)

    def exact_search(self, q: np.ndarray, k: int, mask: np.ndarray, *,
                     ranked: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (eids, cosines) among ``mask`` by one exact scan of the segments
        (:func:`dense.exact_search`)."""
        return dense.exact_search(self._parts, q, k, mask, ranked=ranked)

    @staticmethod
    def lexical_scores(found: LexicalMatch, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BM25 scores of the ``mask`` engrams among a query's matches, sorted by eid
        (:func:`fusion.lexical_scores`)."""
        return fusion.lexical_scores(found, mask)

    def occurrence_mask(self, occ_sql: str, occ_params: list[Any], size: int) -> np.ndarray:
        """Which of the first ``size`` eids have an occurrence matching ``occ_sql``."""
        allowed = self._parts.query_arrow(
            f"SELECT DISTINCT eid FROM occurrences o WHERE {occ_sql}", occ_params
        ).column("eid").to_numpy()
        keep = np.zeros(size, bool)
        keep[allowed[allowed < size]] = True
        return keep

    def engrams(self, eids: list[int], occ_sql: str = "", occ_params: Sequence[Any] = (), *,
                now: int) -> dict[int, Engram]:
        """Full engrams of some eids at tick ``now`` (:func:`hydrate.engrams`)."""
        return hydrate.engrams(self._parts, eids, occ_sql, occ_params, now)


def associate(parts: Parts, found: Found, seeds: list[int], mask: np.ndarray, now: int,
              exclude: int | None = None) -> None:
    """Follow the strongest links from ``seeds``, adding what they reach to ``found``: an
    engram reached scores its seed's score times the link's weight, and its relevance is its
    seed's times the link's weight too (or its own, if it was found with a higher one)."""
    s = parts.settings
    frontier = {e: (found[e][0], [e], found[e][4]) for e in seeds}
    for _ in range(s.associative_depth):
        if not frontier:
            break
        mirror = parts.mirror  # holds the links of turns not yet folded into the catalog
        if mirror is not None:
            links = lk.neighbours(mirror, frontier, now, s, s.associative_fanout)
        else:
            links = parts.read_cursor(_catalog_neighbours, frontier, now, s,
                                      s.associative_fanout)
        nxt: dict[int, tuple[float, list[int], float]] = {}
        for src, (src_score, path, src_rel) in frontier.items():
            for other, weight in links.get(src, []):
                if other >= len(mask) or not mask[other] or not weight > 0 or other == exclude:
                    continue
                score = src_score * weight
                if other in found and found[other][0] >= score:
                    continue
                rel = max(src_rel * min(weight, 1.0), found[other][4] if other in found else 0.0)
                found[other] = (score, "association", path + [other],
                                {"association": score, "link": weight}, rel)
                if other not in nxt or nxt[other][0] < score:
                    nxt[other] = (score, path + [other], rel)
        frontier = nxt


def _rank(kv: tuple[int, Hit]) -> tuple[float, int]:
    """Sort key of ``found``'s items: best score first, ties by the smaller eid."""
    return -kv[1][0], kv[0]


def _catalog_neighbours(cur: Any, *args: Any) -> dict[int, list[tuple[int, float]]]:
    return lk.neighbours(lk.SqlEdges(cur), *args)
