"""Which labels a vector index holds, and whether each is live or marked deleted.

The index's labels are the store's eids: non-negative integers handed out densely from 0.
One byte per label up to the largest (1 MB at 1M engrams) answers every question the index
asks with an array operation: membership, the sorted live labels, the live ones among a
filter's. Python sets of the same 1M ints took 0.3 s to build on every open and 35 MB.
"""

from __future__ import annotations

import numpy as np

from engramdb.errors import InvalidInput

#: Largest label accepted. The state costs one byte per label up to the largest, so labels
#: must be dense (eids are: one per engram ever written); this bounds it at 4 GiB.
MAX_LABEL = (1 << 32) - 1

_ABSENT, _LIVE, _DEAD = 0, 1, 2


class LabelStates:
    """Per label: absent, live, or dead (marked deleted; its bytes stay in the graph).

    Not thread-safe by itself: the index calls it under its own lock. Labels passed in must
    be int64 arrays of non-negative values at most :data:`MAX_LABEL` (the index checks them).

    Example::

        st = LabelStates.from_arrays(np.array([0, 2]), np.array([5]))
        st.live()          # array([0, 2])
        st.set_dead(np.array([2, 9]))   # array([2]): only live labels die
    """

    def __init__(self) -> None:
        self._state = np.zeros(0, np.uint8)
        self.n_live = 0
        self.n_dead = 0
        self._top = -1

    @classmethod
    def from_arrays(cls, live: np.ndarray, dead: np.ndarray) -> LabelStates:
        """States from saved label lists. Raises ValueError when a label is negative, too
        large, or listed twice (within a list or in both)."""
        out = cls()
        top = max(int(live.max()) if len(live) else -1, int(dead.max()) if len(dead) else -1)
        for arr in (live, dead):
            if len(arr) and int(arr.min()) < 0:
                raise ValueError("negative label")
        if top > MAX_LABEL:
            raise ValueError(f"label {top} is past the largest supported ({MAX_LABEL})")
        state = np.zeros(top + 1, np.uint8)
        state[live] = _LIVE
        state[dead] = _DEAD
        n_live = int(np.count_nonzero(state == _LIVE))
        n_dead = int(np.count_nonzero(state == _DEAD))
        if n_live != len(live) or n_dead != len(dead):
            raise ValueError("a label is listed twice")
        out._state, out.n_live, out.n_dead, out._top = state, n_live, n_dead, top
        return out

    @property
    def max_label(self) -> int:
        """The largest label ever held (live or dead), or -1. (A label is never dropped.)"""
        return self._top

    def __len__(self) -> int:
        """The number of live labels."""
        return self.n_live

    def is_live(self, label: int) -> bool:
        """Whether ``label`` is live."""
        return 0 <= label < len(self._state) and self._state[label] == _LIVE

    def _of(self, labels: np.ndarray) -> np.ndarray:
        """The state of each label (absent past the array)."""
        inside = labels < len(self._state)
        if inside.all():
            return self._state[labels]
        out = np.zeros(len(labels), np.uint8)
        out[inside] = self._state[labels[inside]]
        return out

    def count_new(self, labels: np.ndarray) -> int:
        """How many of ``labels`` (distinct) are neither live nor dead."""
        return int(np.count_nonzero(self._of(labels) == _ABSENT))

    def reserve(self, top: int) -> None:
        """Make room for labels up to ``top`` (the only step that allocates)."""
        if top > MAX_LABEL:
            raise InvalidInput(f"label {top} is past the largest supported ({MAX_LABEL})")
        if top >= len(self._state):
            grown = np.zeros(max(top + 1, 2 * len(self._state)), np.uint8)
            grown[:len(self._state)] = self._state
            self._state = grown

    def set_live(self, labels: np.ndarray) -> None:
        """Make ``labels`` (distinct) live, whatever they were."""
        if len(labels) == 0:
            return
        top = int(labels.max())
        self.reserve(top)
        was = self._state[labels]
        self.n_live += int(np.count_nonzero(was != _LIVE))
        self.n_dead -= int(np.count_nonzero(was == _DEAD))
        self._state[labels] = _LIVE
        self._top = max(self._top, top)

    def set_dead(self, labels: np.ndarray) -> np.ndarray:
        """Mark the live ones of ``labels`` dead; returns them (distinct, sorted)."""
        hit = self.live_among(labels)
        self._state[hit] = _DEAD
        self.n_live -= len(hit)
        self.n_dead += len(hit)
        return hit

    def live_among(self, labels: np.ndarray) -> np.ndarray:
        """The distinct live labels of ``labels``, sorted."""
        u = np.unique(labels)
        return u[self._of(u) == _LIVE]

    def live(self) -> np.ndarray:
        """Every live label, sorted (int64)."""
        return np.flatnonzero(self._state == _LIVE).astype(np.int64, copy=False)

    def dead(self) -> np.ndarray:
        """Every dead label, sorted (int64)."""
        return np.flatnonzero(self._state == _DEAD).astype(np.int64, copy=False)

    def holds_exactly(self, labels: np.ndarray) -> bool:
        """Whether ``labels`` is every held label (live or dead), each once, in any order."""
        n_held = self.n_live + self.n_dead
        if len(labels) != n_held:
            return False
        if n_held == 0:
            return True
        if int(labels.min()) < 0 or int(labels.max()) >= len(self._state):
            return False
        if not self._state[labels].all():  # one is not held
            return False
        seen = np.zeros(len(self._state), bool)
        seen[labels] = True
        return int(np.count_nonzero(seen)) == n_held  # fewer: one is listed twice
