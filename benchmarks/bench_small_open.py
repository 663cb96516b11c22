"""The open of a small store (the replay of its turn journal), old code against new.

Run by hand. A store without a catalog file keeps its turns in its journal alone and an open
replays them; this times that open, and the turn and close after it, on stores each side
builds with its own code: users bulk-loaded with 100 LoCoMo turns (``ingest_many``, a
returning user of ``bench_turns.py``) and users written 10 turns by ``integrate`` (its cold
user). Each measurement runs in its own process, old and new alternating; each process
opens every user three times (a turn each time) and prints the medians.

    python benchmarks/bench_small_open.py --old /tmp/old --rounds 3

``--old`` is a checkout of the earlier code, put first on PYTHONPATH. Texts are LoCoMo
turns read at run time (``../shared/data/locomo/locomo-dev.json``; CC BY-NC 4.0, never
copied here); vectors are ``HashingEncoder(dim=384)``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCOMO = HERE.parents[1] / "shared" / "data" / "locomo" / "locomo-dev.json"


def _worker(users: int, work: Path) -> dict[str, float]:
    import engramdb
    from engramdb.encoders import HashingEncoder

    # Only now: importing bench_turns puts this checkout first on sys.path.
    sys.path.insert(0, str(HERE))
    from bench_turns import locomo_turns

    texts, roles, _ = locomo_turns(LOCOMO)
    texts, roles = texts * 8, roles * 8  # (the dev split holds ~1,450 distinct turns)
    enc = HashingEncoder(dim=384)
    for u in range(users):
        with engramdb.open(work / f"bulk{u}", encoder=enc) as mem:
            part = slice(u * 100, (u + 1) * 100)
            mem.ingest_many(texts[part], vectors=enc.encode(texts[part]), roles=roles[part])
        with engramdb.open(work / f"turn{u}", encoder=enc) as mem:
            for i in range(3000 + u * 10, 3010 + u * 10):
                mem.integrate(texts[i], top_k=5, role=roles[i])
    out: dict[str, float] = {}
    for kind in ("bulk", "turn"):
        times: dict[str, list[float]] = {"open": [], "turn": [], "close": [], "total": []}
        for rep in range(3):
            for u in range(users):
                t0 = time.perf_counter()
                mem = engramdb.open(work / f"{kind}{u}", encoder=enc)
                t1 = time.perf_counter()
                mem.integrate(texts[7000 + u * 7 + rep], top_k=5, role="user")
                t2 = time.perf_counter()
                mem.close()
                t3 = time.perf_counter()
                for key, value in (("open", t1 - t0), ("turn", t2 - t1), ("close", t3 - t2),
                                   ("total", t3 - t0)):
                    times[key].append(value * 1e3)
        out.update({f"{kind}_{k}_ms": statistics.median(v) for k, v in times.items()})
    return out


def _source() -> str:
    """Where the engramdb a worker ran comes from (printed with its figures)."""
    import engramdb

    return str(Path(engramdb.__file__).parent)


def main() -> None:
    """Alternate old and new worker processes; print each run and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=False)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        print(json.dumps({"src": _source(), **_worker(a.users, a.worker)}))
        return
    if a.old is None:
        parser.error("--old DIR is required")
    if not LOCOMO.exists():
        parser.error(f"{LOCOMO} is missing (the LoCoMo data, see its README)")
    results: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for _ in range(a.rounds):
        for side in ("old", "new"):
            env = dict(os.environ)
            if side == "old":
                env["PYTHONPATH"] = f"{a.old}{os.pathsep}{env.get('PYTHONPATH', '')}"
            work = Path(tempfile.mkdtemp(prefix=f"small-open-{side}-"))
            try:
                done = subprocess.run([sys.executable, __file__, "--users", str(a.users),
                                       "--worker", str(work)], env=env, check=True,
                                      capture_output=True, text=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            got = json.loads(done.stdout.strip().splitlines()[-1])
            src = got.pop("src")
            print(side, src, json.dumps({k: round(v, 2) for k, v in got.items()}), flush=True)
            for key, value in got.items():
                results[side].setdefault(key, []).append(value)
    for side, metrics in results.items():
        print(side, {k: round(statistics.median(v), 2) for k, v in metrics.items()})


if __name__ == "__main__":
    main()
