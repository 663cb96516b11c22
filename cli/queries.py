"""Read-only catalog queries the CLI needs and the Store API does not offer (yet).

Each runs on a :meth:`Store.snapshot` (read-only SQL); the listing stands in for a
``Store.engrams(where=..., kinds=..., limit=...)`` method and should go when the store has it.
"""

from __future__ import annotations

from typing import Any

from engramdb.errors import InvalidInput, NotFound
from engramdb.store import Store
from engramdb.types import KIND_CODES, Engram


def list_engrams(
    store: Store,
    *,
    kinds: tuple[str, ...] = (),
    session: str | None = None,
    role: str | None = None,
    since: int | None = None,
    limit: int = 20,
) -> list[Engram]:
    """Live engrams, most recently said first, filtered on kind and their occurrences.

    Stand-in for a ``Store.engrams(where=..., kinds=..., limit=...)`` listing method.
    """
    if limit < 1:
        raise InvalidInput(f"limit must be >= 1, got {limit}")
    clauses = ["(e.expires_at IS NULL OR e.expires_at > ?)"]
    params: list[Any] = [store.clock]
    if kinds:
        unknown = [k for k in kinds if k not in KIND_CODES]
        if unknown:
            raise InvalidInput(f"unknown kind {unknown[0]!r}; use working, short_term or long_term")
        clauses.append("e.kind IN (SELECT unnest(?::TINYINT[]))")
        params.append([KIND_CODES[k] for k in kinds])
    for column, value in (("session", session), ("role", role)):
        if value is not None:
            clauses.append(f"o.{column} = ?")
            params.append(value)
    if since is not None:
        clauses.append("o.tick >= ?")
        params.append(since)
    with store.snapshot() as snap:
        rows = snap.query(
            "SELECT e.id, max(o.seq) AS last FROM engrams e JOIN occurrences o ON o.eid = e.eid "
            f"WHERE {' AND '.join(clauses)} GROUP BY e.id ORDER BY last DESC, e.id LIMIT ?",
            [*params, limit],
        )
    return [store.get(ident) for ident, _ in rows]


def resolve_id(store: Store, ident: str) -> str:
    """Expand a unique id prefix (8+ hex digits, as ``ls`` prints 12) to the full id."""
    ident = ident.strip().lower()
    if len(ident) == 64:
        return ident
    if len(ident) < 8 or any(c not in "0123456789abcdef" for c in ident):
        raise InvalidInput(f"not an engram id or id prefix: {ident!r}",
                           hint="pass the 64-hex-digit id, or a unique prefix of 8+ digits")
    with store.snapshot() as snap:
        rows = snap.query(
            "SELECT id FROM engrams WHERE starts_with(id, ?) ORDER BY id LIMIT 2", [ident])
    if not rows:
        raise NotFound(f"no engram id starts with {ident}")
    if len(rows) > 1:
        raise InvalidInput(f"id prefix {ident} is ambiguous", hint="pass more digits")
    return str(rows[0][0])
