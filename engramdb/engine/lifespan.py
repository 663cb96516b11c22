"""The rules of the Hebbian lifespan engine, as pure functions (docs/lifespan.md).

Nothing here touches disk; the store applies these rules inside its transactions. Every
number is in ticks of the store's logical clock, and every parameter comes from
:class:`~engramdb.settings.Settings`. The worked example in ``docs/lifespan.md`` follows
these functions step by step, and ``tests/test_lifespan.py`` replays it.

- A tick costs O(1): an engram stores the absolute tick at which it dies (``expires_at``), so
  advancing the clock touches no row. Lifespan left is ``expires_at - now``.
- A working engram (the turn being integrated) is short-term from the next tick on; the kind
  change is derived from ``created_tick`` when read, never written by a pass over the rows.
- Recall used by a turn, and explicit reinforcement, earn lifespan. A long-term engram
  converts earned lifespan into ``1 / long_term_decay`` times as many ticks: it ages slower.
- A short-term engram that has earned ``promote_after`` in total becomes long-term and lives
  at least ``long_term_lifespan`` more ticks.
- Short-term memory holds at most ``short_term_capacity`` engrams: past it, those that will
  die soonest are settled now, consolidated into long-term memory if they earned at least
  half of ``promote_after``, dead otherwise (:func:`consolidates`).
- Links strengthen with a saturating rule ``w + gain * (max - w)`` (bounded by construction)
  and decay lazily: the stored weight is as of its ``tick`` and halves every
  ``link_half_life`` ticks after that.
"""

from __future__ import annotations

import numpy as np

from engramdb.settings import Settings
from engramdb.types import LONG_TERM, SHORT_TERM, WORKING


def effective_kind(kind: np.ndarray, created: np.ndarray, now: int) -> np.ndarray:
    """Kinds as of tick ``now``: a working engram from an earlier tick is short-term."""
    return np.where((kind == WORKING) & (created < now), SHORT_TERM, kind).astype(np.int8)


def recall_reward(rank: int, settings: Settings) -> float:
    """Lifespan earned by the hit at 0-based ``rank`` of a recall that a turn used."""
    return settings.recall_reward / (rank + 1)


def apply_reward(
    kind: int, expires_at: float, earned: float, amount: float, now: int, settings: Settings
) -> tuple[int, float, float]:
    """Return ``(kind, expires_at, earned)`` after earning ``amount`` lifespan at ``now``.

    A negative amount shortens life (the application says a memory was wrong or unwanted);
    it never counts towards promotion.
    """
    if kind == WORKING:
        kind = SHORT_TERM if amount else kind
    rate = settings.long_term_decay if kind == LONG_TERM else 1.0
    expires_at = expires_at + amount / max(rate, 1e-9)
    if amount > 0:
        earned += amount
    if kind != LONG_TERM and earned >= settings.promote_after:
        kind = LONG_TERM
        expires_at = max(expires_at, now + settings.long_term_lifespan)
    return kind, expires_at, earned


def consolidates(earned: float, settings: Settings) -> bool:
    """Whether a short-term engram settled by the capacity rule (earned ``earned`` so far)
    becomes long-term rather than dying."""
    return earned >= settings.promote_after / 2


def decayed_weight(weight: np.ndarray | float, since: np.ndarray | float, now: int,
                   settings: Settings) -> np.ndarray | float:
    """A link's weight at ``now``, given its stored weight as of tick ``since``."""
    age = np.maximum(0, np.asarray(now, np.float64) - since)
    return weight * np.power(0.5, age / max(settings.link_half_life, 1e-9))


def strengthened(weight_now: float, gain: float, settings: Settings) -> float:
    """The weight after one co-firing: a step of ``gain`` towards ``link_max``, never past it."""
    gain = min(max(gain, 0.0), 1.0)
    return weight_now + gain * (settings.link_max - weight_now)
