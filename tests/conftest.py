"""Shared fixtures: small stores built with the model-free HashingEncoder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import engramdb
from engramdb.encoders import HashingEncoder

HELPERS = Path(__file__).parent / "helpers"


@pytest.fixture
def encoder() -> HashingEncoder:
    return HashingEncoder(dim=64)


@pytest.fixture
def catalog_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """New stores are made with their catalog file (``journal_only_turns=0``) unless the
    test sets ``journal_only_turns`` itself: for tests of the catalog path that read, damage
    or count its files, or that rely on a close folding the journal."""
    import dataclasses

    import engramdb.store as store_module

    create = store_module.create_store
    default = engramdb.Settings().journal_only_turns

    def with_catalog(path, encoder, dim, settings):  # noqa: ANN001, ANN202 - a stand-in
        if settings.journal_only_turns == default:
            settings = dataclasses.replace(settings, journal_only_turns=0)
        return create(path, encoder, dim, settings)

    monkeypatch.setattr(store_module, "create_store", with_catalog)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "alice.engram"


@pytest.fixture
def mem(store_path: Path, encoder: HashingEncoder):
    with engramdb.open(store_path, encoder=encoder) as store:
        yield store


def python_env() -> dict[str, str]:
    """Environment for subprocesses that import engramdb from this checkout."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable
