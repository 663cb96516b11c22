"""Progress bars for long operations (ingest, index builds, export and import)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar counting engrams, or None when disabled or there is nothing to count."""
    if not enabled or total <= 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="engram")
