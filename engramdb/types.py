"""The result types the public API returns."""

from __future__ import annotations

import copy
import math
from dataclasses import InitVar, dataclass, field
from enum import StrEnum
from typing import Any

from engramdb.errors import StoreClosed


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

    def to_dict(self) -> dict[str, Any]:
        """``{"id": ..., "is_new": ...}``, ready for ``json.dumps``."""
        return {"id": self.id, "is_new": self.is_new}


@dataclass(frozen=True)
class Occurrence:
    """One time some content was said: by whom, in which session, at which tick, and under
    which caller ``key`` (None when it was stored without one)."""

    role: str | None
    session: str | None
    tick: int
    metadata: dict[str, Any] | None
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """role, session, tick, a copy of metadata and the key as plain data, ready for
        ``json.dumps``."""
        return {"role": self.role, "session": self.session, "tick": int(self.tick),
                "metadata": copy.deepcopy(self.metadata), "key": self.key}


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

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data (``kind`` as its name, occurrences as dicts), ready for
        ``json.dumps``; the dict shares nothing with the engram."""
        return {
            "id": self.id, "text": self.text, "kind": Kind(self.kind).value,
            "refs": int(self.refs), "created_tick": int(self.created_tick),
            "expires_at": _number(self.expires_at), "lifespan_left": _number(self.lifespan_left),
            "pinned": bool(self.pinned), "recalls": int(self.recalls),
            "occurrences": [o.to_dict() for o in self.occurrences],
        }


@dataclass(frozen=True)
class Recall:
    """One recalled engram, with why it came back.

    ``via`` is "vector" (dense similarity), "lexical" (word overlap), "hybrid" (both),
    "context" (the turn right before or after a better hit, or found through its previous
    turn; ``path`` is ``[seed id, own id]`` when a hit lifted it) or "association" (reached
    over Hebbian links from another hit; ``path`` lists the ids walked). ``scores`` holds the
    per-source and per-level scores behind ``score``.

    ``score`` ranks the hit among this recall's candidates only (one candidate alone scores
    0.5 whatever it says). ``relevance``, in [0, 1], is absolute: built from the hit's own
    evidence (its cosine with the query and how much of the query's words it holds), so it
    can be compared across queries and stores and thresholded (``recall(min_score=...)``;
    docs/recall.md, "Relevance").

    For JSON use :meth:`to_dict`, which includes the occurrences (``dataclasses.asdict`` works
    too but leaves them out: they are a property, not a field). A hit's occurrences are loaded
    on first access while the store is open; once loaded they stay readable after it closes
    (``to_dict``, ``copy.deepcopy`` and ``pickle`` load them).
    """

    id: str
    text: str
    score: float
    kind: Kind
    lifespan_left: float | None
    via: str
    scores: dict[str, float] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    relevance: float = 0.0
    # The occurrences, or the recall's loader of them (recall/hydrate.OccurrenceLoader, which
    # holds a lock and the store). An init-only argument kept as a plain attribute, not a
    # field, so that dataclasses.asdict/astuple/fields never see the loader.
    _occurrences: InitVar[Any] = None

    def __post_init__(self, _occurrences: Any) -> None:
        object.__setattr__(self, "_occurrences", _occurrences)

    def __getstate__(self) -> dict[str, Any]:
        """For ``pickle`` and ``copy``: the occurrences themselves, never their loader."""
        state = dict(self.__dict__)
        state["_occurrences"] = list(self.occurrences)
        return state

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

    def to_dict(self) -> dict[str, Any]:
        """The hit as plain data, ready for ``json.dumps``: id, text, score, relevance, kind
        (its name), lifespan_left, via, scores, path and the matching occurrences as dicts.

        The occurrences are loaded now if they were not yet (so the store must be open then:
        StoreClosed otherwise); the dict holds copies and stays valid after the store closes.

        >>> json.dumps([hit.to_dict() for hit in mem.recall("pets")])  # doctest: +SKIP
        """
        try:
            occurrences = [o.to_dict() for o in self.occurrences]
        except StoreClosed as exc:
            raise StoreClosed(
                f"the occurrences of recalled engram {self.id[:12]} were not loaded before "
                "the store closed",
                hint="call to_dict() (or read .occurrences) before closing the store, or use "
                "engramdb.aio, whose recall loads them") from exc
        return {
            "id": self.id, "text": self.text, "score": float(self.score),
            "relevance": float(self.relevance), "kind": Kind(self.kind).value,
            "lifespan_left": _number(self.lifespan_left),
            "via": self.via, "scores": {str(k): float(v) for k, v in self.scores.items()},
            "path": list(self.path), "occurrences": occurrences,
        }


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

    def to_dict(self) -> dict[str, Any]:
        """``ok``, ``problems`` and ``checked`` as plain data, ready for ``json.dumps``."""
        return {"ok": self.ok, "problems": list(self.problems),
                "checked": {str(k): int(v) for k, v in self.checked.items()}}


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

    def to_dict(self) -> dict[str, Any]:
        """The turn as plain data (each recalled hit through :meth:`Recall.to_dict`), ready
        for ``json.dumps``."""
        return {"id": self.id, "is_new": self.is_new,
                "recalled": [hit.to_dict() for hit in self.recalled],
                "prompt": self.prompt, "tick": int(self.tick)}


def _number(value: float | None) -> float | None:
    """A lifespan or expiry for JSON: a plain float, None for "never" (None or infinite)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isinf(value) else value
