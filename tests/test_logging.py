"""engramdb logs to the ``engramdb`` logger: recovery on open, gc, the vector index starting,
folds of the turn journal, and slow commits."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import pytest

import engramdb
from engramdb.encoders import HashingEncoder

# These tests are about a store with its catalog file (its journal folded at close,
# its files damaged or counted): new stores here are made with it.
pytestmark = pytest.mark.usefixtures("catalog_from_the_start")

ENC = HashingEncoder(dim=16)


def test_recovery_and_gc_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="engramdb")
    path = tmp_path / "m"
    mem = engramdb.open(path, encoder=ENC)
    ident = mem.integrate("my sister lives in lisbon").id
    del mem  # dropped without close: the turn stays in the journal
    gc.collect()
    with engramdb.open(path, encoder=ENC) as mem:
        mem.forget(ident)
        mem.gc()
    messages = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert any(n.startswith("engramdb.") and lvl == logging.WARNING and "replayed 1 turns" in m
               for n, lvl, m in messages), messages
    assert any("folded 1 journaled turns" in m for _, _, m in messages)
    assert any(m.startswith("gc of ") and "'erased': 1" in m for _, _, m in messages)


def test_quiet_by_default_on_a_clean_open(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engramdb")
    with engramdb.open(tmp_path / "m", encoder=ENC) as mem:
        mem.integrate("hello")
    with engramdb.open(tmp_path / "m", encoder=ENC) as mem:
        mem.recall("hello")
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
