"""The lifespan engine, replayed step by step against the documented rules (docs/lifespan.md)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import engramdb
from engramdb import Kind
from engramdb.encoders import FunctionEncoder

# Fixed 4-d vectors per text, so every ranking below is known exactly.
VECTORS = {
    "A: my guinea pig is called Oscar": [1, 0, 0, 0],
    "B: my sister lives in Paris": [0, 1, 0, 0],
    "T1: what is my guinea pig called?": [0.9, 0.4, 0, 0],
    "T2: tell me about Oscar again": [1, 0, 0.1, 0],
    "C: Oscar's vet is Dr Lee": [0, 0, 0, 1],
    "D: a note about something else": [0.2, 0, 1, 0],
}
A, B, T1, T2, C, D = VECTORS
# The worked example in docs/lifespan.md uses short lifespans so the numbers stay readable.
EXAMPLE = engramdb.Settings(short_term_lifespan=64, long_term_lifespan=4096)


def lookup(texts):
    return np.array([VECTORS[t] for t in texts], np.float32)


@pytest.fixture
def mem(tmp_path: Path):
    with engramdb.open(tmp_path / "m.engram", encoder=FunctionEncoder(lookup, 4, "table"),
                       settings=EXAMPLE) as m:
        yield m


def _get(mem, text):
    from engramdb.content import content_id

    return mem.get(content_id(mem.fingerprint, text))


def weight(mem, x, y):
    ids = {_get(mem, x).id, _get(mem, y).id}
    for a, b, w in mem.links(100):
        if {a, b} == ids:
            return w
    return 0.0


def test_worked_example(mem) -> None:
    # tick 0: two facts, short-term, 64 ticks to live
    mem.ingest(A)
    mem.ingest(B)
    assert _get(mem, A).kind == Kind.SHORT_TERM and _get(mem, A).expires_at == 64

    # tick 1: a turn recalls A (rank 0, +16) and B (rank 1, +8)
    turn = mem.integrate(T1, top_k=2)
    assert turn.tick == 1 and [r.text for r in turn.recalled] == [A, B]
    assert _get(mem, A).expires_at == 80 and _get(mem, B).expires_at == 72
    assert _get(mem, T1).kind == Kind.WORKING and _get(mem, T1).expires_at == 65
    assert weight(mem, T1, A) == pytest.approx(0.25)
    assert weight(mem, T1, B) == pytest.approx(0.125)

    # tick 2: A is recalled again: earned 16 + 16 = 32 -> promoted to long-term
    turn = mem.integrate(T2, top_k=1)
    assert [r.text for r in turn.recalled] == [A]
    a = _get(mem, A)
    assert a.kind == Kind.LONG_TERM and a.expires_at == 2 + 4096 and a.recalls == 2
    assert _get(mem, T1).kind == Kind.SHORT_TERM  # working only during its own tick
    assert _get(mem, T2).kind == Kind.WORKING
    assert weight(mem, T2, A) == pytest.approx(0.25)
    assert weight(mem, T2, T1) == pytest.approx(0.25)  # consecutive turns link

    # tick 102: everything short-term has died; A lives on
    assert mem.tick(100) == 102
    assert [r.text for r in mem.recall(vector=[1, 1, 1, 1], top_k=10)] == [A]
    assert _get(mem, A).lifespan_left == 4098 - 102
    log = {e["reason"] for e in mem.forgetting_log()}
    assert log == {"expired"} and len(mem.forgetting_log()) == 3
    assert mem.links(100) == []  # every link of A leads to a dead engram: none is reported
    # a long-term engram converts reinforcement at 1 / long_term_decay = 8x
    mem.reinforce([_get(mem, A).id], 16)
    assert _get(mem, A).expires_at == 4098 + 128

    report = mem.gc()
    assert report["expired"] == 3 and len(mem) == 1
    assert all(e["collected"] for e in mem.forgetting_log())
    assert mem.verify().ok


def test_link_decay_and_bound(mem) -> None:
    ids = [mem.ingest(t).id for t in (A, C)]
    for _ in range(50):
        mem.reinforce(ids)
    a, c, w = mem.links(1)[0]
    assert {a, c} == set(ids) and 0.99 < w <= 1.0  # saturates, never exceeds link_max
    mem.tick(256)
    assert mem.links(1)[0][2] == pytest.approx(w / 2)


def test_pinned_never_dies_and_tick_is_cheap(mem) -> None:
    pinned = mem.ingest(A, pin=True)
    mem.ingest(B)
    mem.tick(10**6)
    assert len(mem) == 1 and mem.get(pinned.id).lifespan_left is None


def test_associative_recall_finds_what_vectors_miss(mem) -> None:
    a, c = mem.ingest(A).id, mem.ingest(C).id
    mem.ingest(D)
    mem.reinforce([a, c])
    mem.reinforce([a, c])
    plain = mem.recall(vector=[1, 0, 0, 0], top_k=2, associative=False)
    assert c not in [h.id for h in plain]  # C is orthogonal to the query: vectors miss it
    hits = mem.recall(vector=[1, 0, 0, 0], top_k=2)
    assert hits[1].id == c and hits[1].via == "association" and hits[1].path == [a, c]


def test_negative_reinforcement_shortens_life(mem) -> None:
    r = mem.ingest(B)
    mem.reinforce([r.id], -60)
    assert mem.get(r.id).expires_at == 4
    mem.tick(4)
    assert r.id not in mem


def test_gc_after_forgetting_half_shrinks_files(tmp_path: Path) -> None:
    n = int(os.environ.get("ENGRAMDB_GC_ROWS", "100000"))
    rng = np.random.default_rng(0)
    with engramdb.open(tmp_path / "big.engram", dim=64) as mem:
        vecs = rng.standard_normal((n, 64)).astype(np.float32)
        res = mem.ingest_many([f"engram number {i} with some words" for i in range(n)],
                              vectors=vecs)
        mem.drain_index()  # the background indexer's graph is saved: settled files
        mem.catalog.checkpoint()  # measure settled files, not a WAL
        before = mem.stats()["bytes"]
        gone = [r.id for r in res[::2]]
        mem.forget(gone)
        mem.gc()
        after = mem.stats()["bytes"]
        assert after <= 0.6 * before, (before, after)
        assert len(mem) == n - len(gone)
        live = {r.id for r in res[1::2]}
        hits = mem.recall(vector=vecs[1], top_k=5)
        assert hits[0].id == res[1].id and {h.id for h in hits} <= live
        hit = mem.recall(vector=vecs[0], top_k=20)
        assert {h.id for h in hit} <= live
        assert mem.verify().ok


def test_short_term_capacity_rule(tmp_path: Path) -> None:
    enc = FunctionEncoder(lookup, 4, "table")
    settings = EXAMPLE.replace(short_term_capacity=2)
    with engramdb.open(tmp_path / "cap.engram", encoder=enc, settings=settings) as mem:
        a = mem.ingest(A).id
        mem.reinforce([a], 16)  # expires 80, earned 16 = promote_after / 2
        mem.tick(20)
        b, c = mem.ingest(B).id, mem.ingest(C).id  # expire at 84; three short-term now
        # the excess (one) with the soonest expiry is A; it earned enough: consolidated
        assert mem.get(a).kind == Kind.LONG_TERM and mem.get(a).expires_at == 20 + 4096
        d = mem.ingest(D).id
        # now B, C, D are short-term: B expires soonest (ties by age) and earned nothing: dies
        assert b not in mem and c in mem and d in mem
        assert any(e["id"] == b and e["reason"] == "expired" for e in mem.forgetting_log())
        assert mem.stats()["kinds"] == {"working": 0, "short_term": 2, "long_term": 1}


def test_the_capacity_rule_never_kills_a_pinned_engram(tmp_path: Path) -> None:
    enc = FunctionEncoder(lookup, 4, "table")
    settings = EXAMPLE.replace(short_term_capacity=1)
    with engramdb.open(tmp_path / "pin.engram", encoder=enc, settings=settings) as mem:
        a = mem.ingest(A, pin=True).id
        b = mem.ingest(B, pin=True).id
        c = mem.ingest(C).id  # one unpinned engram: within the capacity
        assert a in mem and b in mem and c in mem
        d = mem.ingest(D).id  # two unpinned now: the one expiring first (C) is settled
        assert a in mem and b in mem and d in mem and c not in mem
        assert mem.verify().ok


def test_a_repeated_turn_does_not_recall_itself(mem) -> None:
    mem.ingest(A)
    first = mem.integrate(T1, top_k=3)
    again = mem.integrate(T1, top_k=3)
    assert again.id == first.id and not again.is_new
    assert first.id not in [r.id for r in again.recalled]
    assert [r.text for r in again.recalled][:1] == [A]
