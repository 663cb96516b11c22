"""Turn recalled engrams into the text an LLM reads before answering."""

from __future__ import annotations

from engramdb.types import Recall


def format_prompt(text: str, recalled: list[Recall], role: str | None = "user") -> str:
    """Return ``text`` preceded by the recalled memories, one line each, with when and who.

    >>> format_prompt("What is my pet called?", [])
    'User: What is my pet called?'
    """
    speaker = (role or "user").capitalize()
    if not recalled:
        return f"{speaker}: {text}"
    lines = ["Relevant memories (most relevant first):"]
    for hit in recalled:
        where = ", ".join(x for x in (hit.session, hit.role) if x)
        lines.append(f"- [{where}] {hit.text}" if where else f"- {hit.text}")
    lines.append("")
    lines.append(f"{speaker}: {text}")
    return "\n".join(lines)
