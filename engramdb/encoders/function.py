"""Wrap any embedding function as an encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engramdb.encoders.base import Encoder
from engramdb.errors import InvalidInput


class FunctionEncoder(Encoder):
    """Bring your own embedding function: ``fn(list[str]) -> array (n, dim)``.

    ``name`` identifies the function in the store's fingerprint: give a different name (or
    version suffix) whenever the function's vectors change. A store built with a
    FunctionEncoder can be reopened without it for everything except encoding text.

    >>> import numpy as np
    >>> enc = FunctionEncoder(lambda ts: np.ones((len(ts), 4)), dim=4, name="ones-v1")
    >>> enc.encode(["a", "b"]).shape
    (2, 4)
    """

    def __init__(self, fn: Callable[[list[str]], Any], dim: int, name: str) -> None:
        if not callable(fn):
            raise InvalidInput("fn must be callable: fn(list[str]) -> array of shape (n, dim)")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise InvalidInput(f"dim must be a positive int, got {dim!r}")
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput("name must be a non-empty string that identifies the function")
        self.fn = fn
        self.dim = dim
        self.name = name

    def spec(self) -> dict[str, Any]:
        """Return ``{"kind": "function", "name": ..., "dim": ...}``."""
        return {"kind": "function", "name": self.name, "dim": self.dim}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Call the wrapped function and return its output as float32."""
        return np.asarray(self.fn(list(texts)), dtype=np.float32)
