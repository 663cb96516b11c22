"""Writer process for the crash tests: ingests batches forever, logging each acknowledgement.

Usage: crash_writer.py STORE ACK_LOG SEED. After every ``ingest_many`` returns, the ids it
acknowledged are appended to ACK_LOG and fsynced; the parent SIGKILLs this process at random
moments and checks that every logged id survived.
"""

import json
import os
import random
import sys

import engramdb
from engramdb.encoders import HashingEncoder

WORDS = "oscar guinea pig paris sister carrots weather rain coffee piano guitar train".split()


def main() -> None:
    store, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    settings = engramdb.Settings(segment_bytes=64 * 1024, batch_rows=64)
    mem = engramdb.open(store, encoder=HashingEncoder(dim=32), settings=settings)
    with open(log_path, "a", encoding="utf-8") as log:
        n = 0
        while True:
            size = rng.randint(1, 300)
            texts = []
            for _ in range(size):
                n += 1
                if rng.random() < 0.1:  # repeats exercise dedup under crashes too
                    texts.append(f"repeat {rng.randint(0, 20)}")
                else:
                    words = " ".join(rng.choices(WORDS, k=6))
                    texts.append(f"{seed}-{n} {words}")
            results = mem.ingest_many(texts, sessions=[f"s{seed}"] * size)
            lines = "".join(
                json.dumps({"id": r.id, "text": t}) + "\n" for r, t in zip(results, texts)
            )
            log.write(lines)
            log.flush()
            os.fsync(log.fileno())


if __name__ == "__main__":
    main()
