"""Shared helpers of the CLI tests: a small populated store and a CliRunner wrapper."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
from click.testing import CliRunner, Result
from engramdb.cli.main import main

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.storage import catalog as cat

TEXTS = [
    ("I adopted a guinea pig named Oscar.", "user", "s1", {"mood": "happy"}),
    ("Oscar likes carrots and hay.", "user", "s1", None),
    ("My sister lives in Lisbon.", "user", "s2", {"n": 1.5, "tags": ["family", "é"]}),
    ("Thanks!", "assistant", "s1", None),
    ("Thanks!", "user", "s2", None),  # the same content again: one engram, two occurrences
    ("The meeting moved to Thursday.", "user", "s3", None),
]


def encoder() -> HashingEncoder:
    """The model-free encoder every CLI test store uses."""
    return HashingEncoder(dim=64)


_TEMPLATES: dict[tuple[str, bool], tuple[Path, list[str]]] = {}
_TEMPLATE_DIR = Path(tempfile.mkdtemp(prefix="engramdb-cli-tests-"))
atexit.register(shutil.rmtree, _TEMPLATE_DIR, True)


def build_store(path: Path, *, dtype: str = "float32", rich: bool = True) -> list[str]:
    """Create a store with occurrences, a pin, a forgotten engram and links; return live ids.

    With ``rich`` it also runs ticks, integrate turns and reinforcement when this engramdb
    has them, so kinds, lifespans and links differ between engrams. Each variant is built
    once per test run and copied (creating a DuckDB catalog costs a few hundred ms).
    """
    key = (dtype, rich)
    if key not in _TEMPLATES:
        template = _TEMPLATE_DIR / f"{dtype}-{rich}.engram"
        _TEMPLATES[key] = (template, _build(template, dtype, rich))
    template, ids = _TEMPLATES[key]
    shutil.copytree(template, path)
    return list(ids)


def _build(path: Path, dtype: str, rich: bool) -> list[str]:
    with engramdb.open(path, encoder=encoder(), settings={"vector_dtype": dtype}) as mem:
        res = mem.ingest_many([t for t, *_ in TEXTS], roles=[r for _, r, _, _ in TEXTS],
                              sessions=[s for *_, s, _ in TEXTS],
                              metadatas=[m for *_, m in TEXTS])
        mem.ingest("Remember: my passport number is in the blue folder.", pin=True)
        gone = mem.ingest("A secret I want erased.")
        mem.forget(gone.id)
        if rich and hasattr(mem, "integrate"):
            mem.tick(2)
            mem.integrate("What is my guinea pig called?", top_k=2, session="s4")
            mem.integrate("Where does my sister live?", top_k=2, session="s4")
            mem.reinforce([res[0].id, res[1].id], 40.0)
        else:
            add_link(mem, res[0].id, res[1].id, 0.75)
        return [i for i in dict.fromkeys(r.id for r in res)]


def add_link(mem: Any, id_a: str, id_b: str, weight: float) -> None:
    """Insert a link directly into the catalog (for engramdb versions without integrate)."""
    eids = dict(mem.catalog.query(
        "SELECT id, eid FROM engrams WHERE id IN (SELECT unnest(?::VARCHAR[]))", [[id_a, id_b]]))
    a, b = sorted((eids[id_a], eids[id_b]))
    with mem.catalog.transaction() as con:
        cat.insert_arrow(con, "edges", pa.table({"a": [a], "b": [b], "weight": [weight],
                                                 "tick": [mem.clock]}))


def run(*args: Any, input: str | None = None) -> Result:  # noqa: A002 - CliRunner's name
    """Invoke the engramdb command in-process; never re-raise, so exit codes can be checked."""
    return CliRunner().invoke(main, [str(a) for a in args], input=input,
                              catch_exceptions=False, env={"COLUMNS": "120"})


def run_json(*args: Any) -> Any:
    """Invoke with --json and parse stdout."""
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
