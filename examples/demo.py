"""The main job: build Alice's memory with a real model, recall from it, survive a restart.

Run it with `make demo` (or `python examples/demo.py`). It

1. ingests the conversation in examples/conversation.jsonl into memories/alice.engram with the
   packaged all-MiniLM-L6-v2 encoder (offline), one occurrence per turn with its session date;
2. recalls for a few questions and shows what came back and why;
3. plays one chatbot turn through `integrate` and prints the prompt an LLM would receive;
4. reopens the store in a *new process*, without passing an encoder (it is rebuilt from the
   manifest), and shows the same memory answering.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import engramdb  # noqa: E402
from engramdb.encoders import default  # noqa: E402

HERE = Path(__file__).resolve().parent
QUESTIONS = [
    "What is the name of my pet?",
    "What food allergy do I have?",
    "Who is visiting me in April?",
    "What instrument am I learning?",
]


def show(hits: list[engramdb.Recall]) -> None:
    for hit in hits:
        when = hit.session or "-"
        print(f"   {hit.score:5.3f}  {hit.via:<11} {hit.kind.value:<10} [{when}] {hit.text}")


def build(store: Path) -> None:
    turns = [json.loads(line) for line in (HERE / "conversation.jsonl").open(encoding="utf-8")]
    if store.exists():
        shutil.rmtree(store)
    print(f"Building {store} from {len(turns)} turns with the packaged all-MiniLM-L6-v2 ...")
    with engramdb.open(store, encoder=default()) as mem:
        mem.ingest_many(
            [t["text"] for t in turns],
            roles=[t["role"] for t in turns],
            sessions=[t["session"] for t in turns],
            progress=True,
        )
        stats = mem.stats()
        print(f"{stats['count']} engrams, dim {stats['dim']}, {stats['bytes'] / 1024:.0f} KiB\n")
        for question in QUESTIONS:
            print(f"recall: {question}")
            show(mem.recall(question, top_k=3))
            print()
        turn = mem.integrate("Can you remind me what my guinea pig likes to eat?", top_k=3)
        print("integrate: one chatbot turn; the prompt an LLM would receive:\n")
        print("   " + turn.prompt.replace("\n", "\n   "))
        print(f"\n(clock is now at tick {turn.tick}; the turn is stored as working memory)")
        assert mem.verify().ok


def reopen(store: Path) -> None:
    print(f"\nNew process {os.getpid()}: reopening {store} without passing an encoder ...")
    with engramdb.open(store) as mem:
        print(f"{len(mem)} engrams, clock {mem.clock}, encoder rebuilt from the manifest")
        question = "When is my birthday and how do I want to celebrate?"
        print(f"recall: {question}")
        show(mem.recall(question, top_k=3))
        report = mem.verify()
        print(f"\nverify: {'clean' if report.ok else report.problems} {report.checked}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("memories/alice.engram"))
    parser.add_argument("--reopen", action="store_true", help="only the restart half")
    args = parser.parse_args()
    if args.reopen:
        reopen(args.store)
        return
    build(args.store)
    subprocess.run([sys.executable, __file__, "--reopen", "--store", str(args.store)],
                   check=True)


if __name__ == "__main__":
    main()
