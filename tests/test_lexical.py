"""Tests of the BM25 lexical index (engramdb.derived.lexical): scoring, stemming, deletes,
and the round trips through DuckDB tables and the snapshot file."""

from __future__ import annotations

import math
import unicodedata

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramdb.derived.lexical import LexicalIndex, stem, tokenize
from engramdb.errors import InvalidInput
from engramdb.storage.schema import LEXICAL_TABLES, lexical_delete_sql

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


def _add(idx: LexicalIndex, eids, texts: list[str]) -> None:
    """Add a batch as the store does, minus the catalog: its rows, then memory."""
    idx.apply_add(idx.add_rows(eids, texts))


def _scores(idx: LexicalIndex, query: str) -> dict[int, float]:
    """The BM25 score of every live document that matches ``query``, by eid."""
    found = idx.match(idx.tokenizer(query))
    return dict(zip(found.eids.tolist(), found.scores.tolist(), strict=True))


def _assert_same(a: LexicalIndex, b: LexicalIndex, query: str, *, exact: bool = False) -> None:
    """Both indexes match the same documents with the same scores (bit for bit if ``exact``)."""
    sa, sb = _scores(a, query), _scores(b, query)
    assert sorted(sa) == sorted(sb), query
    if exact:
        assert sa == sb, query
    else:
        assert np.allclose([sa[e] for e in sorted(sa)], [sb[e] for e in sorted(sa)]), query


def _index() -> LexicalIndex:
    idx = LexicalIndex()
    _add(idx, EIDS, CORPUS)
    return idx


def test_tokenize_and_stem() -> None:
    assert tokenize("The DOGS chased cats!") == ["dog", "chase", "cat"]
    for a, b in [("paints", "painting"), ("painted", "paint"), ("cities", "city"),
                 ("running", "run"), ("hoped", "hoping"), ("studies", "studied")]:
        assert stem(a) == stem(b), (a, b)
    assert stem("falling") == "fall" and stem("passed") == "pass"
    assert tokenize("Caroline's necklace, 2022") == ["caroline", "necklace", "2022"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_ascii_text_tokenizes_as_the_unicode_path_does(text: str) -> None:
    """ASCII text skips NFKC (it changes none) and casefolds as lower(): the terms must be
    those of the full path."""
    from engramdb.derived import lexical_tokenizer as tok

    full = unicodedata.normalize("NFKC", text).casefold()
    assert tokenize(text) == [t for t in map(tok._term, tok._WORD.findall(full)) if t]
    assert tokenize(text + " \u00e9t\u00e9") == tokenize(text) + ["\u00e9t\u00e9"]


def test_scores_match_hand_formula() -> None:
    idx = _index()
    docs = [tokenize(t) for t in CORPUS]
    for q in ["cat", "dogs chasing cats", "garden night", "mice dog"]:
        expected = _bm25(tokenize(q), docs)
        got = _scores(idx, q)
        for eid, e in zip(EIDS, expected, strict=True):
            assert got.get(eid, 0.0) == pytest.approx(e, rel=1e-5), (q, eid)
        assert all(score > 0 for score in got.values())  # only documents that match


def test_stemming_unifies_inflections_in_queries() -> None:
    idx = LexicalIndex()
    _add(idx, [1, 2], ["She painted a sunrise", "He likes swimming"])
    assert list(_scores(idx, "paintings")) == [1]
    assert list(_scores(idx, "swims")) == [2]
    assert _scores(idx, "when") == {}  # stopword only: no match


def test_deletes_vanish_and_stats_follow() -> None:
    idx = _index()
    assert 20 in _scores(idx, "cat")
    assert idx.apply_delete([20, 999]) == 1
    assert len(idx) == 3
    assert 20 not in _scores(idx, "cat")
    # After the delete, scores equal a fresh index built without the document.
    fresh = LexicalIndex()
    _add(fresh, [10, 30, 40], [CORPUS[0], CORPUS[2], CORPUS[3]])
    for q in ["cat", "dog chase"]:
        _assert_same(idx, fresh, q)
    idx.compact()
    _assert_same(idx, fresh, "dog chase")


def test_incremental_add_equals_bulk_and_rejects_bad_input() -> None:
    bulk = _index()
    inc = LexicalIndex()
    for e, t in zip(EIDS, CORPUS, strict=True):
        _add(inc, [e], [t])
    for q in ["cat dog", "night"]:
        _assert_same(bulk, inc, q)
    with pytest.raises(InvalidInput):
        inc.add_rows([1, 1], ["a", "b"])
    with pytest.raises(InvalidInput):
        inc.add_rows([1], ["a", "b"])


def test_round_trip_through_duckdb(tmp_path) -> None:
    path = str(tmp_path / "catalog.duckdb")
    con = duckdb.connect(path)
    for sql in LEXICAL_TABLES:
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
    for sql, params in lexical_delete_sql([30]):
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
        _assert_same(idx, loaded, q)
    # The loaded index keeps accepting adds (delta on top of the loaded arrays).
    _add(loaded, [50], ["a cat in the garden"])
    got = _scores(loaded, "garden cat")
    assert max(got, key=got.__getitem__) == 50


def test_snapshot_round_trip_gives_identical_scores(tmp_path) -> None:
    """save_snapshot / load_snapshot: the same scores bit for bit, before and after more adds
    and deletes on both sides; a deleted document's words are not in the file."""
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(300)] + ["café", "naïve", "日本"]
    texts = [" ".join(rng.choice(words, 8)) for _ in range(3000)]
    live = LexicalIndex()
    _add(live, np.arange(3000), texts)  # bulk (CSC) ...
    _add(live, [5000], ["a forgettable zyzzyva"])  # ... then the delta and a tombstone
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
            _assert_same(live, loaded, q, exact=True)

    same()
    assert loaded._vocab.get("w1") is not None and loaded._vocab.get("nope") is None
    for idx in (live, loaded):
        _add(idx, np.arange(6000, 6100), [f"fresh w1 term{i % 7}" for i in range(100)])
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
    _add(bulk, np.arange(2000), texts)  # > 4096 postings: merged into the CSC arrays at once
    small = LexicalIndex()
    for i in range(0, 2000, 10):  # small batches: the delta path
        _add(small, np.arange(i, i + 10), texts[i:i + 10])
    for idx in (bulk, small):
        idx.apply_delete(np.arange(0, 2000, 3))
    bulk.compact()
    for q in ["w1 w2", "w7", "w3 w30 w49"]:
        _assert_same(bulk, small, q)
        assert not set(_scores(bulk, q)) & set(range(0, 2000, 3))


def test_common_terms_are_skipped_in_large_indexes_when_rarer_ones_exist() -> None:
    from engramdb.derived.lexical import COMMON_TERM_MIN_DOCS

    n = COMMON_TERM_MIN_DOCS
    idx = LexicalIndex()
    texts = [f"common words here number{i}" + (" zebra" if i % 2000 == 0 else "")
             for i in range(n)]
    _add(idx, np.arange(n), texts)
    # "common" is in every document: only the rare term's documents are scored.
    assert sorted(_scores(idx, "common zebra")) == list(range(0, n, 2000))
    assert len(_scores(idx, "common")) == n  # a query of common terms only still matches


def test_match_scores_like_the_textbook_formula_on_either_aggregation_path() -> None:
    """match aggregates the postings sparsely (few of them) or densely (many); both give the
    textbook scores, and per document the terms are summed in query order either way."""
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(400)]
    docs = [list(rng.choice(words, int(rng.integers(1, 12)))) for _ in range(600)]
    idx = LexicalIndex()
    _add(idx, np.arange(600), [" ".join(d) for d in docs])
    for terms, sparse in ((["w1", "w2", "w3"], True), (words[:120], False)):
        found = idx.match(terms)
        qp = found.postings
        assert (len(qp.slots) * 8 < 600) is sparse
        held = [t for t in terms if any(t in d for d in docs)]
        assert qp.counts == [int(np.count_nonzero([t in d for d in docs])) for t in held]
        assert np.array_equal(np.sort(found.eids), found.eids)  # slot order: eids here
        ref = _bm25(terms, docs)
        got = np.zeros(600)
        got[found.eids] = found.scores
        assert np.allclose(got, ref, rtol=1e-5)
        # Term after term, the postings name the documents that hold the term.
        per_term = np.split(found.posting_eids, np.cumsum(qp.counts)[:-1])
        assert [sorted(e.tolist()) for e in per_term] == [
            [i for i, d in enumerate(docs) if t in d] for t in held]


def test_snapshot_vocabulary_remembers_lookups_and_sees_terms_added_later(tmp_path) -> None:
    idx = LexicalIndex()
    _add(idx, np.array(EIDS), CORPUS)
    idx.save_snapshot(tmp_path / "lex.snapshot", {})
    snap, _ = LexicalIndex.load_snapshot(tmp_path / "lex.snapshot")
    before = _scores(snap, "zebra garden")
    assert _scores(snap, "zebra garden") == before and list(before) == [40]
    _add(snap, np.array([50]), ["a zebra"])  # a term the snapshot lacked (cached as a miss)
    assert list(_scores(snap, "zebra")) == [50]


def test_reads_never_see_half_an_update_while_another_thread_writes() -> None:
    """Recall reads the index while ingest adds to it and forget compacts it. A read used to
    be able to see a delta posting list one entry longer than its term-frequency twin, or
    slots renumbered by a compaction between the lookup and the scoring."""
    import threading

    idx = LexicalIndex()
    _add(idx, np.arange(50), ["apple pie and apple juice"] * 50)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            eid = 50
            for round_ in range(300):
                _add(idx, np.arange(eid, eid + 8), ["apple tart", "apple", "pear apple", "fig",
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
            reads += 1
    finally:
        t.join()
    assert not errors, errors
    assert len(idx.doc_lengths()[0]) == len(idx)


_WORDS = ["cat", "dog", "mouse", "garden", "night", "quiet", "chase", "run", "tree", "2022"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "delete", "search"]),
                          st.lists(st.lists(st.sampled_from(_WORDS), max_size=6),
                                   min_size=1, max_size=70)),
                min_size=1, max_size=12))
def test_deferred_postings_give_the_index_built_batch_by_batch(steps: list) -> None:
    """An open replays its journal inside deferring(): whatever is added, deleted and
    searched meanwhile, the index scores as one built batch by batch."""
    plain, deferred = LexicalIndex(), LexicalIndex()
    next_eid = 0
    with deferred.deferring():
        for op, batch in steps:
            if op == "add":
                eids = list(range(next_eid, next_eid + len(batch)))
                next_eid += len(batch)
                texts = [" ".join(words) for words in batch]
                _add(plain, eids, texts)
                _add(deferred, eids, texts)
            elif op == "delete" and next_eid:
                gone = sorted({(len(w) * 7 + i) % next_eid for i, w in enumerate(batch)})
                assert plain.apply_delete(gone) == deferred.apply_delete(gone)
            else:
                for words in batch[:3]:
                    _assert_same(plain, deferred, " ".join(words) or "cat")
            assert len(plain) == len(deferred)
    for words in ["cat dog", "night 2022", "run tree garden"]:
        _assert_same(plain, deferred, words)
    deferred.compact()
    plain.compact()
    for words in ["cat", "quiet chase", "mouse"]:
        _assert_same(plain, deferred, words)


def test_a_compaction_while_deferring_keeps_the_held_postings_on_their_documents() -> None:
    """Deletes past the compaction threshold renumber the slots; the postings held by
    deferring() are added first, so none lands on another document."""
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(_WORDS, 4)) + f" w{i}" for i in range(3000)]
    plain, deferred = LexicalIndex(), LexicalIndex()
    with deferred.deferring():
        for idx in (plain, deferred):
            for i in range(0, 3000, 50):
                _add(idx, np.arange(i, i + 50), texts[i:i + 50])
            idx.apply_delete(np.arange(0, 3000, 2))  # 1,500 deletes: a compaction
            _add(idx, np.arange(3000, 3010), [f"late {i}" for i in range(10)])
    for q in ["w1", "w3", "w2999", "cat", "dog tree", "late"]:
        _assert_same(plain, deferred, q)
    assert set(_scores(deferred, "w2")) == set()  # deleted
    assert set(_scores(deferred, "w7")) == {7}
