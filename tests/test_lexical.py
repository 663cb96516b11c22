"""Tests of the BM25 lexical index (engramdb.derived.lexical): scoring, stemming, deletes, filters,
and the round trip through DuckDB tables."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pytest

from engramdb.derived.lexical import LexicalIndex, stem, tokenize
from engramdb.errors import InvalidInput

CORPUS = [
    "cats chase mice",            # eid 10
    "the dog chases the cat",     # eid 20
    "dogs and cats and dogs",     # eid 30
    "a quiet garden at night",    # eid 40
]
EIDS = [10, 20, 30, 40]


def _bm25(query: list[str], docs: list[list[str]], k1: float = 1.2, b: float = 0.75) -> list:
    """Textbook BM25 (Lucene idf) over pre-tokenized docs, written independently."""
    n = len(docs)
    avg = sum(len(d) for d in docs) / n
    out = []
    for d in docs:
        s = 0.0
        for t in set(query):
            df = sum(1 for x in docs if t in x)
            if df == 0:
                continue
            tf = d.count(t)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avg))
        out.append(s)
    return out


def _index() -> LexicalIndex:
    idx = LexicalIndex()
    idx.add(EIDS, CORPUS)
    return idx


def test_tokenize_and_stem() -> None:
    assert tokenize("The DOGS chased cats!") == ["dog", "chase", "cat"]
    for a, b in [("paints", "painting"), ("painted", "paint"), ("cities", "city"),
                 ("running", "run"), ("hoped", "hoping"), ("studies", "studied")]:
        assert stem(a) == stem(b), (a, b)
    assert stem("falling") == "fall" and stem("passed") == "pass"
    assert tokenize("Caroline's necklace, 2022") == ["caroline", "necklace", "2022"]


def test_scores_match_hand_formula() -> None:
    idx = _index()
    docs = [tokenize(t) for t in CORPUS]
    for q in ["cat", "dogs chasing cats", "garden night", "mice dog"]:
        expected = _bm25(tokenize(q), docs)
        eids, scores = idx.search(q, k=10)
        got = dict(zip(eids.tolist(), scores.tolist(), strict=True))
        for eid, e in zip(EIDS, expected, strict=True):
            assert got.get(eid, 0.0) == pytest.approx(e, rel=1e-5), (q, eid)
        assert list(scores) == sorted(scores, reverse=True)


def test_stemming_unifies_inflections_in_search() -> None:
    idx = LexicalIndex()
    idx.add([1, 2], ["She painted a sunrise", "He likes swimming"])
    assert idx.search("paintings", k=5)[0].tolist() == [1]
    assert idx.search("swims", k=5)[0].tolist() == [2]
    assert idx.search("when", k=5)[0].tolist() == []  # stopword only: no match


def test_deletes_vanish_and_stats_follow() -> None:
    idx = _index()
    assert 20 in idx.search("cat", k=10)[0]
    assert idx.apply_delete([20, 999]) == 1
    assert len(idx) == 3
    assert 20 not in idx.search("cat", k=10)[0]
    # After the delete, scores equal a fresh index built without the document.
    fresh = LexicalIndex()
    fresh.add([10, 30, 40], [CORPUS[0], CORPUS[2], CORPUS[3]])
    for q in ["cat", "dog chase"]:
        a, sa = idx.search(q, k=10)
        b, sb = fresh.search(q, k=10)
        assert a.tolist() == b.tolist() and np.allclose(sa, sb)
    idx.compact()
    a, sa = idx.search("dog chase", k=10)
    assert a.tolist() == fresh.search("dog chase", k=10)[0].tolist()


def test_allowed_filter_is_exact() -> None:
    idx = LexicalIndex()
    rng = np.random.default_rng(0)
    words = ["apple", "banana", "cherry", "date", "elder", "fig"]
    texts = [" ".join(rng.choice(words, 5)) for _ in range(200)]
    idx.add(np.arange(200), texts)
    allowed = np.arange(0, 200, 7)
    eids, scores = idx.search("apple fig", k=10, allowed=allowed)
    assert len(eids) == 10 and set(eids.tolist()) <= set(allowed.tolist())
    # Exact: same as the unfiltered full ranking restricted to the allowed set.
    all_e, all_s = idx.search("apple fig", k=200)
    ref = [(s, e) for e, s in zip(all_e.tolist(), all_s.tolist(), strict=True) if e % 7 == 0]
    assert eids.tolist() == [e for _, e in ref[:10]]
    assert idx.search("apple", k=5, allowed=[])[0].tolist() == []


def test_incremental_add_equals_bulk_and_rejects_bad_input() -> None:
    bulk = _index()
    inc = LexicalIndex()
    for e, t in zip(EIDS, CORPUS, strict=True):
        inc.add([e], [t])
    for q in ["cat dog", "night"]:
        a, sa = bulk.search(q, k=4)
        b, sb = inc.search(q, k=4)
        assert a.tolist() == b.tolist() and np.allclose(sa, sb)
    with pytest.raises(InvalidInput):
        inc.add_rows([1, 1], ["a", "b"])
    with pytest.raises(InvalidInput):
        inc.add_rows([1], ["a", "b"])
    with pytest.raises(InvalidInput):
        inc.search("cat", k=0)


def test_round_trip_through_duckdb(tmp_path) -> None:
    path = str(tmp_path / "catalog.duckdb")
    con = duckdb.connect(path)
    for sql in LexicalIndex.schema_sql():
        con.execute(sql)
    idx = LexicalIndex()
    rows = idx.add_rows(EIDS, CORPUS)
    assert len(idx) == 0  # add_rows does not touch memory before the commit
    con.execute("BEGIN")
    LexicalIndex.insert(con, rows)
    con.execute("COMMIT")
    idx.apply_add(rows)
    # A duplicate eid is refused by the catalog inside the transaction.
    con.execute("BEGIN")
    with pytest.raises(duckdb.Error):
        LexicalIndex.insert(con, idx.add_rows([10], ["again"]))
    con.execute("ROLLBACK")
    # Forget eid 30 in the catalog and in memory.
    con.execute("BEGIN")
    for sql, params in LexicalIndex.delete_sql([30]):
        con.execute(sql, params)
    con.execute("COMMIT")
    idx.apply_delete([30])
    assert con.execute("SELECT count(*) FROM lex_postings WHERE eid = 30").fetchone()[0] == 0
    con.close()

    con = duckdb.connect(path)
    loaded = LexicalIndex.load(con)
    con.close()
    assert len(loaded) == 3
    for q in ["cat", "dogs chase", "garden", "mice"]:
        a, sa = idx.search(q, k=10)
        b, sb = loaded.search(q, k=10)
        assert a.tolist() == b.tolist() and np.allclose(sa, sb)
    # The loaded index keeps accepting adds (delta on top of the loaded arrays).
    loaded.add([50], ["a cat in the garden"])
    assert loaded.search("garden cat", k=1)[0].tolist() == [50]


def test_snapshot_round_trip_gives_identical_scores(tmp_path) -> None:
    """save_snapshot / load_snapshot: the same scores bit for bit, before and after more adds
    and deletes on both sides; a deleted document's words are not in the file."""
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(300)] + ["café", "naïve", "日本"]
    texts = [" ".join(rng.choice(words, 8)) for _ in range(3000)]
    live = LexicalIndex()
    live.add(np.arange(3000), texts)  # bulk (CSC) ...
    live.add([5000], ["a forgettable zyzzyva"])  # ... then the delta and a tombstone
    live.apply_delete([5000, 7, 8])
    path = tmp_path / "lexical.snapshot"
    live.save_snapshot(path, {"generation": 3})
    assert b"zyzzyva" not in path.read_bytes() and live._delta  # the original is untouched
    loaded, info = LexicalIndex.load_snapshot(path)
    assert info["meta"] == {"generation": 3}
    assert info["stats"]["docs"] == len(live) == len(loaded)
    queries = ["w1 w2", "w7", "w3 w30 w299", "café naïve", "日本 w5", "nothing here"]

    def same() -> None:
        for q in queries:
            a, sa = live.search(q, k=25)
            b, sb = loaded.search(q, k=25)
            assert a.tolist() == b.tolist() and sa.tolist() == sb.tolist()

    same()
    assert "w1" in loaded._vocab and "nope" not in loaded._vocab
    for idx in (live, loaded):
        idx.add(np.arange(6000, 6100), [f"fresh w1 term{i % 7}" for i in range(100)])
        idx.apply_delete(np.arange(10, 400, 5))
    queries += ["fresh term3", "term6 w1"]
    same()
    again = tmp_path / "again.snapshot"
    loaded.save_snapshot(again, {"generation": 4})  # a snapshot of a snapshot-loaded index
    reloaded, _ = LexicalIndex.load_snapshot(again)
    loaded = reloaded
    same()


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic"])
def test_a_damaged_snapshot_raises_value_error(tmp_path, damage: str) -> None:
    path = tmp_path / "lexical.snapshot"
    _index().save_snapshot(path, {})
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-40] ^= 0x01
    elif damage == "truncate":
        del data[len(data) // 2:]
    else:
        data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        LexicalIndex.load_snapshot(path)


def test_bulk_merge_path_matches_delta_path() -> None:
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(50)]
    texts = [" ".join(rng.choice(words, 6)) for _ in range(2000)]
    bulk = LexicalIndex()
    bulk.add(np.arange(2000), texts)  # > 4096 postings: merged into the CSC arrays at once
    small = LexicalIndex()
    for i in range(0, 2000, 10):  # small batches: the delta path
        small.add(np.arange(i, i + 10), texts[i:i + 10])
    for idx in (bulk, small):
        idx.apply_delete(np.arange(0, 2000, 3))
    bulk.compact()
    for q in ["w1 w2", "w7", "w3 w30 w49"]:
        a, sa = bulk.search(q, k=20)
        b, sb = small.search(q, k=20)
        assert a.tolist() == b.tolist() and np.allclose(sa, sb)
        assert not set(a.tolist()) & set(range(0, 2000, 3))


def test_common_terms_are_skipped_in_large_indexes_when_rarer_ones_exist() -> None:
    from engramdb.derived.lexical import COMMON_TERM_MIN_DOCS

    n = COMMON_TERM_MIN_DOCS
    idx = LexicalIndex()
    texts = [f"common words here number{i}" + (" zebra" if i % 2000 == 0 else "")
             for i in range(n)]
    idx.add(np.arange(n), texts)
    eids, _ = idx.search("common zebra", k=50)
    # "common" is in every document: only the rare term's documents are scored.
    assert sorted(eids.tolist()) == list(range(0, n, 2000))
    eids, _ = idx.search("common", k=5)  # a query of common terms only still matches
    assert len(eids) == 5


def test_query_postings_score_like_the_textbook_formula_on_either_aggregation_path() -> None:
    """score_postings aggregates sparsely (few postings) or densely (many); both give the
    textbook scores, and per document the terms are summed in query order either way."""
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(400)]
    docs = [list(rng.choice(words, int(rng.integers(1, 12)))) for _ in range(600)]
    idx = LexicalIndex()
    idx.add(np.arange(600), [" ".join(d) for d in docs])
    for terms, sparse in ((["w1", "w2", "w3"], True), (words[:120], False)):
        qp = idx.query_postings(terms)
        assert (len(qp.slots) * 8 < 600) is sparse
        assert qp.counts == [int(np.count_nonzero([t in d for d in docs])) for t in terms
                             if any(t in d for d in docs)]
        slots, scores = idx.score_postings(qp)
        assert np.array_equal(np.sort(slots), slots)
        ref = _bm25(terms, docs)
        got = np.zeros(600)
        got[idx.eids_of(slots)] = scores
        assert np.allclose(got, ref, rtol=1e-5)
        per_term = idx.term_postings(terms)
        assert [len(e) for e, _ in per_term] == qp.counts


def test_snapshot_vocabulary_remembers_lookups_and_sees_terms_added_later(tmp_path) -> None:
    idx = LexicalIndex()
    idx.add(np.array(EIDS), CORPUS)
    idx.save_snapshot(tmp_path / "lex.snapshot", {})
    snap, _ = LexicalIndex.load_snapshot(tmp_path / "lex.snapshot")
    before = snap.search("zebra garden", k=4)
    assert snap.search("zebra garden", k=4)[0].tolist() == before[0].tolist() == [40]
    snap.add(np.array([50]), ["a zebra"])  # a term the snapshot lacked (cached as a miss)
    assert snap.search("zebra", k=4)[0].tolist() == [50]


def test_reads_never_see_half_an_update_while_another_thread_writes() -> None:
    """Recall reads the index while ingest adds to it and forget compacts it. A read used to
    be able to see a delta posting list one entry longer than its term-frequency twin, or
    slots renumbered by a compaction between the lookup and the scoring."""
    import threading

    idx = LexicalIndex()
    idx.add(np.arange(50), ["apple pie and apple juice"] * 50)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            eid = 50
            for round_ in range(300):
                idx.add(np.arange(eid, eid + 8), ["apple tart", "apple", "pear apple", "fig",
                                                  "apple apple", "plum", "apple fig", "kiwi"])
                eid += 8
                if round_ % 25 == 24:  # enough tombstones to force a compaction
                    idx.apply_delete(np.arange(eid - 200, eid - 60))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    reads = 0
    try:
        while not done.is_set() or reads < 50:
            found = idx.match(["apple", "fig"])
            assert len(found.eids) == len(found.scores)
            assert len(found.posting_eids) == sum(found.postings.counts)
            assert np.isfinite(found.scores).all() and (found.scores > 0).all()
            eids, scores = idx.search("apple fig", k=5)
            assert len(eids) == len(scores) <= 5
            reads += 1
    finally:
        t.join()
    assert not errors, errors
    assert len(idx.doc_lengths()[0]) == len(idx)
