"""Stateful property test: random sequences of store operations against a model of liveness.

The model follows docs/lifespan.md conservatively. For each id it keeps the text, whether it
is pinned, and ``lb``, a lower bound on its ``expires_at``: ingesting at tick t gives
``t + short_term_lifespan`` (content said again: at least that), ``reinforce(amount > 0)``
adds at least ``amount`` (a long-term engram gets ``amount / long_term_decay``), and no rule
used here ever shortens a life. While nothing may have rewarded an engram since it was last
ingested (``exact``), ``lb`` is its exact expiry. So:

- ``now < lb`` (or pinned): the engram **must** be alive, with its text, and recall by its
  own vector finds it;
- ``exact and now >= lb``, or forgotten: it **must** be dead (``id not in store``);
- otherwise (an ``integrate`` may have rewarded it) the model does not claim either.

Rules: ingest, ingest_many, recall by vector, integrate, reinforce, forget, tick, gc,
rebuild, close/reopen. ``verify()`` must be clean at teardown. ``ENGRAMDB_STATEFUL_EXAMPLES``
raises the number of examples (default 15).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

import engramdb
from engramdb.content import content_id, normalize_text
from engramdb.encoders import FunctionEncoder

DIM = 8
SHORT, LONG, REWARD = 6.0, 40.0, 3.0
SETTINGS = {
    "short_term_lifespan": SHORT, "long_term_lifespan": LONG, "recall_reward": REWARD,
    "promote_after": 6.0, "batch_rows": 3, "segment_bytes": 4096,
}
TEXTS = [f"memory number {k} about {w}" for k, w in
         enumerate("oscar paris rain coffee piano train sister carrots guitar weather".split()
                   * 2)]
EXAMPLES = int(os.environ.get("ENGRAMDB_STATEFUL_EXAMPLES", "15"))


def _embed(texts: list[str]) -> np.ndarray:
    """A deterministic pseudo-random unit vector per text (no two texts collide in practice)."""
    out = np.empty((len(texts), DIM), np.float32)
    for i, t in enumerate(texts):
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
        out[i] = np.random.default_rng(seed).normal(size=DIM)
    return out


ENC = FunctionEncoder(_embed, dim=DIM, name="state-machine-v1")


@dataclass
class Known:
    """What the model knows about one content id."""

    text: str
    pinned: bool
    lb: float  # lower bound on expires_at
    exact: bool  # lb is the exact expiry (nothing could have rewarded it)


class StoreMachine(RuleBasedStateMachine):
    """Drives one store; the model is ``self.known`` + ``self.forgotten`` + ``self.now``."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="engram-sm-"))
        self.path = self.dir / "sm.engram"
        self.mem = engramdb.open(self.path, encoder=ENC, settings=SETTINGS)
        self.now = 0
        self.known: dict[str, Known] = {}
        self.forgotten: set[str] = set()

    # -- model helpers -----------------------------------------------------------------------

    def _id(self, text: str) -> str:
        return content_id(ENC.fingerprint, normalize_text(text))

    def _must_live(self, k: Known) -> bool:
        return k.pinned or self.now < k.lb

    def _must_be_dead(self, k: Known) -> bool:
        return not k.pinned and k.exact and self.now >= k.lb

    def _alive_ids(self) -> list[str]:
        return sorted(i for i, k in self.known.items() if self._must_live(k))

    def _said(self, text: str, pin: bool) -> None:
        """Model an ingest (or a turn) of ``text`` at ``self.now``."""
        ident = self._id(text)
        self.forgotten.discard(ident)
        k = self.known.get(ident)
        floor = self.now + SHORT
        if k is None or self._must_be_dead(k) and k.lb <= self.now:
            # New, or dead with an exactly known past: either revived or collected and new;
            # both give exactly now + SHORT.
            self.known[ident] = Known(text, pin, floor, True)
            return
        k.pinned = k.pinned or pin
        k.exact = k.exact and k.lb <= floor
        k.lb = max(k.lb, floor)

    # -- rules -------------------------------------------------------------------------------

    @rule(text=st.sampled_from(TEXTS), pin=st.booleans())
    def ingest(self, text: str, pin: bool) -> None:
        result = self.mem.ingest(text, pin=pin)
        assert result.id == self._id(text)
        self._said(text, pin)

    @rule(texts=st.lists(st.sampled_from(TEXTS), min_size=1, max_size=8),
          data=st.data())
    def ingest_many(self, texts: list[str], data: Any) -> None:
        pins = data.draw(st.lists(st.booleans(), min_size=len(texts), max_size=len(texts)))
        results = self.mem.ingest_many(texts, pins=pins)
        assert [r.id for r in results] == [self._id(t) for t in texts]
        for t, p in zip(texts, pins):
            self._said(t, p)

    @precondition(lambda self: self._alive_ids())
    @rule(data=st.data())
    def recall_by_vector(self, data: Any) -> None:
        ident = data.draw(st.sampled_from(self._alive_ids()))
        hits = self.mem.recall(vector=_embed([self.known[ident].text])[0], top_k=3)
        assert hits and hits[0].id == ident, (ident, [h.id for h in hits])
        for h in hits:
            k = self.known.get(h.id)
            assert k is not None and not self._must_be_dead(k), f"dead {h.id} recalled"
            assert h.text == normalize_text(k.text)

    @rule(text=st.sampled_from(TEXTS), top_k=st.integers(1, 4))
    def integrate(self, text: str, top_k: int) -> None:
        self.mem.integrate(text, top_k=top_k)
        self.now += 1
        # Anything alive may have been recalled and rewarded: its expiry is now only bounded.
        for k in self.known.values():
            if not self._must_be_dead(k):
                k.exact = False
        self._said(text, False)

    @precondition(lambda self: self._alive_ids())
    @rule(data=st.data(), amount=st.sampled_from([1.0, 4.0, 16.0]))
    def reinforce(self, data: Any, amount: float) -> None:
        ids = data.draw(st.lists(st.sampled_from(self._alive_ids()), min_size=1, max_size=3))
        self.mem.reinforce(ids, amount)
        for i in set(ids):
            k = self.known[i]
            k.lb += amount  # at least: a long-term engram gets amount / long_term_decay
            k.exact = False

    @precondition(lambda self: self._alive_ids())
    @rule(data=st.data())
    def forget(self, data: Any) -> None:
        ids = data.draw(st.lists(st.sampled_from(self._alive_ids()), min_size=1, max_size=3,
                                 unique=True))
        assert self.mem.forget(ids) == len(ids)
        for i in ids:
            del self.known[i]
            self.forgotten.add(i)

    @rule(n=st.integers(0, 8))
    def tick(self, n: int) -> None:
        assert self.mem.tick(n) == self.now + n
        self.now += n

    @rule()
    def gc(self) -> None:
        self.mem.gc()
        for i in [i for i, k in self.known.items() if self._must_be_dead(k)]:
            del self.known[i]  # collected: it is gone for good (a new ingest starts afresh)
            self.forgotten.add(i)

    @rule()
    def rebuild(self) -> None:
        self.mem.rebuild()

    @rule()
    def reopen(self) -> None:
        self.mem.close()
        self.mem = engramdb.open(self.path, encoder=ENC)
        assert self.mem.clock == self.now

    # -- checks ------------------------------------------------------------------------------

    @invariant()
    def liveness_matches_model(self) -> None:
        assert self.mem.clock == self.now
        for i, k in self.known.items():
            if self._must_live(k):
                assert i in self.mem, f"{k.text!r} must be alive at {self.now} (lb {k.lb})"
                assert self.mem.get(i).text == normalize_text(k.text)
            elif self._must_be_dead(k):
                assert i not in self.mem, f"{k.text!r} must be dead at {self.now} (lb {k.lb})"
        back = [i for i in self.forgotten if i in self.mem]
        assert not back, f"forgotten engrams came back: {back}"

    def teardown(self) -> None:
        try:
            if not self.mem.closed:
                report = self.mem.verify()
                assert report.ok, report.problems
                self.mem.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


StoreMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow], derandomize=True,
)
TestStoreMachine = StoreMachine.TestCase
