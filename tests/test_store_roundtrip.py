"""Round trip: what a store acknowledged comes back identically in a new process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import engramdb
from engramdb.encoders import HashingEncoder
from tests.conftest import HELPERS, PYTHON, python_env

TOPICS = ["guinea pig", "piano lessons", "trip to Paris", "coffee", "marathon", "sister"]


@pytest.mark.parametrize("durability", ["full", "fast"])
def test_thousand_engrams_survive_reopen_in_new_process(store_path: Path, durability: str) -> None:
    texts = [f"memory {i}: something about {TOPICS[i % len(TOPICS)]} #{i * 7}" for i in range(1000)]
    with engramdb.open(store_path, encoder=HashingEncoder(dim=64),
                       settings={"durability": durability}) as mem:
        results = mem.ingest_many(texts, sessions=[f"s{i % 10}" for i in range(1000)])
        assert all(r.is_new for r in results)
        again = mem.ingest_many(texts[:100])  # dedup: same ids, refs grow
        assert [r.id for r in again] == [r.id for r in results[:100]]
        assert not any(r.is_new for r in again)
        assert len({r.id for r in results}) == 1000
        queries = ["guinea pig", "Paris trip", "memory 42", "coffee marathon"]
        before = {q: [[h.id, h.text, h.score] for h in mem.recall(q, top_k=5)] for q in queries}
        assert mem.verify().ok
    ref_ids = [results[0].id, results[500].id]
    out = subprocess.run(
        [PYTHON, str(HELPERS / "recall_dump.py"), str(store_path), json.dumps(queries),
         json.dumps(ref_ids)],
        env=python_env(), capture_output=True, text=True, check=True,
    )
    after = json.loads(out.stdout)
    assert after["__count__"] == 1000
    assert after["__refs__"] == {results[0].id: 2, results[500].id: 1}
    for q in queries:
        assert after[q] == before[q]  # same ids, texts and scores, bit for bit


def test_dedup_within_one_batch_and_occurrences_kept(mem) -> None:
    res = mem.ingest_many(["Thanks!", "Thanks!", "  Thanks!\n"], roles=["user", "bot", "user"])
    assert res[0].is_new and not res[1].is_new and not res[2].is_new
    assert len({r.id for r in res}) == 1
    engram = mem.get(res[0].id)
    assert engram.refs == 3
    assert [o.role for o in engram.occurrences] == ["user", "bot", "user"]
    assert mem.verify().ok


def test_recall_filters_report_matching_occurrences(mem) -> None:
    mem.ingest("I adopted a guinea pig named Oscar.", role="user", session="2023-05-08")
    mem.ingest("I adopted a guinea pig named Oscar.", role="bot", session="2023-06-01",
               metadata={"mood": "happy"})
    mem.ingest("The weather is nice today.", role="user", session="2023-06-01")
    hits = mem.recall("guinea pig", top_k=5, where={"session": "2023-06-01"})
    assert hits[0].text == "I adopted a guinea pig named Oscar."
    assert [o.session for o in hits[0].occurrences] == ["2023-06-01"]
    assert hits[0].metadata == {"mood": "happy"}
    assert mem.recall("guinea pig", top_k=5, where={"metadata": {"mood": "sad"}}) == []
    only_user = mem.recall("guinea pig", top_k=5, where={"role": "user"})
    assert {h.role for h in only_user} == {"user"}


def test_recall_by_vector_and_stats(store_path: Path) -> None:
    with engramdb.open(store_path, dim=8) as mem:
        a = mem.ingest("north", vector=[1, 0, 0, 0, 0, 0, 0, 0])
        mem.ingest("east", vector=[0, 1, 0, 0, 0, 0, 0, 0])
        hits = mem.recall(vector=[0.9, 0.1, 0, 0, 0, 0, 0, 0], top_k=1)
        assert hits[0].id == a.id and hits[0].via == "vector"
        stats = mem.stats()
        assert stats["count"] == 2 and stats["dim"] == 8 and stats["kinds"]["short_term"] == 2
        # A new store keeps its vectors in its turn journal (in memory while open) until its
        # first fold writes the segment file.
        assert "segments/00000001.vec" not in stats["files"]
        assert stats["files"]["journal.bin"] > 2 * 8 * 4
        mem.catalog  # noqa: B018 - the first fold
        assert mem.stats()["files"]["segments/00000001.vec"] == 2 * 8 * 4


def test_forget_hides_at_once_and_survives_reopen(store_path: Path, encoder) -> None:
    with engramdb.open(store_path, encoder=encoder) as mem:
        keep = mem.ingest("keep me")
        gone = mem.ingest("forget me")
        assert mem.forget([gone.id]) == 1
        assert gone.id not in mem and keep.id in mem
        assert [h.id for h in mem.recall("forget me", top_k=5)] == [keep.id]
    with engramdb.open(store_path, encoder=encoder) as mem:
        assert len(mem) == 1 and mem.verify().ok
        again = mem.ingest("forget me")  # content can come back as a new engram
        assert again.is_new and again.id == gone.id


def test_reopen_without_encoder_rebuilds_it(store_path: Path, encoder) -> None:
    with engramdb.open(store_path, encoder=encoder) as mem:
        mem.ingest("the cat sat on the mat")
    with engramdb.open(store_path) as mem:
        assert mem.recall("cat", top_k=1)[0].text == "the cat sat on the mat"
