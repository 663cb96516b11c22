"""Recall filters: ``kinds`` and ``where`` turned into what the search can apply.

``where`` filters on occurrences (who said something, in which session, when, with which
metadata) and becomes one SQL condition over the ``occurrences`` table, evaluated once per
recall into the set of allowed engrams; ``kinds`` becomes kind codes checked in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engramdb.content import MAX_METADATA_DEPTH, check_depth, encode_metadata
from engramdb.errors import InvalidInput
from engramdb.types import KIND_CODES, Kind


def kind_codes(kinds: Iterable[Kind | str] | None) -> list[int] | None:
    """Kind codes to keep, or None for all kinds; InvalidInput for an unknown or dead kind."""
    if kinds is None:
        return None
    if isinstance(kinds, (str, Kind)):
        kinds = [kinds]
    codes = []
    for k in kinds:
        try:
            name = Kind(k).value
        except ValueError:
            raise InvalidInput(
                f"unknown kind {k!r}; use working, short_term or long_term"
            ) from None
        if name not in KIND_CODES:
            raise InvalidInput("dead engrams are never recalled; list them with inspect")
        codes.append(KIND_CODES[name])
    return codes


def occurrence_filter(where: dict[str, Any] | None) -> tuple[str, list[Any]]:
    """Translate a ``where`` dict into a SQL condition (and its parameters) over occurrences
    ``o``; raise InvalidInput for an unknown key or a badly typed value."""
    if where is None:
        return "", []
    if not isinstance(where, dict):
        raise InvalidInput("where must be a dict such as {'session': 's1', 'role': 'user'}")
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in where.items():
        if key in ("session", "role"):
            values = value if isinstance(value, (list, tuple, set)) else [value]
            if not values or not all(isinstance(v, str) for v in values):
                raise InvalidInput(f"where[{key!r}] must be a str or a list of str")
            clauses.append(f"o.{key} IN (SELECT unnest(?::VARCHAR[]))")
            params.append(list(values))
        elif key in ("since", "until"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"where[{key!r}] must be a tick (int)")
            clauses.append("o.tick >= ?" if key == "since" else "o.tick <= ?")
            params.append(value)
        elif key == "metadata":
            if not isinstance(value, dict) or not value:
                raise InvalidInput("where['metadata'] must be a non-empty dict")
            # Nested as stored metadata is (the dict is level 1), and bounded the same way.
            check_depth(value, MAX_METADATA_DEPTH, "where['metadata']")
            for mk, mv in value.items():
                if not isinstance(mk, str):
                    raise InvalidInput("metadata keys must be str")
                encoded = encode_metadata({"v": mv})
                clauses.append("json_extract(o.metadata, ?) = json_extract(?::JSON, '$.v')")
                params.extend([_key_pointer(mk), encoded])
        else:
            raise InvalidInput(
                f"unknown filter {key!r}; use session, role, metadata, since, until"
            )
    return " AND ".join(clauses), params


def _key_pointer(key: str) -> str:
    """The JSON pointer (RFC 6901) of the top-level metadata ``key``; InvalidInput for a key
    that cannot be stored (a lone surrogate).

    A pointer rather than a JSONPath (``$."key"``): DuckDB rejects the empty key in a path
    (a binder error, which reached the caller as CorruptStore), and misses a key with a
    non-ASCII character, which ``json.dumps`` writes as a \\u escape (a silent empty
    answer). A pointer names every key as it is, once ``~`` and ``/`` are escaped.
    """
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"metadata key {key!r} is not valid Unicode (a lone surrogate)") \
            from None
    return "/" + key.replace("~", "~0").replace("/", "~1")
