"""Conversation context in recall: previous turn, session, speaker and date (engramdb/context.py).

Every test builds a tiny conversation with the model-free HashingEncoder in ``tmp_path``; none
needs LoCoMo.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

import engramdb
from engramdb.derived.temporal import date_affinity, parse_day, query_dates
from engramdb.errors import InvalidInput

QUESTION = "What is the name of your dog?"
ANSWER = "Biscuit, she is a small beagle."
FILLER = [f"Filler remark number {i} about weather, trains and soup." for i in range(40)]


def _conversation(mem: engramdb.Store, *, answer_session: str = "s1") -> dict[str, str]:
    """Filler sessions around a question whose answer (in the next turn) shares no word with
    the question; return the ids by name."""
    ids = {}
    mem.ingest_many(FILLER[:20], roles=["bob"] * 20, sessions=["s0"] * 20)
    ids["question"] = mem.ingest(QUESTION, role="bob", session="s1").id
    ids["answer"] = mem.ingest(ANSWER, role="alice", session=answer_session).id
    mem.ingest_many(FILLER[20:], roles=["alice"] * 20, sessions=["s2"] * 20)
    return ids


def _ranked(mem: engramdb.Store, query: str, **kw: object) -> list[str]:
    return [h.id for h in mem.recall(query, top_k=3, associative=False, **kw)]


def _snapshot(mem: engramdb.Store) -> dict[str, object]:
    ctx = mem.context
    n = max(mem.hot.capacity, 1)

    def cut(a: np.ndarray, fill: int) -> list[int]:
        out = np.full(n, fill, a.dtype)
        out[: min(n, len(a))] = a[:n]
        return out.tolist()

    return {"prev": cut(ctx.prev, -1), "next": cut(ctx.next, -1),
            "session": cut(ctx.session, -1), "role": cut(ctx.role, -1),
            "day": cut(ctx.day, -1), "codes": dict(ctx.codes), "last": dict(ctx.last),
            "session_len": {c: float(ctx.session_len[c]) for c in ctx.codes.values()
                            if c < len(ctx.session_len)}}


def test_answer_only_in_the_previous_turn_is_found(mem: engramdb.Store) -> None:
    ids = _conversation(mem)
    hits = mem.recall("dog name", top_k=3, associative=False)
    assert ids["answer"] in [h.id for h in hits]
    answer = next(h for h in hits if h.id == ids["answer"])
    assert answer.scores["context_lexical"] > 0  # its previous turn matched the words
    # Without context the answer has no evidence at all.
    assert ids["answer"] not in _ranked(mem, "dog name", context=False)


def test_context_does_not_cross_sessions(mem: engramdb.Store) -> None:
    ids = _conversation(mem, answer_session="s9")
    hits = mem.recall("dog name", top_k=10, associative=False)
    assert ids["answer"] not in [h.id for h in hits][:3]
    for h in hits:
        if h.id == ids["answer"]:
            assert h.scores.get("context_lexical", 0.0) == 0.0
    q_eid = mem._writer.lookup_ids([ids["question"]])[ids["question"]]
    a_eid = mem._writer.lookup_ids([ids["answer"]])[ids["answer"]]
    assert mem.context.prev[a_eid] == -1 and mem.context.next[q_eid] == -1


def test_turns_without_session_have_no_neighbours(mem: engramdb.Store) -> None:
    mem.ingest_many(["first thing", "second thing"])
    assert (mem.context.prev[: mem.hot.capacity] == -1).all()
    assert mem.recall("thing", top_k=2)  # context on, nothing to add: still answers


def test_neighbour_step_lifts_the_next_turn(mem: engramdb.Store) -> None:
    ids = _conversation(mem)
    hits = mem.recall("What is the name of your dog?", top_k=3, associative=False)
    assert hits[0].id == ids["question"]
    lifted = [h for h in hits if h.id == ids["answer"]]
    assert lifted and lifted[0].via == "context"
    assert lifted[0].path == [ids["question"], ids["answer"]]


def test_filters_stay_exact(mem: engramdb.Store) -> None:
    ids = _conversation(mem)
    hits = mem.recall("dog name", top_k=10, where={"role": "bob"}, associative=False)
    assert hits and all(h.role == "bob" for h in hits)
    assert ids["answer"] not in [h.id for h in hits]
    hits = mem.recall("dog name", top_k=10, where={"session": "s1"}, associative=False)
    assert {h.id for h in hits} == {ids["question"], ids["answer"]}
    # The previous turn lends context even when a filter hides it from the results.
    hits = mem.recall("dog name", top_k=3, where={"role": "alice"}, associative=False)
    assert hits[0].id == ids["answer"]


def test_forgetting_a_neighbour_is_safe(store_path: Path, encoder: object) -> None:
    with engramdb.open(store_path, encoder=encoder) as mem:
        ids = _conversation(mem)
        mem.forget(ids["question"])
        hits = mem.recall("dog name", top_k=10, associative=False)
        assert ids["question"] not in [h.id for h in hits]
        for h in hits:
            assert h.scores.get("context_lexical", 0.0) == 0.0  # the context dropped out
        mem.gc()
        assert mem.verify().ok
        before = _snapshot(mem)
        # A new turn in the session links to the last turn said in it.
        mem.ingest("Another remark on the beagle.", role="bob", session="s1")
        after_write = _snapshot(mem)
    with engramdb.open(store_path, encoder=encoder) as mem:
        assert _snapshot(mem) == after_write
        assert mem.verify().ok
    assert before["codes"] == after_write["codes"]


def test_forgetting_the_next_turn_relinks_like_a_reopen(store_path: Path, encoder: object) -> None:
    with engramdb.open(store_path, encoder=encoder) as mem:
        a = mem.ingest("Thanks!", session="s1").id
        b = mem.ingest("first reply", session="s1").id
        mem.ingest("Thanks!", session="s1")  # said again: one engram, two occurrences
        mem.ingest("second reply", session="s1")
        eid = mem._writer.lookup_ids([a, b])
        assert mem.context.next[eid[a]] == eid[b]
        mem.forget(b)
        mem.gc()
        live = _snapshot(mem)
        assert live["next"][eid[a]] > eid[b]  # the second reply follows "Thanks!" now
    with engramdb.open(store_path, encoder=encoder) as mem:
        assert _snapshot(mem) == live


def test_reopen_restores_the_structure(store_path: Path, encoder: object) -> None:
    with engramdb.open(store_path, encoder=encoder) as mem:
        _conversation(mem)
        mem.integrate("and what about cats?", role="bob", session="s2",
                      metadata={"date": "2023-05-08"})
        live = _snapshot(mem)
        ranking = _ranked(mem, "dog name")
    with engramdb.open(store_path, encoder=encoder) as mem:
        assert _snapshot(mem) == live
        assert _ranked(mem, "dog name") == ranking


def test_store_without_context_tables_derives_them(store_path: Path, encoder: object) -> None:
    # A store with its catalog from the start (the test edits the catalog file).
    with engramdb.open(store_path, encoder=encoder, settings={"journal_only_turns": 0}) as mem:
        _conversation(mem)
        live = _snapshot(mem)
        ranking = _ranked(mem, "dog name")
    con = duckdb.connect(str(store_path / "catalog.duckdb"))
    con.execute("DROP TABLE turns")
    con.execute("DROP TABLE labels")
    con.close()
    with engramdb.open(store_path, encoder=encoder) as mem:
        assert any("conversation context" in r for r in mem.recovered)
        assert _snapshot(mem) == live
        assert _ranked(mem, "dog name") == ranking
        mem.rebuild()  # derives them again: same structure
        assert _snapshot(mem) == live


def test_context_survives_export_and_import(tmp_path: Path, encoder: object) -> None:
    from engramdb.transfer import export_store, import_store

    src = tmp_path / "a.engram"
    with engramdb.open(src, encoder=encoder) as mem:
        _conversation(mem)
        ranking = [h.text for h in mem.recall("dog name", top_k=3, associative=False)]
        export_store(mem, tmp_path / "a.jsonl")
    import_store(tmp_path / "b.engram", tmp_path / "a.jsonl", encoder=encoder)
    with engramdb.open(tmp_path / "b.engram", encoder=encoder) as mem:
        assert [h.text for h in mem.recall("dog name", top_k=3, associative=False)] == ranking


def test_speaker_prior(mem: engramdb.Store) -> None:
    mem.ingest("I went hiking on Sunday.", role="Caroline", session="s1")
    mem.ingest("I went hiking on Sunday too!", role="Melanie", session="s1")
    top = mem.recall("When did Melanie go hiking?", top_k=1, associative=False)[0]
    assert top.role == "Melanie" and top.scores["speaker"] == 1.0


def test_date_prior(mem: engramdb.Store) -> None:
    for n, day in enumerate(["8 May, 2023", "2023-06-01", "1:56 pm on 20 July, 2023"]):
        mem.ingest(f"We baked bread together, batch {n}.", role="bob", session=f"s{n}",
                   metadata={"date": day})
    top = mem.recall("What did we bake on June 1, 2023?", top_k=1, associative=False)[0]
    assert top.text.endswith("batch 1.") and top.scores["date"] == 1.0
    top = mem.recall("What did we bake in July 2023?", top_k=1, associative=False)[0]
    assert top.text.endswith("batch 2.")


def test_duplicate_content_keeps_its_first_context(mem: engramdb.Store) -> None:
    first = mem.ingest_many(["hello there", "Thanks!"], sessions=["s1", "s1"])
    mem.ingest_many(["another topic", "Thanks!", "after thanks"], sessions=["s2"] * 3)
    eid = mem._writer.lookup_ids([r.id for r in first])
    thanks, hello = eid[first[1].id], eid[first[0].id]
    assert mem.context.prev[thanks] == hello  # its home occurrence, in s1
    after = mem._writer.lookup_ids([mem.ingest("after thanks").id])
    a = next(iter(after.values()))
    assert mem.context.prev[a] == thanks  # the repeat in s2 came right before it


def test_expired_neighbour_drops_out(tmp_path: Path, encoder: object) -> None:
    settings = engramdb.Settings(short_term_lifespan=5)
    with engramdb.open(tmp_path / "m.engram", encoder=encoder, settings=settings) as mem:
        ids = _conversation(mem)
        mem.reinforce([ids["answer"]], 1000)
        mem.tick(6)
        hits = mem.recall("beagle", top_k=3, associative=False)
        assert [h.id for h in hits] == [ids["answer"]]
        assert hits[0].scores["context_lexical"] == 0.0


def test_context_switches(mem: engramdb.Store) -> None:
    ids = _conversation(mem)
    off = mem.recall("dog name", top_k=3, associative=False, context=False)
    assert all("session" not in h.scores for h in off)
    assert ids["answer"] in _ranked(mem, "dog name")
    with pytest.raises(InvalidInput):
        mem.recall("dog name", context="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        engramdb.Settings(neighbour_weight=1.5)


def test_parse_dates() -> None:
    assert parse_day("2023-05-08") == parse_day("1:56 pm on 8 May, 2023")
    assert parse_day("May 8, 2023") == parse_day("8th May 2023") == parse_day("2023-05-08T10:00")
    assert parse_day("sometime") is None and parse_day(42) is None
    assert parse_day("31 February, 2023") is None
    q = query_dates("What happened on 7 July, 2023 and in May 2023?")
    assert len(q.days) == 1 and len(q.months) == 1
    assert not query_dates("When did she go camping?")
    days = np.array([parse_day("7 July, 2023"), parse_day("9 July, 2023"),
                     parse_day("3 May, 2023"), parse_day("3 June, 2023"), -1])
    assert date_affinity(days, q).tolist() == [1.0, 0.25, 0.5, 0.0, 0.0]


def test_session_scores_equal_a_loop_over_terms(mem: engramdb.Store) -> None:
    """One bincount over term x session gives each session the per-term BM25 sums, summed
    term after term (bit for bit what a loop over the terms gives)."""
    import math

    _conversation(mem)
    lex, ctx = mem.lexical, mem.context
    visible = mem.hot.visible(mem.clock)
    found = lex.match(lex.tokenizer("name dog weather trains soup beagle"))
    qp = found.postings
    assert len(qp.counts) >= 3
    got = ctx.session_scores(found.posting_eids, qp.tfs, qp.counts, visible, 1.2, 0.75,
                             term=np.arange(len(qp.counts)).repeat(qp.counts))
    n = int(np.count_nonzero(ctx.session_turns > 0))
    avglen = float(ctx.session_len.sum()) / n
    want = np.zeros(len(ctx.session_len))
    bounds = np.cumsum(qp.counts)[:-1]
    for eids, tfs in zip(np.split(found.posting_eids, bounds), np.split(qp.tfs, bounds),
                         strict=True):
        tf = np.bincount(ctx.session[eids], tfs.astype(np.float64),
                         minlength=len(ctx.session_len))
        nz = np.flatnonzero(tf)
        idf = math.log1p((n - len(nz) + 0.5) / (len(nz) + 0.5))
        norm = 1.2 * (1.0 - 0.75 + 0.75 * ctx.session_len[nz] / avglen)
        want[nz] += idf * tf[nz] * 2.2 / (tf[nz] + norm)
    assert np.array_equal(got, want)


def test_fast_zscore_and_spread_match_their_plain_versions() -> None:
    from engramdb.recall import hybrid
    from engramdb.recall.fusion import best_first

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 8, 9, 100, 257):
        x = rng.standard_normal(n) * 3 + 1
        std = float(x.std())
        plain = np.zeros_like(x) if std == 0.0 else (x - float(x.mean())) / std
        assert np.array_equal(hybrid.zscore(x), plain)
        ties = np.round(x, 0)
        for k in (1, 5, 40):
            assert np.array_equal(best_first(ties, k), (-ties).argsort(kind="stable")[:k])
    eids = np.arange(10, 30)
    mixed = np.round(rng.standard_normal(20), 1)  # ties on purpose
    prev = np.where(rng.random(20) < 0.3, -1, rng.integers(0, 40, 20))
    nxt = np.where(rng.random(20) < 0.3, -1, rng.integers(0, 40, 20))
    seeds = best_first(mixed, 5)  # how recall picks the seeds
    lifted = hybrid.spread(eids, mixed, seeds, prev[seeds], nxt[seeds], 0.8)
    floor = float(mixed.min())
    order = np.lexsort((eids, -mixed))[:5]
    assert np.array_equal(seeds, order)
    want: dict[int, tuple[float, int]] = {}
    for i in order:
        passed = floor + 0.8 * (float(mixed[i]) - floor)
        for nb in (int(prev[i]), int(nxt[i])):
            if nb < 0:
                continue
            own = float(mixed[nb - 10]) if 10 <= nb < 30 else floor
            if passed > (want[nb][0] if nb in want else own):
                want[nb] = (passed, int(eids[i]))
    assert list(lifted.items()) == list(want.items())


def test_date_affinity_months_are_proleptic_gregorian() -> None:
    import datetime as dt

    from engramdb.derived.temporal import _month_of, _months_of

    days = np.array([1, 59, 60, 693_596, 719_163, 738_648, 3_652_059])
    assert _months_of(days).tolist() == [_month_of(int(d)) for d in days]
    assert _month_of(dt.date(2023, 5, 8).toordinal()) == 2023 * 12 + 4
