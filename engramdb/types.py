"""The result types the public API returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """The stage of an engram's life (docs/lifespan.md, "Kinds")."""

    WORKING = "working"
    SHORT_TERM = "short_term"
    LONG_TERM = "long_term"
    DEAD = "dead"


# The one table of kind codes as the catalog stores them (an int8 column).
WORKING, SHORT_TERM, LONG_TERM = 0, 1, 2
KIND_CODES = {Kind.WORKING.value: WORKING, Kind.SHORT_TERM.value: SHORT_TERM,
              Kind.LONG_TERM.value: LONG_TERM}
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}


@dataclass(frozen=True)
class IngestResult:
    """What ``ingest`` did with one text: its id, and whether the content was new."""

    id: str
    is_new: bool


@dataclass(frozen=True)
class Occurrence:
    """One time some content was said: by whom, in which session, at which tick."""

    role: str | None
    session: str | None
    tick: int
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class Engram:
    """A stored memory: content, state and every occurrence of it."""

    id: str
    text: str
    kind: Kind
    refs: int
    created_tick: int
    expires_at: int | None  # None: never expires (pinned)
    lifespan_left: float | None  # ticks until death; None when it never expires
    pinned: bool
    recalls: int
    occurrences: list[Occurrence] = field(default_factory=list)

    @property
    def metadata(self) -> dict[str, Any] | None:
        """Metadata of the most recent occurrence."""
        return self.occurrences[-1].metadata if self.occurrences else None


@dataclass(frozen=True)
class Recall:
    """One recalled engram, with why it came back.

    ``via`` is "vector" (dense similarity), "lexical" (word overlap), "hybrid" (both),
    "context" (the turn right before or after a better hit, or found through its previous
    turn; ``path`` is ``[seed id, own id]`` when a hit lifted it) or "association" (reached
    over Hebbian links from another hit; ``path`` lists the ids walked). ``scores`` holds the
    per-source and per-level scores behind ``score``.
    """

    id: str
    text: str
    score: float
    kind: Kind
    lifespan_left: float | None
    via: str
    scores: dict[str, float] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    _occurrences: Any = field(default=None, repr=False, compare=False)

    @property
    def occurrences(self) -> list[Occurrence]:
        """The occurrences of this content that matched the recall's filter, oldest first.

        Loaded from the catalog on first access, in one query for every hit of the recall
        (the search itself never queries the catalog); needs the store to be still open.
        """
        source = self._occurrences
        if source is None:
            return []
        if isinstance(source, list):
            return source
        return source.get(self.id)

    @property
    def metadata(self) -> dict[str, Any] | None:
        """Metadata of the most recent matching occurrence."""
        return self.occurrences[-1].metadata if self.occurrences else None

    @property
    def role(self) -> str | None:
        """Role of the most recent matching occurrence."""
        return self.occurrences[-1].role if self.occurrences else None

    @property
    def session(self) -> str | None:
        """Session of the most recent matching occurrence."""
        return self.occurrences[-1].session if self.occurrences else None


@dataclass
class VerifyReport:
    """What :meth:`Store.verify` found: ``ok`` is True when nothing is wrong."""

    problems: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class Turn:
    """What ``integrate`` did with one chatbot turn.

    ``recalled`` are the memories brought back for the turn (before it was stored), ``prompt``
    is the turn with those memories written out for an LLM to read, ``id`` is the engram the
    turn itself became, and ``tick`` the clock at which it happened.
    """

    id: str
    is_new: bool
    recalled: list[Recall]
    prompt: str
    tick: int
