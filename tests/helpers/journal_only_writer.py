"""Writer process for the crash test of stores without a catalog file: write turns forever.

Usage: journal_only_writer.py STORE ACK_LOG SEED. A new store keeps its turns in its journal
alone until ``journal_only_turns`` of them wait (10 to 60 here), then its first fold writes
the catalog. After every ``integrate`` (or single ``ingest``) returns, its id and text are
appended to ACK_LOG and fsynced; every few turns the store is closed (no fold while it has
no catalog) and opened again (its journal replays), so kills land in appends, in replays on
open, in closes, and in the first fold (the catalog built under a temporary name, renamed,
recorded in the manifest, filled).
"""

import random
import sys

from turn_writer import write_turn  # this directory is the script's: sys.path[0]

import engramdb
from engramdb.encoders import HashingEncoder


def main() -> None:
    store, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    settings = {"journal_only_turns": rng.randint(10, 60), "short_term_capacity": 40}
    enc = HashingEncoder(dim=32)
    mem = engramdb.open(store, encoder=enc, settings=settings)
    reopen_every = rng.randint(2, 8)
    with open(log_path, "a", encoding="utf-8") as log:
        n = 0
        while True:
            n += 1
            write_turn(mem, rng, seed, n, log)
            if n % reopen_every == 0:
                mem.close()
                mem = engramdb.open(store, encoder=enc)


if __name__ == "__main__":
    main()
