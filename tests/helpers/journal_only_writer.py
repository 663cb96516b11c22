"""Writer process for the crash test of stores without a catalog file: write turns forever.

Usage: journal_only_writer.py STORE ACK_LOG SEED. A new store keeps its turns in its journal
alone until ``journal_only_turns`` of them wait (10 to 60 here), then its first fold writes
the catalog. After every ``integrate`` (or single ``ingest``) returns, its id and text are
appended to ACK_LOG and fsynced; now and then a bulk load is logged the same way once it
returns: ``ingest_many`` of 2 to 90 texts (records of up to 64 texts, their heads
compressed), or of 100 to 600, which makes the first fold due by itself and so goes to the
catalog at once (the first fold inside the call, then one catalog
commit). Every few turns the store is closed (no fold while it has no catalog) and opened
again (its journal replays, the vectors held in memory), so kills land in appends, in
replays on open, in closes, and in the first fold (the catalog built under a temporary name,
renamed, recorded in the manifest, filled), which also comes once
``journal_only_bytes`` (8-64 KiB here) of records wait.
"""

import json
import os
import random
import sys

from turn_writer import write_turn  # this directory is the script's: sys.path[0]

import engramdb
from engramdb.encoders import HashingEncoder


def main() -> None:
    store, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    settings = {"journal_only_turns": rng.randint(10, 60), "short_term_capacity": 40,
                "journal_only_bytes": rng.randint(8, 64) * 1024}
    enc = HashingEncoder(dim=32)
    mem = engramdb.open(store, encoder=enc, settings=settings)
    reopen_every = rng.randint(2, 8)
    with open(log_path, "a", encoding="utf-8") as log:
        n = 0
        while True:
            n += 1
            if rng.random() < 0.1:
                _bulk(mem, rng, seed, n, log)
            else:
                write_turn(mem, rng, seed, n, log)
            if n % reopen_every == 0:
                mem.close()
                mem = engramdb.open(store, encoder=enc)


def _bulk(mem: engramdb.Store, rng: random.Random, seed: int, n: int, log) -> None:
    """A small bulk load, logged (fsynced) once ``ingest_many`` returns."""
    texts = [f"{seed}-{n}-{k} bulk note about the weather and the piano lessons"
             for k in range(rng.randint(2, 90) if rng.random() < 0.7 else rng.randint(100, 600))]
    # Long-term: the capacity rule (short_term_capacity 40) would rightly erase most of them.
    results = mem.ingest_many(texts, roles=["user"] * len(texts), kind="long_term")
    for result, text in zip(results, texts, strict=True):
        log.write(json.dumps({"id": result.id, "text": text}) + "\n")
    log.flush()
    os.fsync(log.fileno())


if __name__ == "__main__":
    main()
