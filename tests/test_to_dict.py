"""The result types as plain data: ``to_dict()`` is JSON-ready and outlives the store; the
dataclass helpers (asdict, replace, deepcopy, pickle) work on a recall hit."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import pytest

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.errors import StoreClosed

RECALL_KEYS = {"id", "text", "score", "relevance", "kind", "lifespan_left", "via", "scores",
               "path", "occurrences"}


def _open(tmp_path: Path) -> engramdb.Store:
    return engramdb.open(tmp_path / "m", encoder=HashingEncoder(dim=64))


def _fill(mem: engramdb.Store) -> None:
    mem.ingest("I adopted a guinea pig named Oscar.", role="user", session="s1",
               metadata={"mood": "happy", "tags": ["pet", 1, None, 2.5]})
    mem.ingest("Oscar the guinea pig loves carrots.", role="bot", session="s1")
    mem.ingest("The weather in Lyon was rainy.", role="user", session="s2")
    mem.ingest("I adopted a guinea pig named Oscar.", role="user", session="s3")  # twice


def _dumps(data: object) -> str:
    return json.dumps(data, allow_nan=False)  # strict JSON: no NaN or Infinity either


def test_recall_to_dict_is_json_and_stays_valid_after_close(tmp_path: Path) -> None:
    mem = _open(tmp_path)
    _fill(mem)
    hits = mem.recall("guinea pig Oscar", top_k=3)
    assert len(hits) == 3
    dicts = [h.to_dict() for h in hits]
    before = _dumps(dicts)
    for hit, d in zip(hits, dicts, strict=True):
        assert set(d) == RECALL_KEYS
        assert (d["id"], d["text"], d["score"], d["via"]) == (hit.id, hit.text, hit.score,
                                                              hit.via)
        assert d["kind"] == hit.kind.value == "short_term"
        assert d["scores"] == hit.scores and d["path"] == hit.path
        assert d["occurrences"] == [dataclasses.asdict(o) for o in hit.occurrences]
    oscar = next(d for d in dicts if d["text"].startswith("I adopted"))
    assert [o["session"] for o in oscar["occurrences"]] == ["s1", "s3"]
    assert oscar["occurrences"][0] == {"role": "user", "session": "s1", "tick": 0, "metadata": {
        "mood": "happy", "tags": ["pet", 1, None, 2.5]}, "key": None}
    mem.close()
    assert _dumps(dicts) == before
    # to_dict() loaded the occurrences: the hits still give the same dicts after close.
    assert _dumps([h.to_dict() for h in hits]) == before
    assert json.loads(before) == dicts


def test_to_dict_after_close_needs_the_occurrences_loaded_before(tmp_path: Path) -> None:
    mem = _open(tmp_path)
    _fill(mem)
    hit = mem.recall("guinea pig", top_k=1)[0]
    mem.close()
    with pytest.raises(StoreClosed, match="before the store closed") as err:
        hit.to_dict()
    assert "before closing the store" in err.value.hint


def test_to_dict_shares_nothing_with_the_result(tmp_path: Path) -> None:
    with _open(tmp_path) as mem:
        _fill(mem)
        hit = next(h for h in mem.recall("guinea pig Oscar") if h.text.startswith("I adopted"))
        d = hit.to_dict()
        d["occurrences"][0]["metadata"]["tags"].append("changed")
        d["scores"]["vector"] = -1.0
        d["path"].append("x")
        assert hit.occurrences[0].metadata["tags"] == ["pet", 1, None, 2.5]
        assert hit.scores["vector"] != -1.0 and "x" not in hit.path
        assert hit.to_dict() != d


def test_dataclass_helpers_work_on_a_hit(tmp_path: Path) -> None:
    mem = _open(tmp_path)
    _fill(mem)
    hits = mem.recall("guinea pig Oscar", top_k=3)
    plain = dataclasses.asdict(hits[0])  # no lock inside: the occurrence loader is no field
    assert set(plain) == RECALL_KEYS - {"occurrences"}
    assert plain["id"] == hits[0].id and plain["scores"] == hits[0].scores
    assert dataclasses.astuple(hits[0])[0] == hits[0].id
    assert dataclasses.replace(hits[0], score=0.5).occurrences == hits[0].occurrences
    copied = copy.deepcopy(hits[1])
    pickled = pickle.loads(pickle.dumps(hits[2]))
    mem.close()
    for original, twin in ((hits[1], copied), (hits[2], pickled)):
        assert twin == original
        assert twin.to_dict() == original.to_dict()  # loaded by the copy, valid after close


def test_engram_turn_and_the_rest_to_dict(tmp_path: Path) -> None:
    mem = _open(tmp_path)
    _fill(mem)
    pinned = mem.ingest("My birthday is on May 3rd.", role="user", pin=True)
    assert pinned.to_dict() == {"id": pinned.id, "is_new": True}
    engram = mem.get(pinned.id)
    d = engram.to_dict()
    assert d == {"id": pinned.id, "text": "My birthday is on May 3rd.", "kind": "short_term",
                 "refs": 1, "created_tick": 0, "expires_at": None, "lifespan_left": None,
                 "pinned": True, "recalls": 0,
                 "occurrences": [{"role": "user", "session": None, "tick": 0,
                                  "metadata": None, "key": None}]}
    oscar = mem.get(mem.ingest("I adopted a guinea pig named Oscar.").id).to_dict()
    assert oscar["expires_at"] > 0 and len(oscar["occurrences"]) == 3
    turn = mem.integrate("What is my guinea pig called?", top_k=2, session="s4")
    report = mem.verify()
    mem.close()
    t = turn.to_dict()  # integrate loaded the recalled hits' occurrences (for the prompt)
    assert set(t) == {"id", "is_new", "recalled", "prompt", "tick"}
    assert (t["id"], t["is_new"], t["prompt"], t["tick"]) == (turn.id, True, turn.prompt, 1)
    assert [r["id"] for r in t["recalled"]] == [r.id for r in turn.recalled]
    assert report.to_dict() == {"ok": True, "problems": [], "checked": report.checked}
    _dumps([d, oscar, t, report.to_dict()])
