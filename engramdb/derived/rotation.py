"""An orthonormal rotation whose rows are ordered by variance, so a prefix is a good summary.

Multi-resolution recall (docs/recall.md) indexes a *prefix* of each rotated vector: level ``k`` of a
vector ``v`` is ``(v @ R.T)[:levels[k]]``. Because ``R`` is orthonormal the full rotated vector
has exactly the dot products of the original, and because its rows are ordered by variance
(PCA), the first components carry most of what tells vectors apart.

This module imports only numpy.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np

__all__ = ["Rotation", "matvec"]

# OpenBLAS runs a matrix-vector product on several threads above roughly 400k elements; on a
# busy 2-core machine that made a 1365 x 384 product take 48 ms instead of 0.4 ms (measured while
# other processes used both cores). Blocks of at most this many elements stay single-threaded.
_MATVEC_BLOCK = 1 << 18


def matvec(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``m @ v`` for a matrix ``m`` (r, c) and a vector ``v`` (c,), in cache-sized row blocks.

    Same result as ``m @ v`` (float32 when both are), but never handed to a multi-threaded
    BLAS kernel, whose thread start-up dominates a memory-bound product and collapses when the
    cores are busy.

    Example: ``matvec(np.eye(3, dtype=np.float32), np.ones(3, np.float32))``
    """
    rows = max(1, _MATVEC_BLOCK // max(1, m.shape[1]))
    if m.shape[0] <= rows:
        return m @ v
    return np.concatenate([m[i:i + rows] @ v for i in range(0, m.shape[0], rows)])


class Rotation:
    """An orthonormal ``dim x dim`` matrix ``R`` (float32), or its first ``rows`` rows; ``apply``
    computes ``x @ R[:p].T`` for a prefix ``p <= rows``.

    Build one with :meth:`random` (before the store has data) or :meth:`fit` (PCA on a sample of
    the store's own vectors). An index only ever uses the prefix of its finest level, so it
    keeps that many rows (``keep=``): at 4,096-d with a 256-d level that is 4 MiB instead of
    64 MiB, and the fit never forms a ``dim x dim`` matrix. Raises ``ValueError`` for a matrix
    with more rows than columns, or one that is empty or not finite.

    Example::

        rot = Rotation.random(384, seed=0)
        prefix = rot.apply(vectors, prefix=96)     # (n, 96)
    """

    def __init__(self, matrix: np.ndarray) -> None:
        m = np.ascontiguousarray(matrix, dtype=np.float32)
        if m.ndim != 2 or m.shape[0] > m.shape[1] or m.shape[0] == 0:
            raise ValueError(f"a rotation must be a non-empty (rows <= dim, dim) matrix, "
                             f"got {m.shape}")
        if not np.isfinite(m).all():
            raise ValueError("a rotation matrix must be finite")
        self._m = m

    @property
    def matrix(self) -> np.ndarray:
        """The ``rows x dim`` float32 matrix; row ``i`` is the ``i``-th component's direction."""
        return self._m

    @property
    def dim(self) -> int:
        """The dimension the rotation acts on."""
        return int(self._m.shape[1])

    @property
    def rows(self) -> int:
        """How many components are kept (``dim`` for a whole rotation)."""
        return int(self._m.shape[0])

    @classmethod
    def random(cls, dim: int, seed: int = 0, *, keep: int | None = None) -> Rotation:
        """A uniformly random orthogonal matrix (QR of a Gaussian matrix, signs fixed), or its
        first ``keep`` rows.

        Used until the store has enough vectors to fit a PCA; with it a prefix is a random
        projection, which keeps dot products only on average.

        Example: ``Rotation.random(64, seed=1).matrix.shape == (64, 64)``
        """
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        keep = _check_keep(dim, keep)
        g = np.random.default_rng(seed).standard_normal((dim, keep))
        q, r = np.linalg.qr(g)
        # Multiplying column j by sign(r_jj) makes the distribution uniform (Haar).
        q *= np.where(np.diag(r) < 0, -1.0, 1.0)
        return cls(q.T)

    @classmethod
    def fit(cls, sample: np.ndarray, *, seed: int = 0, keep: int | None = None) -> Rotation:
        """PCA on ``sample`` (n, dim): rows are the principal directions, largest variance first;
        only the first ``keep`` (default: all ``dim``) are computed and kept.

        The sample is centred, so the directions are ordered by how much they vary across the
        store's vectors, not by their mean (a constant offset that tells no vector apart). When the
        sample has rank ``r`` below the rows asked for, the rest are orthonormal directions
        orthogonal to the sample's. A sample of rank 0 gives :meth:`random`.
        Raises ``ValueError`` for an empty or non-finite sample.

        With fewer samples than dimensions (2,048 x 4,096 when a store first fits) the
        directions come from the ``n x n`` Gram matrix, so no ``dim x dim`` matrix is formed.

        Example::

            rot = Rotation.fit(vectors[:10_000])
        """
        x = np.array(sample, dtype=np.float64)  # a copy: centred in place below
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"sample must be a non-empty (n, dim) array, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("sample must be finite")
        n, dim = x.shape
        keep = _check_keep(dim, keep)
        x -= x.mean(axis=0)
        if n >= dim:
            # eigh of the dim x dim scatter matrix is O(n dim^2 + dim^3) and always returns a full
            # orthonormal basis, even when the scatter is singular.
            w, v = np.linalg.eigh(x.T @ x)
            return cls(v[:, np.argsort(w)[::-1][:keep]].T)
        # x = U S V^T: the Gram matrix x x^T = U S^2 U^T gives U and S, then V = x^T U / S.
        w, u = np.linalg.eigh(x @ x.T)
        order = np.argsort(w)[::-1]
        w, u = np.clip(w[order], 0.0, None), u[:, order]
        s = np.sqrt(w)
        # Through the Gram matrix a direction is accurate to ~eps * s[0] / s: keep those well
        # above that (the ones a prefix level is for), complete the rest below.
        rank = int((s > s[0] * 1e-6).sum()) if s[0] > 0 else 0
        if rank == 0:
            return cls.random(dim, seed, keep=keep)
        take = min(rank, keep)
        top = (x.T @ u[:, :take]) / s[:take]  # (dim, take), orthonormal up to rounding
        q, r = np.linalg.qr(top)  # make them orthonormal to working precision, signs kept
        top = q * np.where(np.diag(r) < 0, -1.0, 1.0)
        if take < keep:  # complete with directions orthogonal to the sample's span
            extra = np.random.default_rng(seed).standard_normal((dim, keep - take))
            extra -= top @ (top.T @ extra)
            q, _ = np.linalg.qr(np.concatenate([top, extra], axis=1))
            q[:, :take] = top  # q's first columns span top: keep top's exact signs
            top = q
        return cls(top.T)

    def apply(self, x: np.ndarray, prefix: int | None = None) -> np.ndarray:
        """Rotate rows of ``x`` (n, dim) or one vector (dim,); keep the first ``prefix`` components.

        Only ``prefix`` rows of ``R`` are multiplied, so a 256-d prefix of a 4096-d vector costs
        1/16 of the full rotation. Raises ``ValueError`` on a dimension mismatch.

        Example: ``Rotation.random(8).apply(np.ones(8, np.float32), prefix=2).shape == (2,)``
        """
        a = np.asarray(x, dtype=np.float32)
        if a.shape[-1] != self.dim:
            raise ValueError(f"expected vectors of dim {self.dim}, got shape {a.shape}")
        p = self.rows if prefix is None else int(prefix)
        if not 0 < p <= self.rows:
            raise ValueError(f"prefix must be in 1..{self.rows}, got {p}")
        if a.ndim == 1:  # one query: a memory-bound product, keep it off BLAS threads
            return matvec(self._m[:p], a)
        return a @ self._m[:p].T

    def save(self, file: str | os.PathLike[str] | BinaryIO) -> None:
        """Write the matrix with ``np.save`` (to a path or an open binary file).

        Example: ``rot.save(tmp_path / "rotation.npy")``
        """
        np.save(file, self._m, allow_pickle=False)

    @classmethod
    def load(cls, file: str | os.PathLike[str] | BinaryIO) -> Rotation:
        """Read a matrix written by :meth:`save`; raises ``ValueError`` if it is not a rotation.

        Example: ``Rotation.load(tmp_path / "rotation.npy")``
        """
        return cls(np.load(file, allow_pickle=False))

    def __repr__(self) -> str:
        return f"Rotation(dim={self.dim}, rows={self.rows})"


def _check_keep(dim: int, keep: int | None) -> int:
    if keep is None:
        return dim
    if not 0 < int(keep) <= dim:
        raise ValueError(f"keep must be in 1..{dim}, got {keep}")
    return int(keep)
