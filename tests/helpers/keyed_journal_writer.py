"""Writer process for tests/test_crash_journal_keys.py: keyed writes that all stay in the
turn journal, until killed.

Usage: keyed_journal_writer.py STORE ACK_LOG SEED. The writer opens STORE with fold
thresholds no run reaches, then applies :func:`make_ops` (SEED)'s operations in order:
ingests of new keys, upserts of stored keys with the same text or a new one, upserts of
several keys, ``forget(keys=)``, integrated turns and plain ingests. Every one of them is a
turn: one record appended to the journal, nothing folded into the catalog. After each call
returns it appends ``{"op": "ack", "i": N}`` to ACK_LOG (fsynced); when the list is done it
waits to be killed, so the kill always finds the journal unfolded.

The parent rebuilds the same operations from SEED and applies the acknowledged ones to a
store that commits every write to the catalog (``journal_max_engrams=0``): the killed store,
once reopened (its journal replayed), must hold exactly those rows, or those plus the
operation in flight at the kill.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

import engramdb
from engramdb.encoders import HashingEncoder

try:  # run as a script: its own folder is on sys.path
    from crash_ops import WORDS, AckLog
except ImportError:  # imported by the test, which rebuilds the operations
    from tests.helpers.crash_ops import WORDS, AckLog

DIM = 32
OPS = 400
# No fold before the kill; the capacity rule runs in the turn path too.
SETTINGS = {"journal_fold_turns": 10**6, "journal_fold_bytes": 2**30,
            "short_term_capacity": 30}
SHARED = [f"shared text {j} " + " ".join(WORDS[j:j + 3]) for j in range(6)]

Op = tuple[Any, ...]


def make_ops(seed: int, n: int = OPS) -> list[Op]:
    """``n`` operations, each valid on the store the ones before it leave (a model of the
    stored keys decides which keys an upsert or a forget names)."""
    rng = random.Random(seed)
    stored: dict[str, str] = {}
    ops: list[Op] = []
    counter = 0

    def text() -> str:
        nonlocal counter
        if rng.random() < 0.35:
            return rng.choice(SHARED)  # several keys hold one engram
        counter += 1
        return f"{seed}-{counter} " + " ".join(rng.choices(WORDS, k=5))

    def new_key() -> str:
        nonlocal counter
        counter += 1
        return f"k{counter}"

    def label(values: list[str | None]) -> str | None:
        return rng.choice(values)

    for i in range(n):
        r = rng.random()
        keys = sorted(stored)
        if r < 0.2 or not keys:
            key, t = new_key(), text()
            ops.append(("ingest_key", key, t, label(["user", "bot", None]),
                        label(["s1", "s2", None]), i))
            stored[key] = t
        elif r < 0.45:
            key = rng.choice(keys)
            t = stored[key] if rng.random() < 0.5 else text()
            ops.append(("upsert", key, t, label(["user", "bot"]), label(["s1", "s2", None]),
                        i))
            stored[key] = t
        elif r < 0.55:
            chosen = rng.sample(keys, min(len(keys), rng.randint(1, 3))) + [
                new_key() for _ in range(rng.randint(0, 2))]
            texts = [stored[k] if k in stored and rng.random() < 0.4 else text()
                     for k in chosen]
            ops.append(("upsert_many", chosen, texts, i))
            stored.update(zip(chosen, texts))
        elif r < 0.7:
            gone = rng.sample(keys, min(len(keys), rng.randint(1, 3)))
            ops.append(("forget_keys", gone))
            for k in gone:
                del stored[k]
        elif r < 0.9:
            ops.append(("integrate", " ".join(rng.choices(WORDS, k=4)),
                        label(["user", "bot"]), label(["s1", "s2"])))
        else:
            ops.append(("ingest", text(), label(["s1", None])))
    return ops


def apply(mem: engramdb.Store, op: Op) -> None:
    """Make the call ``op`` describes."""
    kind = op[0]
    if kind == "ingest_key":
        _, key, text, role, session, w = op
        mem.ingest(text, key=key, role=role, session=session, metadata={"w": w})
    elif kind == "upsert":
        _, key, text, role, session, w = op
        mem.upsert(key, text, role=role, session=session, metadata={"w": w})
    elif kind == "upsert_many":
        _, keys, texts, w = op
        mem.upsert_many(keys, texts, metadatas=[{"w": w}] * len(keys))
    elif kind == "forget_keys":
        mem.forget(keys=op[1])
    elif kind == "integrate":
        _, text, role, session = op
        mem.integrate(text, role=role, session=session, top_k=3)
    else:
        _, text, session = op
        mem.ingest(text, session=session)


def main() -> None:
    """Apply the seed's operations, acknowledging each, then wait for the kill."""
    store, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = AckLog(log_path)
    # Odd seeds: a store with its catalog from the start; even ones: a store without one,
    # whose writes all stay in its journal (no first fold is due).
    settings = {**SETTINGS, "journal_only_turns": 0 if seed % 2 else 10**6}
    mem = engramdb.open(store, encoder=HashingEncoder(dim=DIM), settings=settings)
    log.write(op="open")
    for i, op in enumerate(make_ops(seed)):
        apply(mem, op)
        log.write(op="ack", i=i)
    while True:  # the kill comes while every acknowledged write is still in the journal
        time.sleep(1)


if __name__ == "__main__":
    main()
