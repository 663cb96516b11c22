"""Writer process for the keyed crash tests: caller keys mixed with turns, until killed.

Usage: keyed_writer.py STORE ACK_LOG SEED. In a loop it integrates turns and ingests unkeyed
texts (the turn journal), ingests new keys (``ingest(key=)``, ``ingest_many(keys=)``, some
texts of the call without a key: the journal too), upserts stored keys with the same text
(only the occurrence is replaced) or a new one (the old occurrence goes, and its engram is
erased if that was its last), upserts new keys, upserts many keys at once (stored and new),
and forgets keys (``forget(keys=)``): all of these take the turn journal (a call of several
batches, in the ``batch_rows=3`` runs, appends one record per batch). The journal folds
every few records, and every 4-25 operations (per run) the store is closed and opened again.

ACK_LOG gets one JSON line per event, fsynced:

- before a keyed write: ``{"op": "intent", "i": N, "kind": ..., "keys": [...], "texts":
  [...], "w": [...], "batch": B}`` (``texts`` None for a forget; ``w`` is the occurrence's
  ``metadata["w"]``, which tells two upserts of the same text apart; ``B`` is the store's
  ``batch_rows``: a call of several batches commits batch by batch; ``pos``, for an
  ``ingest_many`` with unkeyed texts, the keyed texts' places in the call);
- after it returned: ``{"op": "ack", "i": N, "ids": [...]}`` (the ids of the keyed texts);
- after a turn (or an unkeyed text of a keyed ``ingest_many``) returned: ``{"op": "turn",
  "id": ..., "text": ...}``.

So an ``intent`` without its ``ack`` is the write the kill interrupted: it may or may not
have landed (batch by batch), and the parent accepts either. Every keyed text is pinned, so
the lifespan engine never kills what a key holds; keyed texts (``kt``/``shared`` prefixes)
never occur in turns. On start the writer asks the store which of the keys in the log are
stored (the parent's log cannot know how the last interrupted write ended).
"""

from __future__ import annotations

import json
import os
import random
import sys
from typing import Any

# Run as a script: its own folder is on sys.path. The fsynced log and the words are the
# crash-point campaign's.
from crash_ops import WORDS, AckLog

import engramdb
from engramdb.encoders import HashingEncoder

DIM = 32
SHARED = 6  # texts "shared j" that several keys hold at once (one engram, many occurrences)


def _logged_keys(path: str) -> list[str]:
    keys: set[str] = set()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if e.get("op") == "intent":
                    keys.update(e["keys"])
    return sorted(keys)


class Writer:
    def __init__(self, store: str, log_path: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.store = store
        self.enc = HashingEncoder(dim=DIM)
        # Small batches now and then: an upsert_many / ingest_many of several batches.
        self.settings = {"journal_fold_turns": self.rng.randint(2, 9),
                         "short_term_capacity": 40,
                         "batch_rows": self.rng.choice([3, 4096])}
        self.mem = engramdb.open(store, encoder=self.enc, settings=self.settings)
        held = self.mem.get_keys(_logged_keys(log_path))
        self.live: dict[str, str] = {k: e.text for k, e in held.items()}  # key -> text
        self.log = AckLog(log_path)
        self.n = 0
        self.ops = 0

    # -- text and key makers ------------------------------------------------------------------

    def _key(self) -> str:
        self.n += 1
        return f"k{self.seed}-{self.n}"

    def _keyed_text(self) -> str:
        if self.rng.random() < 0.25:
            return f"shared {self.rng.randrange(SHARED)}"
        self.n += 1
        return f"kt {self.seed}-{self.n} " + " ".join(self.rng.choices(WORDS, k=5))

    def _turn_text(self) -> str:
        if self.rng.random() < 0.1:  # repeats: dedup and revival under crashes
            return f"repeat {self.rng.randint(0, 20)}"
        self.n += 1
        return f"{self.seed}-{self.n} " + " ".join(self.rng.choices(WORDS, k=6))

    def _stored(self, k: int) -> list[str]:
        return self.rng.sample(sorted(self.live), min(k, len(self.live)))

    # -- operations ---------------------------------------------------------------------------

    def _keyed(self, kind: str, keys: list[str], texts: list[str] | None, call: Any,
               pos: list[int] | None = None) -> None:
        self.ops += 1
        i = f"{self.seed}-{self.ops}"
        w = [(self.seed * 10**6 + self.ops) * 100 + j for j in range(len(keys))]
        self.log.write(op="intent", i=i, kind=kind, keys=keys, texts=texts, w=w,
                       batch=self.mem.settings.batch_rows, pos=pos)
        ids = call(w)
        self.log.write(op="ack", i=i, ids=ids)
        for j, k in enumerate(keys):
            if texts is None:
                self.live.pop(k, None)
            else:
                self.live[k] = texts[j]

    def turn(self) -> None:
        text = self._turn_text()
        if self.rng.random() < 0.8:
            ident = self.mem.integrate(text, role=self.rng.choice(["user", "bot"]),
                                       session=f"s{self.seed % 3}", metadata={"n": self.n}).id
        else:
            ident = self.mem.ingest(text, pin=self.rng.random() < 0.2).id
        self.log.write(op="turn", id=ident, text=text)

    def ingest_key(self) -> None:
        key, text = self._key(), self._keyed_text()
        self._keyed("ingest", [key], [text], lambda w: [self.mem.ingest(
            text, key=key, pin=True, metadata={"w": w[0]}, role="user").id])

    def ingest_many_keys(self) -> None:
        n = self.rng.randint(2, 7)
        keys = [self._key() if self.rng.random() < 0.8 else None for _ in range(n)]
        texts = [self._keyed_text() if k is not None else self._turn_text() for k in keys]
        idx = [j for j, k in enumerate(keys) if k is not None]
        if not idx:
            return
        turns: list[tuple[str, str]] = []

        def call(w: list[int]) -> list[str]:
            metas: list[dict[str, int] | None] = [None] * n
            for j, wj in zip(idx, w):
                metas[j] = {"w": wj}
            res = self.mem.ingest_many(texts, keys=keys, metadatas=metas,
                                       pins=[k is not None for k in keys])
            turns.extend((res[j].id, texts[j]) for j in range(n) if keys[j] is None)
            return [res[j].id for j in idx]

        self._keyed("ingest_many", [keys[j] for j in idx],  # type: ignore[misc]
                    [texts[j] for j in idx], call, pos=idx)
        for ident, text in turns:
            self.log.write(op="turn", id=ident, text=text)

    def upsert(self) -> None:
        stored = self._stored(1)
        if stored and self.rng.random() < 0.85:
            key = stored[0]
            same = self.rng.random() < 0.5
            text = self.live[key] if same else self._keyed_text()
        else:
            key, text = self._key(), self._keyed_text()
        self._keyed("upsert", [key], [text], lambda w: [self.mem.upsert(
            key, text, pin=True, metadata={"w": w[0]}, role="bot").id])

    def upsert_many(self) -> None:
        keys = self._stored(self.rng.randint(1, 6))
        keys += [self._key() for _ in range(self.rng.randint(0, 3))]
        if not keys:
            return
        self.rng.shuffle(keys)
        texts = [self.live[k] if k in self.live and self.rng.random() < 0.4
                 else self._keyed_text() for k in keys]
        self._keyed("upsert_many", keys, texts, lambda w: [r.id for r in self.mem.upsert_many(
            keys, texts, pins=[True] * len(keys), metadatas=[{"w": x} for x in w])])

    def forget(self) -> None:
        keys = self._stored(self.rng.randint(1, 3))
        if not keys:
            return

        def call(w: list[int]) -> list[str]:
            assert self.mem.forget(keys=keys) == len(keys)
            return []

        self._keyed("forget", keys, None, call)

    def run(self) -> None:
        ops = [(self.turn, 35), (self.ingest_key, 15), (self.ingest_many_keys, 8),
               (self.upsert, 22), (self.upsert_many, 8), (self.forget, 12)]
        funcs, weights = zip(*ops)
        reopen = self.rng.randint(4, 25)
        step = 0
        while True:
            step += 1
            self.rng.choices(funcs, weights)[0]()
            if step % reopen == 0:
                self.mem.close()
                self.mem = engramdb.open(self.store, encoder=self.enc)


def main() -> None:
    Writer(sys.argv[1], sys.argv[2], int(sys.argv[3])).run()


if __name__ == "__main__":
    main()
