"""Fusing dense and lexical rankings into one recall ranking.

On real conversations BM25 beats a small dense model and plain reciprocal rank fusion drags
the better ranking down (LoCoMo dev R@10: BM25 0.60, RRF 0.58); a z-scored linear fusion of the
two lifted it to 0.67 (benchmarks/locomo_lab.py). So each candidate's dense cosine and BM25 score
are standardised over the candidate pool (the union of both top lists) and mixed with
``lexical_weight``; the mix is squashed into (0, 1) with a logistic so that associative recall
can scale it by a link weight.
"""

from __future__ import annotations

import numpy as np


def zscore(x: np.ndarray) -> np.ndarray:
    """Standardise; a constant vector maps to zeros."""
    std = float(x.std())
    return np.zeros_like(x) if std == 0.0 else (x - float(x.mean())) / std


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
