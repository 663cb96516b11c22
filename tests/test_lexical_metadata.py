"""Metadata values searched as words of the engram (``Settings.lexical_metadata``).

An app keeps what is not the text itself (an image's caption, a document's title) under
metadata keys; naming those keys makes BM25 index their values with the text, on every write
path (a journaled turn, a batch, a rebuild, an import), and an open that changes the keys
indexes the store again. Tiny stores with the model-free HashingEncoder.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engramdb
from engramdb.derived.lexical import lexical_document, tokenize
from engramdb.encoders import HashingEncoder
from engramdb.engine.derive import DerivedLoader
from engramdb.errors import InvalidInput
from engramdb.settings import Settings
from engramdb.storage.catalog import CATALOG_NAME, make_catalog
from engramdb.storage.journal import JOURNAL_NAME
from engramdb.transfer import export_store, import_store

CAPTION = {"image_caption": "a red bicycle leaning on a lighthouse"}
BM25_ONLY = {"lexical_weight": 1.0, "context": False}


def _open(path: Path, **settings: object) -> engramdb.Store:
    return engramdb.open(path, encoder=HashingEncoder(dim=64),
                         settings=Settings(**(BM25_ONLY | settings)))


def _fill(mem: engramdb.Store) -> str:
    """A captioned turn among plain ones; returns its id."""
    mem.ingest_many([f"plain remark {i} about soup" for i in range(20)])
    return mem.ingest("look at this one!", role="ann", metadata=CAPTION).id


def _lexical_hits(mem: engramdb.Store, query: str) -> list[str]:
    hits = mem.recall(query, top_k=5, associative=False)
    return [h.id for h in hits if h.scores.get("lexical", 0) > 0]


def _postings(mem: engramdb.Store) -> list[tuple]:
    with mem.snapshot() as snap:
        return sorted(snap.query("SELECT term, eid, tf FROM lex_postings"))


def test_setting_is_checked_and_normalised() -> None:
    assert Settings(lexical_metadata=" image_caption , title ").lexical_metadata == \
        "image_caption,title"
    assert Settings().lexical_metadata == ""
    for bad in ("a,,b", ",", " "):
        with pytest.raises(InvalidInput, match="lexical_metadata"):
            Settings(lexical_metadata=bad)
    with pytest.raises(InvalidInput):
        Settings(lexical_metadata=["image_caption"])  # type: ignore[arg-type]


def test_document_takes_named_values() -> None:
    meta = json.dumps({"cap": "red bicycle", "n": 42, "tags": ["lake", 7, True, {"x": "no"}],
                       "flag": True, "deep": {"cap": "hidden"}, "other": "unnamed"})
    doc = lexical_document("hello", meta, "cap,n,tags,flag,deep,missing")
    assert doc.split() == ["hello", "red", "bicycle", "42", "lake", "7"]
    assert lexical_document("hello", meta, "") == "hello"
    assert lexical_document("hello", None, "cap") == "hello"
    assert lexical_document("hello", "[1, 2]", "cap") == "hello"
    assert lexical_document("hello", "{not json", "cap") == "hello"


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=1, max_size=30),
       meta=st.dictionaries(st.sampled_from(["a", "b", "c"]),
                            st.one_of(st.text(max_size=20), st.integers(), st.booleans(),
                                      st.lists(st.text(max_size=8), max_size=3)),
                            max_size=3),
       keys=st.lists(st.sampled_from(["a", "b", "z"]), min_size=1, max_size=3, unique=True))
def test_document_holds_text_and_string_values(text: str, meta: dict, keys: list[str]) -> None:
    doc_terms = set(tokenize(lexical_document(text, json.dumps(meta), ",".join(keys))))
    assert set(tokenize(text)) <= doc_terms
    for key in keys:
        value = meta.get(key)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, str):
                assert set(tokenize(v)) <= doc_terms


@pytest.mark.parametrize("batch", [False, True])
def test_caption_is_searched_only_when_named(tmp_path: Path, batch: bool) -> None:
    for keys in ("", "image_caption"):
        path = tmp_path / f"s-{keys}"
        with _open(path, lexical_metadata=keys) as mem:
            if batch:
                ident = mem.ingest_many(["plain soup", "look at this one!"],
                                        metadatas=[None, CAPTION])[1].id
            else:
                ident = _fill(mem)  # through the turn journal
            assert (ident in _lexical_hits(mem, "bicycle lighthouse")) == bool(keys)
            # the named caption is embedded with the text (embed_metadata, on by default)
            embedded = ("look at this one! [a red bicycle leaning on a lighthouse]" if keys
                        else "look at this one!")
            expected = HashingEncoder(dim=64).encode([embedded])[0]
            assert abs(float(mem.vectors([ident])[0] @ expected) - 1.0) < 1e-5
        with _open(path, lexical_metadata=keys) as mem:  # folded, reopened
            assert (ident in _lexical_hits(mem, "bicycle lighthouse")) == bool(keys)


def test_rebuild_and_import_index_the_same_words(tmp_path: Path) -> None:
    with _open(tmp_path / "a", lexical_metadata="image_caption") as mem:
        _fill(mem)
        mem.ingest("look at this one!", metadata={"image_caption": "a second caption"})
        written = _postings(mem)
        export_store(mem, tmp_path / "a.jsonl")
        mem.rebuild()
        assert _postings(mem) == written  # the earliest occurrence's caption, both ways
    import_store(tmp_path / "b", tmp_path / "a.jsonl")
    with engramdb.open(tmp_path / "b") as mem:
        assert mem.settings.lexical_metadata == "image_caption"
        assert _postings(mem) == written


def test_changing_the_keys_reindexes(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with _open(path) as mem:
        ident = _fill(mem)
        assert ident not in _lexical_hits(mem, "bicycle")
    with _open(path, lexical_metadata="image_caption") as mem:
        assert _lexical_hits(mem, "bicycle") == [ident]
        assert mem.verify().ok
    with engramdb.open(path) as mem:  # recorded
        assert mem.settings.lexical_metadata == "image_caption"
        assert ident in _lexical_hits(mem, "bicycle")
    with _open(path, lexical_metadata="") as mem:
        assert ident not in _lexical_hits(mem, "bicycle")


def test_unfolded_turns_replay_then_reindex(tmp_path: Path) -> None:
    """Turns left in the journal were indexed under the old keys; the open that changes
    them replays those first, then indexes everything under the new ones."""
    path = tmp_path / "s"
    mem = _open(path)
    ident = _fill(mem)
    del mem  # dropped without close: the turns stay journaled
    gc.collect()
    assert (path / JOURNAL_NAME).stat().st_size > 0
    with _open(path, lexical_metadata="image_caption") as again:
        assert again.get(ident) is not None
        assert _lexical_hits(again, "bicycle") == [ident]


@pytest.mark.parametrize("catalog_renamed", [False, True])
def test_reindex_failure_keeps_the_old_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            catalog_renamed: bool) -> None:
    """The new keys are recorded only once the store is indexed under them; also when the
    open first records a catalog whose first fold died after its rename
    (``catalog_renamed``: the manifest gains the flag alone)."""
    path = tmp_path / "s"
    with _open(path) as mem:
        ident = _fill(mem)
    if catalog_renamed and not (path / CATALOG_NAME).exists():
        make_catalog(path)

    def fail(self: DerivedLoader) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(DerivedLoader, "reindex_lexical", fail)
    with pytest.raises(OSError):
        _open(path, lexical_metadata="image_caption")
    monkeypatch.undo()
    with engramdb.open(path) as mem:
        assert mem.settings.lexical_metadata == ""
        assert ident not in _lexical_hits(mem, "bicycle")
        assert mem.verify().ok


def test_read_only_open_does_not_reindex(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with _open(path) as mem:
        ident = _fill(mem)
        before = _postings(mem)
    with engramdb.open(path, read_only=True,
                       settings=Settings(**BM25_ONLY, lexical_metadata="image_caption")) as mem:
        assert ident not in _lexical_hits(mem, "bicycle")
        assert _postings(mem) == before
    with engramdb.open(path) as mem:
        assert mem.settings.lexical_metadata == ""


def test_the_reindexing_handle_ranks_as_the_next_open(tmp_path: Path) -> None:
    """The handle whose open re-indexed answers as a later open does: the conversation
    context (which holds the documents' lengths) follows the new words too."""
    path = tmp_path / "s"
    with engramdb.open(path, encoder=HashingEncoder(dim=64)) as mem:
        for i in range(4):  # one session's turns get long captions, the others none
            mem.ingest(f"ducks note {i}", session="s0",
                       metadata={"cap": "long caption " * 10 + str(i)})
            mem.ingest(f"ducks memo {i}", session="s1")
            mem.ingest(f"other words {i}", session="s2")
    settings = Settings(lexical_metadata="cap")

    def answers(mem: engramdb.Store) -> list[tuple[str, dict[str, float]]]:
        return [(h.text, {k: round(v, 6) for k, v in h.scores.items()})
                for h in mem.recall("ducks", top_k=6, associative=False)]

    with engramdb.open(path, settings=settings) as mem:
        first = answers(mem)
    with engramdb.open(path) as mem:
        assert answers(mem) == first
