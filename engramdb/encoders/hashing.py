"""A model-free, deterministic encoder for tests and tiny installs."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from engramdb.encoders.base import Encoder
from engramdb.errors import InvalidInput

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEncoder(Encoder):
    """Feature hashing of words and character n-grams into ``dim`` signed buckets.

    Texts that share words score higher than texts that do not, which is enough to test
    recall without a model. Deterministic across processes and machines (blake2b, not
    Python's salted ``hash``).

    >>> enc = HashingEncoder(dim=64)
    >>> enc.encode(["hello world"]).shape
    (1, 64)
    """

    def __init__(self, dim: int = 256, *, ngram: int = 3, seed: int = 0) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2:
            raise InvalidInput(f"dim must be an int >= 2, got {dim!r}")
        if not isinstance(ngram, int) or isinstance(ngram, bool) or ngram < 0:
            raise InvalidInput(f"ngram must be an int >= 0, got {ngram!r}")
        self.dim = dim
        self.ngram = ngram
        self.seed = seed

    def spec(self) -> dict[str, Any]:
        """Return ``{"kind": "hashing", "dim": ..., "ngram": ..., "seed": ...}``."""
        return {"kind": "hashing", "dim": self.dim, "ngram": self.ngram, "seed": self.seed}

    def _features(self, text: str) -> list[str]:
        words = [w.lower() for w in _WORD.findall(text)]
        feats = [f"w:{w}" for w in words]
        if self.ngram:
            for w in words:
                padded = f"<{w}>"
                feats.extend(
                    f"c:{padded[i : i + self.ngram]}"
                    for i in range(max(1, len(padded) - self.ngram + 1))
                )
        return feats or [f"raw:{text}"]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return one L2-normalised float32 vector per text."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        salt = self.seed.to_bytes(8, "little", signed=True)
        for i, text in enumerate(texts):
            for feat in self._features(text):
                h = int.from_bytes(
                    hashlib.blake2b(feat.encode("utf-8"), digest_size=8, salt=salt).digest(),
                    "little",
                )
                weight = 1.0 if feat.startswith("w:") else 0.5
                out[i, h % self.dim] += weight if (h >> 63) & 1 else -weight
            norm = float(np.linalg.norm(out[i]))
            if norm == 0.0:  # all features cancelled out; any fixed direction will do
                out[i, 0] = 1.0
            else:
                out[i] /= norm
        return out
