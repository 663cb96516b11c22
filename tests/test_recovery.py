"""Recovery on open: torn tails are cut, orphans removed, real damage is CorruptStore."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import engramdb
from engramdb.errors import CorruptStore

# These tests are about a store with its catalog file (its journal folded at close,
# its files damaged or counted): new stores here are made with it.
pytestmark = pytest.mark.usefixtures("catalog_from_the_start")


def _build(path: Path, encoder, n: int = 10) -> list[str]:
    with engramdb.open(path, encoder=encoder) as mem:
        return [r.id for r in mem.ingest_many([f"fact number {i}" for i in range(n)])]


def test_torn_tail_is_truncated(store_path: Path, encoder) -> None:
    ids = _build(store_path, encoder)
    seg = store_path / "segments" / "00000001.vec"
    size = seg.stat().st_size
    with open(seg, "ab") as fh:
        fh.write(b"\x01" * 100)  # half-written rows of a batch that never committed
    with engramdb.open(store_path) as mem:
        assert any("truncated" in a for a in mem.recovered)
        assert seg.stat().st_size == size
        assert mem.verify().ok and len(mem) == len(ids)


def test_uncommitted_segment_file_is_removed(store_path: Path, encoder) -> None:
    _build(store_path, encoder)
    orphan = store_path / "segments" / "00000002.vec"
    orphan.write_bytes(b"\x00" * 256)
    with engramdb.open(store_path) as mem:
        assert not orphan.exists() and mem.verify().ok


def test_missing_committed_vectors_is_corrupt(store_path: Path, encoder) -> None:
    _build(store_path, encoder)
    seg = store_path / "segments" / "00000001.vec"
    with open(seg, "r+b") as fh:
        fh.truncate(seg.stat().st_size - 64)
    with pytest.raises(CorruptStore, match="committed"):
        engramdb.open(store_path)


def test_flipped_vector_bit_is_reported_by_verify(store_path: Path, encoder) -> None:
    _build(store_path, encoder)
    seg = store_path / "segments" / "00000001.vec"
    data = bytearray(seg.read_bytes())
    data[5] ^= 0x40
    seg.write_bytes(bytes(data))
    with engramdb.open(store_path) as mem:
        report = mem.verify()
        assert not report.ok and "checksum" in report.problems[0]
        with pytest.raises(CorruptStore):
            mem.check()


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty"])
def test_damaged_manifest_is_corrupt(store_path: Path, encoder, damage: str) -> None:
    _build(store_path, encoder)
    manifest = store_path / "MANIFEST.json"
    raw = manifest.read_bytes()
    manifest.write_bytes({"garbage": b"\x00{]]", "truncate": raw[: len(raw) // 2],
                          "empty": b""}[damage])
    with pytest.raises(CorruptStore):
        engramdb.open(store_path)


def test_damaged_catalog_is_corrupt(store_path: Path, encoder) -> None:
    _build(store_path, encoder)
    (store_path / "catalog.duckdb").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptStore):
        engramdb.open(store_path)


def test_half_created_store_is_created_again(store_path: Path, encoder) -> None:
    _build(store_path, encoder)
    (store_path / "MANIFEST.json").unlink()  # creation died before its last step
    with engramdb.open(store_path, encoder=encoder) as mem:
        assert len(mem) == 0 and mem.verify().ok


def test_copy_of_closed_store_opens(tmp_path: Path, encoder) -> None:
    src = tmp_path / "a.engram"
    ids = _build(src, encoder)
    shutil.copytree(src, tmp_path / "b.engram")
    with engramdb.open(tmp_path / "b.engram") as mem:
        assert mem.get(ids[3]).text == "fact number 3"
