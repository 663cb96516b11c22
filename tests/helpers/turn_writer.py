"""Writer process for the turn-path crash tests: integrate turns forever, logging each one.

Usage: turn_writer.py STORE ACK_LOG SEED. After every ``integrate`` (or single ``ingest``)
returns, its id and text are appended to ACK_LOG and fsynced. The journal folds every few
turns (``journal_fold_turns`` 2-9), so kills land in journal appends, in folds and in the
checkpoints of close as well; every 25th turn the store is closed and opened again.
"""

import json
import os
import random
import sys

import engramdb
from engramdb.encoders import HashingEncoder

WORDS = "oscar guinea pig paris sister carrots weather rain coffee piano guitar train".split()


def write_turn(mem: engramdb.Store, rng: random.Random, seed: int, n: int, log) -> None:
    """Integrate (or ingest) turn ``n``, then log it as acknowledged (fsynced)."""
    if rng.random() < 0.1:  # repeats exercise dedup and revival under crashes too
        text = f"repeat {rng.randint(0, 20)}"
    else:
        text = f"{seed}-{n} " + " ".join(rng.choices(WORDS, k=6))
    if rng.random() < 0.8:
        ident = mem.integrate(text, role=rng.choice(["user", "bot"]),
                              session=f"s{seed % 3}", metadata={"n": n}).id
    else:
        ident = mem.ingest(text, pin=rng.random() < 0.2).id
    log.write(json.dumps({"id": ident, "text": text}) + "\n")
    log.flush()
    os.fsync(log.fileno())


def main() -> None:
    store, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    settings = {"journal_fold_turns": rng.randint(2, 9), "short_term_capacity": 40}
    enc = HashingEncoder(dim=32)
    mem = engramdb.open(store, encoder=enc, settings=settings)
    with open(log_path, "a", encoding="utf-8") as log:
        n = 0
        while True:
            n += 1
            write_turn(mem, rng, seed, n, log)
            if n % 25 == 0:
                mem.close()
                mem = engramdb.open(store, encoder=enc)


if __name__ == "__main__":
    main()
