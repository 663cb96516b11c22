"""An orthonormal rotation whose rows are ordered by variance, so a prefix is a good summary.

Multi-resolution recall (DESIGN §3) indexes a *prefix* of each rotated vector: level ``k`` of a
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
    """An orthonormal ``dim x dim`` matrix ``R`` (float32); ``apply`` computes ``x @ R[:p].T``.

    Build one with :meth:`random` (before the store has data) or :meth:`fit` (PCA on a sample of
    the store's own vectors). Raises ``ValueError`` for a matrix that is not square and finite.

    Example::

        rot = Rotation.random(384, seed=0)
        prefix = rot.apply(vectors, prefix=96)     # (n, 96)
    """

    def __init__(self, matrix: np.ndarray) -> None:
        m = np.ascontiguousarray(matrix, dtype=np.float32)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
            raise ValueError(f"a rotation must be a non-empty square matrix, got {m.shape}")
        if not np.isfinite(m).all():
            raise ValueError("a rotation matrix must be finite")
        self._m = m

    @property
    def matrix(self) -> np.ndarray:
        """The ``dim x dim`` float32 matrix; row ``i`` is the ``i``-th component's direction."""
        return self._m

    @property
    def dim(self) -> int:
        """The dimension the rotation acts on."""
        return int(self._m.shape[0])

    @classmethod
    def random(cls, dim: int, seed: int = 0) -> Rotation:
        """A uniformly random orthogonal matrix (QR of a Gaussian matrix, signs fixed).

        Used until the store has enough vectors to fit a PCA; with it a prefix is a random
        projection, which keeps dot products only on average.

        Example: ``Rotation.random(64, seed=1).matrix.shape == (64, 64)``
        """
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        g = np.random.default_rng(seed).standard_normal((dim, dim))
        q, r = np.linalg.qr(g)
        # Multiplying column j by sign(r_jj) makes the distribution uniform (Haar).
        q *= np.where(np.diag(r) < 0, -1.0, 1.0)
        return cls(q.T)

    @classmethod
    def fit(cls, sample: np.ndarray, *, seed: int = 0) -> Rotation:
        """PCA on ``sample`` (n, dim): rows are the principal directions, largest variance first.

        The sample is centred, so the directions are ordered by how much they vary across the
        store's vectors, not by their mean (a constant offset that tells no vector apart). When the
        sample has rank ``r < dim`` the basis is completed with ``dim - r`` orthonormal directions
        (Householder completion, O(dim^2 r)). A sample of rank 0 gives :meth:`random`.
        Raises ``ValueError`` for an empty or non-finite sample.

        Example::

            rot = Rotation.fit(vectors[:10_000])
        """
        x = np.asarray(sample, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"sample must be a non-empty (n, dim) array, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("sample must be finite")
        n, dim = x.shape
        xc = x - x.mean(axis=0)
        if n >= dim:
            # eigh of the dim x dim scatter matrix is O(n dim^2 + dim^3) and always returns a full
            # orthonormal basis, even when the scatter is singular.
            w, v = np.linalg.eigh(xc.T @ xc)
            basis = v[:, np.argsort(w)[::-1]]
        else:
            _, s, vt = np.linalg.svd(xc, full_matrices=False)
            rank = int((s > s[0] * 1e-7).sum()) if s.size and s[0] > 0 else 0
            if rank == 0:
                return cls.random(dim, seed)
            top = vt[:rank].T  # (dim, rank), orthonormal columns, variance descending
            q, _ = np.linalg.qr(top, mode="complete")
            q[:, :rank] = top  # q[:, rank:] is orthogonal to span(top): keep top's exact signs
            basis = q
        return cls(basis.T)

    def apply(self, x: np.ndarray, prefix: int | None = None) -> np.ndarray:
        """Rotate rows of ``x`` (n, dim) or one vector (dim,); keep the first ``prefix`` components.

        Only ``prefix`` rows of ``R`` are multiplied, so a 256-d prefix of a 4096-d vector costs
        1/16 of the full rotation. Raises ``ValueError`` on a dimension mismatch.

        Example: ``Rotation.random(8).apply(np.ones(8, np.float32), prefix=2).shape == (2,)``
        """
        a = np.asarray(x, dtype=np.float32)
        if a.shape[-1] != self.dim:
            raise ValueError(f"expected vectors of dim {self.dim}, got shape {a.shape}")
        p = self.dim if prefix is None else int(prefix)
        if not 0 < p <= self.dim:
            raise ValueError(f"prefix must be in 1..{self.dim}, got {p}")
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
        return f"Rotation(dim={self.dim})"
