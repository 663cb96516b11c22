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
