"""The encoder contract: texts in, one float32 vector per text out, plus a stable spec."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

# Re-exported: fingerprint_of was public here before it moved to the foundation layer.
from engramdb.content import check_vectors, fingerprint_of
from engramdb.errors import EngramError, InvalidInput


class Encoder(ABC):
    """Turns texts into fixed-width vectors.

    Subclasses set ``dim`` and implement :meth:`encode` and :meth:`spec`. The spec is a
    JSON-serialisable dict that identifies the model exactly (same spec, same vectors); it is
    recorded in the store's manifest so the store can be reopened, and its hash is the
    fingerprint that goes into every engram id.
    """

    dim: int

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), dim)`` float32 array, one row per text."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """Return the JSON-serialisable description that identifies this encoder."""

    @property
    def fingerprint(self) -> str:
        """Hex sha256 of :meth:`spec`; changes whenever the vectors could change."""
        return fingerprint_of(self.spec())

    def encode_checked(self, texts: Sequence[str]) -> np.ndarray:
        """Encode and check the shape and values, so a faulty encoder cannot damage a store."""
        out = np.asarray(self.encode(list(texts)), dtype=np.float32)
        if out.ndim != 2 or out.shape != (len(texts), self.dim):
            raise InvalidInput(
                f"encoder {self.spec().get('kind')!r} returned shape {out.shape}, "
                f"expected ({len(texts)}, {self.dim})",
                hint="the encoder must return one vector of its declared dim per text",
            )
        if not np.isfinite(out).all():
            raise InvalidInput(
                "encoder returned NaN or infinite values",
                hint="check the model and its dtype; nothing was written",
            )
        return out

    def encode_stored(self, texts: Sequence[str]) -> np.ndarray:
        """The unit float32 vectors a store keeps for ``texts``: :meth:`encode_checked`, then
        normalised and checked; whatever the encoder itself raises (it is user code or a
        model) becomes InvalidInput naming it."""
        try:
            raw = self.encode_checked(texts)
        except EngramError:
            raise
        except Exception as exc:  # noqa: BLE001 - wrap what the model throws
            raise InvalidInput(f"the encoder failed: {type(exc).__name__}: {exc}",
                               hint="check the encoder; nothing was written") from exc
        return check_vectors(raw, self.dim, len(texts), what="encoded vector")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, fingerprint={self.fingerprint[:12]})"
