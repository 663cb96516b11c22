"""The text a store should encode for a query's dense search, given the roles it knows.

An app stores what was said as the text and who said it as the role, so no stored vector
holds a speaker's name. A question that names one ("What did Caroline paint?") then carries
a word none of the turns has: it moves the query's vector away from every turn alike, and
the ranking loses. The role already counts where it can (the speaker prior, and query
coverage with ``Settings.role_lexical``), so the dense query does better without the name:
:func:`dense_query` replaces each role name the question uses by "they" ("their" for "'s").
On LoCoMo stored as an app stores it, with the store's formula (``benchmarks/locomo_app.py``,
docs/quality.md), this moved R@5 from 0.720 to 0.741 and R@10 from 0.819 to 0.830 (held out:
0.727 -> 0.745, 0.817 -> 0.835).

This module only computes the text; ``Store.recall`` and ``Store.integrate`` encode it
(``Settings.role_free_query``). :func:`turn_texts` gives both texts of an ``integrate`` turn:
the one its stored vector embeds and the one its recall queries with.
"""

from __future__ import annotations

import re

from engramdb.derived.context import TurnContext
from engramdb.derived.metadata_text import dense_document, embedded_keys
from engramdb.settings import Settings

__all__ = ["dense_query", "turn_texts"]

# A word, with an optional "the " before it and an optional possessive after it.
_WORD = re.compile(r"\b(?:(the)\s+)?([^\W\d_]+)(['\u2019]s)?\b", re.IGNORECASE)
# Pronouns left side by side by a role of several words ("Anna Maria" -> "they they").
_RUN = re.compile(r"\bthey(?:[\s.]+(they|their))+\b")


def dense_query(text: str, ctx: TurnContext) -> str:
    """``text`` with every word of a role label that some stored turn was said in replaced
    by "they" (with its "'s": "their"; a "the" before it goes too). Words are compared as
    the lexical tokenizer sees them (``ctx.tokenizer``), as the speaker prior does; a text
    naming no role comes back unchanged."""
    if not ctx.role_words:
        return text
    roles = {c for c in range(len(ctx.role_turns)) if ctx.role_turns[c] > 0}
    if not roles:
        return text
    changed = False

    def swap(m: re.Match[str]) -> str:
        nonlocal changed
        terms = ctx.tokenizer(m.group(2))
        if not terms or not all(ctx.role_words.get(t, set()) & roles for t in terms):
            return m.group(0)  # not a name: as it was
        changed = True
        return "their" if m.group(3) else "they"

    out = _WORD.sub(swap, text)
    return _RUN.sub(lambda m: m.group(1), out) if changed else text


def turn_texts(text: str, metadata: str | None, settings: Settings, ctx: TurnContext
               ) -> tuple[str, str]:
    """The two texts an ``integrate`` turn encodes: the one its stored vector embeds (with
    the metadata values ``Settings.embed_metadata`` adds) and the one its recall queries
    with (:func:`dense_query` when ``Settings.role_free_query`` is on); often the same."""
    stored = dense_document(text, metadata, embedded_keys(settings))
    return stored, dense_query(text, ctx) if settings.role_free_query else text
