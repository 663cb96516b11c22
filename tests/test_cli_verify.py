"""`engramdb verify`: exit 0 when clean, 1 when damaged (naming the damage), even when the
damage stops the store from opening."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_support import build_store, run


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "alice.engram"
    build_store(path, rich=False)
    return path


def segment(store: Path) -> Path:
    return sorted((store / "segments").glob("*.vec"))[0]


def test_clean_store_exits_0(store: Path) -> None:
    result = run("verify", store)
    assert result.exit_code == 0 and result.stdout.startswith("ok:")
    data = json.loads(run("verify", store, "--json").stdout)
    assert data["ok"] is True and data["problems"] == []


def test_flipped_vector_byte_exits_1_and_names_the_engram(store: Path) -> None:
    seg = segment(store)
    raw = bytearray(seg.read_bytes())
    raw[5] ^= 0x40  # inside the first vector
    seg.write_bytes(bytes(raw))
    result = run("verify", store)
    assert result.exit_code == 1
    assert "damaged: engram" in result.output and "checksum mismatch" in result.output
    data = json.loads(run("verify", store, "--json").stdout)
    assert data["ok"] is False and any("checksum" in p for p in data["problems"])


def test_truncated_segment_cannot_open_and_exits_1(store: Path) -> None:
    seg = segment(store)
    with open(seg, "r+b") as fh:
        fh.truncate(seg.stat().st_size - 64 * 4)
    result = run("verify", store)
    assert result.exit_code == 1
    assert "damaged:" in result.output and seg.name in result.output
    assert "Traceback" not in result.output
    # every other command refuses it with one line too
    other = run("stats", store)
    assert other.exit_code == 1 and other.output.startswith("Error: ")


def test_damaged_manifest_exits_1(store: Path) -> None:
    (store / "MANIFEST.json").write_text("{not json", encoding="utf-8")
    result = run("verify", store)
    assert result.exit_code == 1 and "MANIFEST.json" in result.output


def test_not_finite_vector_is_reported(store: Path) -> None:
    seg = segment(store)
    vecs = np.fromfile(seg, np.float32)
    vecs[0] = np.nan
    vecs.tofile(seg)
    result = run("verify", store)
    assert result.exit_code == 1 and "damaged:" in result.output


def test_a_store_that_cannot_be_checked_exits_2_not_1(store: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """On a read-only mount the lock file cannot be opened: that is no damage, and the
    `verify; [ $? -eq 1 ] && restore` idiom must not restore over a healthy store."""
    from engramdb.errors import StorageError
    from engramdb.storage import locking

    def refuse(self, timeout: float = 0.0) -> None:
        raise StorageError(f"cannot open lock file {self.path}: [Errno 30] Read-only file "
                           "system")

    monkeypatch.setattr(locking.StoreLock, "acquire", refuse)
    result = run("verify", store)
    assert result.exit_code == 2
    assert "Read-only file system" in result.output and "damaged" not in result.output
