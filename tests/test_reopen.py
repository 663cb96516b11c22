"""Reopening a store: the fast paths (mapped graph files with CRC-32, the BM25 snapshot) give
exactly the answers of the slow ones, and damage or staleness is caught, never trusted."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import engramdb
from engramdb.encoders import HashingEncoder

DIM = 32
ENC = HashingEncoder(dim=DIM)
GRAPH = {"exact_threshold": 50}  # small stores search through the graph, as large ones do
WORDS = ("oscar guinea pig painting river violin garden tuesday lisbon coffee bicycle "
         "thunder maple piano orange ferry winter lantern").split()


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(WORDS[j] for j in rng.integers(0, len(WORDS), 5)) + f" note {seed}-{i}"
            for i in range(n)]


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


QUERIES = ["oscar painting", "violin in lisbon", "winter ferry lantern", "maple coffee note"]
QVECS = _vectors(8, 99)


def _answers(mem: engramdb.Store) -> list[list[tuple[str, float]]]:
    """Text (hybrid) and vector recalls, ids and rounded scores."""
    out = [[(h.id, round(h.score, 6)) for h in mem.recall(q, top_k=8, associative=False)]
           for q in QUERIES]
    out += [[(h.id, round(h.score, 6)) for h in mem.recall(vector=v, top_k=8, associative=False)]
            for v in QVECS]
    return out


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, list[list[tuple[str, float]]]]:
    """A closed store with a graph, deletions and a BM25 snapshot, and its answers."""
    path = tmp_path / "r.engram"
    with engramdb.open(path, encoder=ENC, index=GRAPH) as mem:
        res = mem.ingest_many(_texts(600, 1), vectors=_vectors(600, 1))
        mem.ingest_many(_texts(300, 2), vectors=_vectors(300, 2))
        mem.forget([r.id for r in res[:40:3]])
        mem.drain_index()
        answers = _answers(mem)
    assert (path / "lexical.snapshot").exists()
    return path, answers


def _uses_fast_paths(mem: engramdb.Store) -> bool:
    generation = mem._committer.counters.generation
    return mem._loader.lexical_saved == generation and not mem.index.stale_format


def test_reopen_restores_identical_answers(built: tuple[Path, list]) -> None:
    path, answers = built
    with engramdb.open(path) as mem:
        assert mem.recovered == [] and _uses_fast_paths(mem)
        first = _answers(mem)  # the very first recalls after open
        assert first == answers
        assert _answers(mem) == first
        assert mem.verify().ok
    # Without the snapshot the tables are read: the same answers, and close() writes it again.
    (path / "lexical.snapshot").unlink()
    with engramdb.open(path) as mem:
        assert mem._loader.lexical_saved is None
        assert _answers(mem) == answers
    assert (path / "lexical.snapshot").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_damaged_snapshot_is_ignored(built: tuple[Path, list], damage: str) -> None:
    path, answers = built
    snap = path / "lexical.snapshot"
    data = bytearray(snap.read_bytes())
    if damage == "flip":
        data[len(data) * 2 // 3] ^= 0x04  # inside the postings: only the CRC-32 can tell
        snap.write_bytes(bytes(data))
    elif damage == "truncate":
        snap.write_bytes(bytes(data[: len(data) // 2]))
    else:
        snap.write_bytes(b"x" * len(data))
    with engramdb.open(path) as mem:
        assert any("lexical snapshot" in r for r in mem.recovered), mem.recovered
        assert mem._loader.lexical_saved is None
        assert _answers(mem) == answers and mem.verify().ok


def test_a_stale_snapshot_is_not_trusted(built: tuple[Path, list], tmp_path: Path) -> None:
    """A store copied while open (as after a crash) holds the snapshot of an earlier close."""
    path, _ = built
    crashed = tmp_path / "crashed.engram"
    with engramdb.open(path) as mem:
        mem.ingest_many(_texts(50, 3), vectors=_vectors(50, 3))
        mem.forget([h.id for h in mem.recall("oscar painting", top_k=3, associative=False)])
        shutil.copytree(path, crashed, ignore=shutil.ignore_patterns("LOCK"))
        mem.drain_index()  # answers from the graph, as after a reopen (not from the backlog)
        answers = _answers(mem)
    with engramdb.open(crashed) as mem:
        assert mem._loader.lexical_saved is None  # generation moved on: the tables were read
        assert _answers(mem) == answers


def test_a_damaged_graph_file_is_caught_by_its_crc(built: tuple[Path, list]) -> None:
    path, answers = built
    graph = next((path / "index").glob("*.hnsw"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one vector: no header or size check sees it
    graph.write_bytes(bytes(data))
    with engramdb.open(path) as mem:
        assert any("fails its checksum" in r for r in mem.recovered), mem.recovered
        assert mem.verify().ok
        # A rebuilt graph is another graph: compare the best hit of each vector query only.
        got = _answers(mem)
        assert [a[0][0] for a in got[len(QUERIES):]] == [a[0][0] for a in answers[len(QUERIES):]]


def test_a_format_1_index_opens_without_rebuild_and_is_upgraded(built: tuple[Path, list]) -> None:
    """Stores saved before CRC-32 (index.json version 1, sha256) and before the BM25
    snapshot open without rebuilding anything and are saved in today's format on close."""
    path, answers = built
    man_path = path / "index" / "index.json"
    man = json.loads(man_path.read_text())
    man["version"] = 1
    for key in [k for k in man["files"] if k.startswith("heights")]:  # not saved before 3
        (path / "index" / man["files"].pop(key)["name"]).unlink()
    for info in man["files"].values():
        del info["crc32"]
        info["sha256"] = hashlib.sha256((path / "index" / info["name"]).read_bytes()).hexdigest()
    man_path.write_text(json.dumps(man))
    (path / "lexical.snapshot").unlink()
    with engramdb.open(path) as mem:
        assert mem.recovered == [] and mem.index.stale_format
        assert _answers(mem) == answers
    assert json.loads(man_path.read_text())["version"] == 3
    with engramdb.open(path) as mem:
        assert _uses_fast_paths(mem) and _answers(mem) == answers


def test_forget_and_gc_leave_no_word_in_the_snapshot(built: tuple[Path, list]) -> None:
    path, _ = built
    with engramdb.open(path) as mem:
        r = mem.ingest("my locker code is zanzibar-quokka", vector=_vectors(1, 5)[0])
    assert b"quokka" in (path / "lexical.snapshot").read_bytes()
    with engramdb.open(path) as mem:
        mem.forget(r.id)
        mem.gc()
        assert not (path / "lexical.snapshot").exists()  # erased now, not at close
    assert b"quokka" not in (path / "lexical.snapshot").read_bytes()
    assert b"zanzibar" not in (path / "lexical.snapshot").read_bytes()


def test_recall_while_another_thread_ingests_after_reopen(built: tuple[Path, list]) -> None:
    path, answers = built
    errors: list[BaseException] = []
    with engramdb.open(path) as mem:
        def writer() -> None:
            try:
                for k in range(5):
                    mem.ingest_many(_texts(40, 10 + k), vectors=_vectors(40, 10 + k))
            except BaseException as exc:  # reported below
                errors.append(exc)

        t = threading.Thread(target=writer)
        t.start()
        while t.is_alive():
            for q in QUERIES:
                assert len(mem.recall(q, top_k=5)) == 5
        t.join()
        assert not errors, errors
        assert mem.count == 900 - len(range(0, 40, 3)) + 200
        mem.drain_index()
        after = _answers(mem)
    with engramdb.open(path) as mem:
        assert _uses_fast_paths(mem) and _answers(mem) == after


def test_a_failed_open_leaves_no_thread_behind(built: tuple[Path, list]) -> None:
    """Open reads the index files on a thread; when open fails, it waits for that thread."""
    path, _ = built
    segment = next((path / "segments").glob("*.vec"))
    segment.write_bytes(segment.read_bytes()[:100])  # committed rows missing: CorruptStore
    with pytest.raises(engramdb.errors.CorruptStore):
        engramdb.open(path)
    assert not [t for t in threading.enumerate() if t.name.startswith("engramdb-")]
