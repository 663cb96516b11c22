"""The metadata text an engram is searched by, besides its own text.

``Settings.lexical_metadata`` names metadata keys (comma-separated) whose values an app wants
searched as part of the engram: an image's caption, a document's title. Their values, taken
from the occurrence that first stored the text, are:

- words of the engram for BM25 (:func:`lexical_document`: the text, then the values);
- with ``Settings.embed_metadata``, part of the text the encoder embeds for the stored vector
  (:func:`dense_document` under :func:`embedded_keys`: the text, then each value in brackets,
  the way a transcript marks an aside that is not the speaker's words).
"""

from __future__ import annotations

import json

from engramdb.settings import Settings

__all__ = ["dense_document", "embedded_keys", "lexical_document", "metadata_values"]


def embedded_keys(settings: Settings) -> str:
    """The metadata keys whose values a new engram's vector embeds with its text:
    ``lexical_metadata`` when ``embed_metadata`` is on, else none (``""``)."""
    return settings.lexical_metadata if settings.embed_metadata else ""


def metadata_values(metadata: str | None, keys: str) -> list[str]:
    """The values ``metadata`` (an occurrence's stored JSON, or None) holds under ``keys``
    (comma-separated), as text, in the order of ``keys``: a string value is itself, a number
    its digits, a list its string and number items; anything else, and a string of
    whitespace alone, gives nothing (an app that always sends the key, empty when there is
    no image, stores the same as one that leaves it out)."""
    if not keys or not metadata:
        return []
    try:
        meta = json.loads(metadata)
    except ValueError:  # the catalog holds only JSON it encoded; a damaged row adds nothing
        return []
    if not isinstance(meta, dict):
        return []
    values = []
    for key in keys.split(","):
        value = meta.get(key)
        items = value if isinstance(value, list) else [value]
        values.extend(str(v) for v in items
                      if isinstance(v, (str, int, float)) and not isinstance(v, bool)
                      and str(v).strip())
    return values


def lexical_document(text: str, metadata: str | None, keys: str) -> str:
    """The words BM25 indexes for an engram: its text, then :func:`metadata_values`."""
    return " ".join([text, *metadata_values(metadata, keys)])


def dense_document(text: str, metadata: str | None, keys: str) -> str:
    """The text embedded for an engram's stored vector (``keys``: :func:`embedded_keys`):
    its text, then each of :func:`metadata_values` in brackets ("look at this [a photo of a
    lake at sunrise]"); the text alone when there are none."""
    if not keys:  # every write of a store that names no keys: no JSON parsed
        return text
    return " ".join([text, *(f"[{v}]" for v in metadata_values(metadata, keys))])
