"""Re-embedding on LoCoMo: a store built with HashingEncoder and re-embedded to the packaged
MiniLM recalls as well as the same conversation built with MiniLM directly.

For each pipeline of ``benchmarks/locomo.py`` (dense, lexical, hybrid: built with
``ingest_many``; hybrid+assoc: played through ``integrate``) one LoCoMo conversation is
stored twice:

- *direct*: built with ``engramdb.encoders.default()`` (the packaged all-MiniLM-L6-v2);
- *re-embedded*: built with ``HashingEncoder(dim=256)``, then ``engramdb.reembed`` to the
  default model; each turn's id is mapped through the returned id map.

Both are asked every question of the conversation with ``locomo.ask`` (R@k of the evidence
turns, as in docs/quality.md). Printed: R@1/5/10/20 and all@10 both ways, how many
questions got the same ranking, the largest difference between the two stores' vectors of
the same turn, and the time the re-embedding took.

For the pipelines built with ``ingest_many`` nothing in the store depends on the encoder
but the vectors, so the figures must agree. ``integrate`` is different: every turn recalls,
and links and earns lifespan for what it recalled, with the encoder of the day. A
re-embedding keeps those links and lifespans as they were earned (under HashingEncoder), so
hybrid+assoc need not agree with a conversation played with MiniLM from the start (on
conv-26 it does: association changes no ranking there, in either store).

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/reembed_locomo.py \
        [--conv conv-26] [--pipelines dense lexical hybrid hybrid+assoc]

Skips cleanly (exit 0) when the data is absent (../shared/data/locomo/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from locomo import DEFAULT_DATA, PIPELINES, ask, build, summarize  # noqa: E402
from locomo_lab import KS, load  # noqa: E402

import engramdb  # noqa: E402
from engramdb.encoders import HashingEncoder  # noqa: E402
from engramdb.reembed import reembed  # noqa: E402

METRICS = [f"R@{k}" for k in KS] + ["all@10"]


def run_pipeline(conv, name: str, model, tmp: Path) -> dict:
    """One pipeline both ways: summaries, paired rows, vector difference, reembed time."""
    settings, through_integrate, associative, context = PIPELINES[name]
    direct, hashed = tmp / f"{name}-direct.engram", tmp / f"{name}-reembedded.engram"
    ids_direct = build(conv, direct, model, settings, through_integrate)
    ids_hashed = build(conv, hashed, HashingEncoder(dim=256), settings, through_integrate)
    t0 = time.perf_counter()
    id_map = reembed(hashed, model)
    seconds = time.perf_counter() - t0
    ids_new = [id_map[i] for i in ids_hashed]
    assert ids_new == ids_direct, "re-embedded ids differ from the directly built ones"
    rows_a, _ = ask(conv, direct, model, ids_direct, settings, associative, context)
    rows_b, _ = ask(conv, hashed, model, ids_new, settings, associative, context)
    with engramdb.open(direct) as a, engramdb.open(hashed) as b:
        unique = list(dict.fromkeys(ids_direct))
        diff = float(np.abs(a.vectors(unique) - b.vectors(unique)).max())
        assert b.verify().ok
    same = sum(ra == rb for ra, rb in zip(rows_a, rows_b, strict=True))
    return {"direct": summarize(rows_a)["all"], "reembedded": summarize(rows_b)["all"],
            "same": same, "questions": len(rows_a), "diff": diff, "seconds": seconds,
            "engrams": len(id_map)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--conv", default="conv-26", help="sample_id of the conversation")
    parser.add_argument("--pipelines", nargs="+",
                        default=["dense", "lexical", "hybrid", "hybrid+assoc"])
    args = parser.parse_args()
    if not args.data.exists():
        print(f"LoCoMo data not found at {args.data}; skipping")
        return 0
    conv = next((c for c in load(args.data) if c.sample_id == args.conv), None)
    if conv is None:
        raise SystemExit(f"no conversation {args.conv!r} in {args.data}")
    model = engramdb.encoders.default()
    lines = ["| pipeline | store | " + " | ".join(METRICS) + " | same ranking | "
             "max vector diff | reembed s |", "|---|---|" + "---|" * (len(METRICS) + 3)]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.pipelines:
            r = run_pipeline(conv, name, model, Path(tmp))
            for store in ("direct", "reembedded"):
                cells = [f"{r[store][m]:.3f}" for m in METRICS] + (
                    [f"{r['same']}/{r['questions']}", f"{r['diff']:.1e}", f"{r['seconds']:.1f}"]
                    if store == "reembedded" else ["", "", ""])
                lines.append(f"| {name} | {store} | " + " | ".join(cells) + " |")
            print(lines[-2], lines[-1], sep="\n", flush=True)
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    print(f"\n{args.conv}: {len(conv.text)} turns ({r['engrams']} engrams), "
          f"{len(conv.questions)} questions; {time.strftime('%Y-%m-%d')}; `{command}`\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
