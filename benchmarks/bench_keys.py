"""What keyed operations cost next to ingest and recall, in one run on one store.

For each store size, a store is filled with ``--size`` keyed engrams (HashingEncoder, 384-d),
then each operation is timed ``--reps`` times, interleaved round by round so that machine
noise hits every row alike:

- ``ingest`` (unkeyed, the turn path) and ``ingest key=`` (a new key),
- ``upsert`` of a stored key with the same text (metadata replaced) and with a new text,
- ``get(key=)`` against ``get(id)``, ``forget(keys=)`` against ``forget(id)``,
- ``engrams(limit=10)`` (a listing page) and ``engrams(where=..., limit=10)``,
- ``recall`` top 5;

and the bulk rates of ``ingest_many`` and ``upsert_many`` (new keys, then the same keys with
new texts). The "alone" table times each write with no other call between them, once with
the turn journal (the default) and once with it off (``journal_max_engrams=0``: every write
a catalog commit, which is what replacing or removing a stored key cost before those took
the journal). Prints markdown tables (p50 in ms) for docs/benchmarks.md.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_keys.py --size 1000 --size 100000
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import engramdb
from engramdb.encoders import HashingEncoder

OPS = ("ingest", "ingest key=", "upsert same text", "upsert new text", "get(id)",
       "get(key=)", "forget(id)", "forget(keys=)", "engrams(limit=10)",
       "engrams(where, limit=10)", "recall top 5")


def _fill(mem: engramdb.Store, size: int) -> None:
    step = 10_000
    for start in range(0, size, step):
        n = min(step, size - start)
        mem.ingest_many([f"stored memory number {start + i} about topic {i % 97}"
                         for i in range(n)],
                        keys=[f"doc-{start + i}" for i in range(n)],
                        metadatas=[{"topic": i % 97} for i in range(n)])


def _round(mem: engramdb.Store, r: int, size: int, ids: list[str]
           ) -> dict[str, Callable[[], object]]:
    """One round's calls (fresh keys and texts each round, so nothing is a no-op);
    ``forget(id)`` is timed apart (its ingest is not what is timed)."""
    k = r % size
    target = f"doc-{k}"
    text = f"stored memory number {k} about topic {k % 97}"
    return {
        "ingest": lambda: mem.ingest(f"an unkeyed turn {r}"),
        "ingest key=": lambda: mem.ingest(f"a keyed turn {r}", key=f"new-{r}"),
        "upsert same text": lambda: mem.upsert(target, text, metadata={"round": r}),
        "upsert new text": lambda: mem.upsert(f"new-{r}", f"a keyed turn {r}, edited"),
        "get(id)": lambda: mem.get(ids[r % len(ids)]),
        "get(key=)": lambda: mem.get(key=target),
        "forget(keys=)": lambda: mem.forget(keys=[f"new-{r}"]),
        "engrams(limit=10)": lambda: mem.engrams(limit=10, offset=k),
        "engrams(where, limit=10)": lambda: mem.engrams(
            where={"metadata": {"topic": k % 97}}, limit=10),
        "recall top 5": lambda: mem.recall(f"topic {k % 97} memory", top_k=5),
    }


def _measure(path: Path, size: int, reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {op: [] for op in OPS}
    with engramdb.open(path, encoder=HashingEncoder(dim=384)) as mem:
        _fill(mem, size)
        mem.drain_index()  # a bulk load leaves the index building in the background
        ids = [e.id for e in mem.engrams(limit=200)]
        for r in range(reps):
            for op, call in _round(mem, r, size, ids).items():
                t = time.perf_counter()
                call()
                times[op].append(time.perf_counter() - t)
            rid = mem.ingest(f"to forget by id {r}").id
            t = time.perf_counter()
            mem.forget(rid)
            times["forget(id)"].append(time.perf_counter() - t)
        assert mem.verify().ok
    return {op: statistics.median(v) * 1e3 for op, v in times.items()}


def _bulk(path: Path, n: int) -> dict[str, float]:
    texts = [f"bulk memory {i} about topic {i % 89}" for i in range(n)]
    keys = [f"bulk-{i}" for i in range(n)]
    out = {}
    with engramdb.open(path / "plain", encoder=HashingEncoder(dim=384)) as mem:
        t = time.perf_counter()
        mem.ingest_many(texts)
        out["ingest_many"] = n / (time.perf_counter() - t)
    with engramdb.open(path / "keyed", encoder=HashingEncoder(dim=384)) as mem:
        t = time.perf_counter()
        mem.upsert_many(keys, texts)
        out["upsert_many (new keys)"] = n / (time.perf_counter() - t)
        t = time.perf_counter()
        mem.upsert_many(keys, [f"{x}, edited" for x in texts])
        out["upsert_many (new texts)"] = n / (time.perf_counter() - t)
        assert len(mem) == n and mem.verify().ok
    return out


ALONE = ("ingest", "upsert same text", "upsert new text", "forget(keys=)", "forget(id)")


def _alone(path: Path, reps: int) -> dict[str, dict[str, float]]:
    """Each write on its own (no read or other write between two calls of it, so no fold
    is counted but the journal's own every ``journal_fold_turns`` records), on 1,000 keyed
    engrams: {operation: {"on": p50 ms with the journal, "off": without}}."""
    out: dict[str, dict[str, list[float]]] = {op: {"on": [], "off": []} for op in ALONE}

    def timed(op: str, mode: str, call: Callable[[], object]) -> None:
        t = time.perf_counter()
        call()
        out[op][mode].append(time.perf_counter() - t)

    for mode in ("on", "off"):
        settings = None if mode == "on" else {"journal_max_engrams": 0}
        with engramdb.open(path / f"alone-{mode}", encoder=HashingEncoder(dim=384),
                           settings=settings) as mem:
            _fill(mem, 1000)
            for r in range(reps):
                timed("ingest", mode, lambda r=r: mem.ingest(f"an unkeyed turn {r}"))
            for r in range(reps):
                text = f"stored memory number {r} about topic {r % 97}"
                timed("upsert same text", mode, lambda r=r, t=text: mem.upsert(
                    f"doc-{r}", t, metadata={"round": r}))
            for r in range(reps):
                timed("upsert new text", mode,
                      lambda r=r: mem.upsert(f"doc-{r}", f"edited {r}"))
            for r in range(reps):  # the edited texts lose their last occurrence: erased
                timed("forget(keys=)", mode, lambda r=r: mem.forget(keys=[f"doc-{r}"]))
            for _ in range(reps):
                ident = mem.engrams(limit=1)[0].id
                timed("forget(id)", mode, lambda i=ident: mem.forget(i))
            assert mem.verify().ok
    return {op: {m: statistics.median(v) * 1e3 for m, v in modes.items()}
            for op, modes in out.items()}


def main() -> None:
    """Run the measurements and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, action="append", help="engrams in the store")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--bulk", type=int, default=20_000, help="rows for the bulk rates")
    args = ap.parse_args()
    sizes = args.size or [1000]
    print(f"# {platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"engramdb {engramdb.__version__}\n")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            results[size] = _measure(Path(tmp) / f"s{size}", size, args.reps)
        bulk = _bulk(Path(tmp) / "bulk", args.bulk)
        alone = _alone(Path(tmp), args.reps)
    print("| operation (p50 ms) | " + " | ".join(f"{s:,} engrams" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for op in OPS:
        print(f"| {op} | " + " | ".join(f"{results[s][op]:.2f}" for s in sizes) + " |")
    print("\n| alone, 1,000 keyed engrams (p50 ms) | journal on | journal off |\n|---|---|---|")
    for op, ms in alone.items():
        print(f"| {op} | {ms['on']:.2f} | {ms['off']:.2f} |")
    print(f"\n| bulk, {args.bulk:,} rows | rows/s |\n|---|---|")
    for name, rate in bulk.items():
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
