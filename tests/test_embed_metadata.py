"""Metadata values embedded with the text (``Settings.embed_metadata``).

An app that names metadata keys in ``lexical_metadata`` (an image's caption) has their values
searched on both sides of hybrid recall: BM25 indexes them (tests/test_lexical_metadata.py)
and, with ``embed_metadata`` (on for new stores), a new engram's stored vector is that of
"text [value]". A store recorded before the setting existed keeps embedding the text alone.
Tiny stores with the model-free HashingEncoder, whose vectors share words' n-grams.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engramdb
from engramdb.derived.metadata_text import dense_document, lexical_document, metadata_values
from engramdb.encoders import HashingEncoder
from engramdb.engine.turnlog import TurnRecord
from engramdb.engine.writer import _Planned
from engramdb.reembed import embedded_text, reembed
from engramdb.settings import Settings
from engramdb.storage.manifest import MANIFEST_NAME

TEXT = "look at this one!"
CAPTION = {"image_caption": "a red bicycle leaning on a lighthouse"}
EMBEDDED = "look at this one! [a red bicycle leaning on a lighthouse]"
DENSE_ONLY = {"lexical_weight": 0.0, "context": False}


class RecordingEncoder(HashingEncoder):
    """The HashingEncoder (same spec, so the same store) that records each encode call."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__(dim=dim)
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return super().encode(texts)


def _open(path: Path, encoder: HashingEncoder | None = None, **kw: object) -> engramdb.Store:
    return engramdb.open(path, encoder=encoder or HashingEncoder(dim=64),
                         settings=Settings(**({"lexical_metadata": "image_caption"} | kw)))


def _vec(text: str) -> np.ndarray:
    return HashingEncoder(dim=64).encode([text])[0]


def _stored_is(mem: engramdb.Store, ident: str, text: str) -> bool:
    return abs(float(mem.vectors([ident])[0] @ _vec(text)) - 1.0) < 1e-5


def test_documents() -> None:
    meta = json.dumps({"cap": "a lake", "n": 7, "tags": ["x", True], "other": "unnamed"})
    assert metadata_values(meta, "tags,cap,n") == ["x", "a lake", "7"]
    assert dense_document("hi", meta, "cap,n") == "hi [a lake] [7]"
    assert lexical_document("hi", meta, "cap,n") == "hi a lake 7"
    for keys, m in (("", meta), ("cap", None), ("cap", "[1]"), ("cap", "{bad"), ("zz", meta),
                    ("cap", '{"cap": ""}'), ("cap", '{"cap": "  "}'), ("cap", '{"cap": [""]}')):
        assert dense_document("hi", m, keys) == "hi"
        assert lexical_document("hi", m, keys) == "hi"
    assert dense_document("hi", '{"cap": ["", "a"]}', "cap") == "hi [a]"


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=1, max_size=20),
       meta=st.dictionaries(st.sampled_from(["a", "b"]),
                            st.one_of(st.text(max_size=10), st.integers(), st.none()),
                            max_size=2))
def test_dense_document_is_the_text_then_each_value_in_brackets(text: str, meta: dict) -> None:
    values = metadata_values(json.dumps(meta), "a,b")
    assert dense_document(text, json.dumps(meta), "a,b") == " ".join(
        [text, *(f"[{v}]" for v in values)])
    assert all(v.strip() for v in values)
    assert values == [str(meta[k]) for k in ("a", "b")
                      if meta.get(k) is not None and str(meta[k]).strip()]


@pytest.mark.parametrize("path_kind", ["turn", "batch", "integrate", "upsert"])
def test_every_write_path_embeds_the_named_values(tmp_path: Path, path_kind: str) -> None:
    for embed in (True, False):
        with _open(tmp_path / f"{path_kind}-{embed}", embed_metadata=embed) as mem:
            if path_kind == "turn":
                ident = mem.ingest(TEXT, metadata=CAPTION).id
            elif path_kind == "batch":
                ident = mem.ingest_many(["plain soup", TEXT], metadatas=[None, CAPTION])[1].id
            elif path_kind == "integrate":
                ident = mem.integrate(TEXT, metadata=CAPTION).id
            else:
                ident = mem.upsert("k", TEXT, metadata=CAPTION).id
            assert _stored_is(mem, ident, EMBEDDED if embed else TEXT)
        with _open(tmp_path / f"{path_kind}-{embed}", embed_metadata=embed) as mem:
            assert _stored_is(mem, ident, EMBEDDED if embed else TEXT)  # replayed or folded


def test_integrate_recalls_with_the_text_alone(tmp_path: Path) -> None:
    enc = RecordingEncoder()
    with _open(tmp_path / "s", encoder=enc) as mem:
        mem.ingest("something else entirely")
        enc.calls.clear()
        mem.integrate(TEXT, metadata=CAPTION)
        assert enc.calls == [[EMBEDDED, TEXT]]  # one call: the stored text, the query
        enc.calls.clear()
        mem.integrate("no caption here")
        assert enc.calls == [["no caption here"]]


def test_dense_recall_finds_a_turn_by_its_caption(tmp_path: Path) -> None:
    found = {}
    for embed in (True, False):
        with _open(tmp_path / f"s{embed}", embed_metadata=embed, **DENSE_ONLY) as mem:
            mem.ingest_many([f"plain remark {i} about soup" for i in range(20)])
            ident = mem.ingest(TEXT, metadata=CAPTION).id
            found[embed] = mem.recall("red bicycle lighthouse", top_k=1)[0].id == ident
    assert found == {True: True, False: False}


def test_a_given_vector_is_stored_as_given(tmp_path: Path) -> None:
    with _open(tmp_path / "s") as mem:
        ident = mem.ingest(TEXT, metadata=CAPTION, vector=_vec("anything")).id
        assert _stored_is(mem, ident, "anything")


def test_the_earliest_occurrence_gives_the_values(tmp_path: Path) -> None:
    with _open(tmp_path / "s") as mem:
        ident = mem.ingest(TEXT, metadata=CAPTION).id
        assert mem.ingest(TEXT, metadata={"image_caption": "a second photo"}).id == ident
        assert _stored_is(mem, ident, EMBEDDED)


def test_a_store_recorded_before_the_setting_embeds_the_text_alone(tmp_path: Path) -> None:
    assert Settings().embed_metadata is True
    assert Settings.from_stored({"role_lexical": True}).embed_metadata is False
    path = tmp_path / "s"
    with _open(path):
        pass
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    del manifest["settings"]["embed_metadata"]  # as a store of the version before wrote it
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with engramdb.open(path, encoder=HashingEncoder(dim=64)) as mem:
        assert mem.settings.embed_metadata is False
        assert _stored_is(mem, mem.ingest(TEXT, metadata=CAPTION).id, TEXT)


def test_reembed_embeds_as_the_store_did(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with _open(path) as mem:
        mem.ingest(TEXT, metadata=CAPTION)
        mem.ingest(TEXT, metadata={"image_caption": "a later caption"})
        mem.ingest("plain soup")
    new_enc = HashingEncoder(dim=64, seed=1)
    reembed(path, new_enc)
    with engramdb.open(path, encoder=new_enc) as mem:
        ident = mem.recall(TEXT, top_k=1)[0].id
        expected = new_enc.encode([EMBEDDED])[0]
        assert abs(float(mem.vectors([ident])[0] @ expected) - 1.0) < 1e-5
    rec = {"text": TEXT, "occurrences": [{"seq": 5, "metadata": {"image_caption": "late"}},
                                         {"seq": 2, "metadata": CAPTION}]}
    assert embedded_text(rec, Settings(lexical_metadata="image_caption")) == EMBEDDED
    assert embedded_text(rec, Settings(lexical_metadata="image_caption",
                                       embed_metadata=False)) == TEXT


def test_the_first_of_one_batch_gives_the_values(tmp_path: Path) -> None:
    with _open(tmp_path / "s") as mem:
        res = mem.ingest_many([TEXT, TEXT], metadatas=[CAPTION, {"image_caption": "second"}])
        assert res[0].id == res[1].id
        assert _stored_is(mem, res[0].id, EMBEDDED)


def test_a_replayed_turn_whose_engram_was_lost_embeds_the_values(tmp_path: Path) -> None:
    # A turn record holds no vector for a text that was stored when it was written; if that
    # engram was lost (a power cut in "fast" durability), the replay encodes it again.
    meta = json.dumps(CAPTION, sort_keys=True)
    record = TurnRecord(seq=1, texts=[TEXT], roles=[None], sessions=[None], metas=[meta],
                        pins=[False], kind=0, now=None, hits=None, rows=[],
                        vectors=np.zeros((0, 64), np.float32))
    for embed in (True, False):
        with _open(tmp_path / f"s{embed}", embed_metadata=embed) as mem:
            plan = _Planned(existing={}, new_first={"x": 0}, eid_of={"x": 0},
                            new_eids=np.array([0]))
            vec = mem._writer._replayed_vectors(record, plan)[0]
            assert abs(float(vec @ _vec(EMBEDDED if embed else TEXT)) - 1.0) < 1e-5


def test_reembed_of_a_store_recorded_before_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with _open(path, embed_metadata=False) as mem:
        mem.ingest(TEXT, metadata=CAPTION)
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    del manifest["settings"]["embed_metadata"]
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    new_enc = HashingEncoder(dim=64, seed=1)
    reembed(path, new_enc)
    with engramdb.open(path, encoder=new_enc) as mem:
        ident = mem.recall(TEXT, top_k=1)[0].id
        assert abs(float(mem.vectors([ident])[0] @ new_enc.encode([TEXT])[0]) - 1.0) < 1e-5
        assert mem.settings.embed_metadata is False


def test_an_open_that_changes_what_is_embedded_says_so(tmp_path: Path, caplog) -> None:
    path = tmp_path / "s"
    with _open(path, embed_metadata=False) as mem:
        ident = mem.ingest(TEXT, metadata=CAPTION).id
    with caplog.at_level("WARNING", logger="engramdb"):
        with _open(path) as mem:  # Settings(): embed_metadata on
            assert _stored_is(mem, ident, TEXT)  # stored before: kept
            assert _stored_is(mem, mem.ingest("new one", metadata=CAPTION).id,
                              "new one [a red bicycle leaning on a lighthouse]")
    assert any("embed the metadata keys 'image_caption'" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="engramdb"), _open(path):
        pass  # recorded: no second warning
    assert not any("embed the metadata" in r.getMessage() for r in caplog.records)
