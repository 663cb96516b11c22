"""Bad input gets a clear engramdb.errors exception and leaves the store untouched."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engramdb
from engramdb.content import normalize_text
from engramdb.encoders import FunctionEncoder, HashingEncoder
from engramdb.errors import (
    DimensionMismatch,
    EncoderRequired,
    FormatTooNew,
    InvalidInput,
    ModelMismatch,
    NotAStore,
    NotFound,
)


def _fingerprint_of_store(mem) -> tuple:
    s = mem.stats()
    # (Not the files: a call may fold the turn journal into the catalog before it refuses.)
    held = [(r.id, r.text) for r in mem.recall("a first memory", top_k=5)]
    segments = mem._parts.segments
    rows = {seg: segments.rows_on_disk(seg) for seg in segments.committed}
    return s["count"], s["generation"], held, segments.committed, rows


@pytest.fixture
def seeded(mem):
    mem.ingest("a first memory")
    return mem


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda m: m.ingest(""), InvalidInput),
        (lambda m: m.ingest("   \n\t "), InvalidInput),
        (lambda m: m.ingest(None), InvalidInput),
        (lambda m: m.ingest(b"bytes"), InvalidInput),
        (lambda m: m.ingest(42), InvalidInput),
        (lambda m: m.ingest("x", vector=[float("nan")] * 16), InvalidInput),
        (lambda m: m.ingest("x", vector=[float("inf")] + [0.0] * 15), InvalidInput),
        (lambda m: m.ingest("x", vector=[1.0] * 15), DimensionMismatch),
        (lambda m: m.ingest("x", vector=[0.0] * 16), InvalidInput),
        (lambda m: m.ingest("x", vector="not a vector"), InvalidInput),
        (lambda m: m.ingest("x", metadata={"when": object()}), InvalidInput),
        (lambda m: m.ingest("x", metadata={"bad": float("nan")}), InvalidInput),
        (lambda m: m.ingest("x", metadata={1: "int key"}), InvalidInput),
        (lambda m: m.ingest("x", metadata=["not", "a", "dict"]), InvalidInput),
        (lambda m: m.ingest("x", role=""), InvalidInput),
        (lambda m: m.ingest("x", session=7), InvalidInput),
        (lambda m: m.ingest("\ud800 lone surrogate"), InvalidInput),
        (lambda m: m.ingest_many("not a list"), InvalidInput),
        (lambda m: m.ingest_many(["ok", ""]), InvalidInput),
        (lambda m: m.ingest_many(["ok", "fine"], roles=["user"]), InvalidInput),
        (lambda m: m.ingest_many(["ok", "fine"], vectors=np.ones((2, 5))), DimensionMismatch),
        (lambda m: m.get("0" * 64), NotFound),
        (lambda m: m.get("not-an-id"), InvalidInput),
        (lambda m: m.get(123), InvalidInput),
        (lambda m: m.forget(["0" * 64]), NotFound),
        (lambda m: m.recall("x", top_k=0), InvalidInput),
        (lambda m: m.recall("x", top_k="5"), InvalidInput),
        (lambda m: m.recall(""), InvalidInput),
        (lambda m: m.recall(), InvalidInput),
        (lambda m: m.recall("x", vector=[1.0] * 16), InvalidInput),
        (lambda m: m.recall(vector=[1.0] * 3), DimensionMismatch),
        (lambda m: m.recall("x", where={"colour": "red"}), InvalidInput),
        (lambda m: m.recall("x", where={"session": 5}), InvalidInput),
        (lambda m: m.recall("x", kinds=["immortal"]), InvalidInput),
    ],
)
def test_bad_input_raises_and_store_is_untouched(seeded, call, exc) -> None:
    before = _fingerprint_of_store(seeded)
    with pytest.raises(exc) as info:
        call(seeded)
    assert isinstance(info.value, engramdb.errors.EngramError)
    assert info.value.hint  # every error says what to do
    assert _fingerprint_of_store(seeded) == before
    assert seeded.verify().ok


def test_forget_with_one_unknown_id_forgets_nothing(seeded) -> None:
    real = seeded.ingest("second").id
    with pytest.raises(NotFound):
        seeded.forget([real, "f" * 64])
    assert real in seeded


def test_failing_encoder_is_wrapped(store_path: Path) -> None:
    def broken(texts):
        raise RuntimeError("GPU on fire")

    with engramdb.open(store_path, encoder=FunctionEncoder(broken, 4, "broken")) as mem:
        with pytest.raises(InvalidInput, match="GPU on fire"):
            mem.ingest("hello")
        assert mem.verify().ok and len(mem) == 0

    def wrong_shape(texts):
        return np.ones((len(texts), 3))

    with pytest.raises(engramdb.errors.ModelMismatch):
        engramdb.open(store_path, encoder=FunctionEncoder(wrong_shape, 3, "other"))


def test_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(NotAStore):
        engramdb.open(f, encoder=HashingEncoder())
    assert f.read_text() == "hello"


def test_foreign_directory_is_not_clobbered(tmp_path: Path) -> None:
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(NotAStore):
        engramdb.open(d, encoder=HashingEncoder())
    assert sorted(p.name for p in d.iterdir()) == ["cat.jpg"]


def test_newer_format_is_refused(store_path: Path, encoder) -> None:
    with engramdb.open(store_path, encoder=encoder) as mem:
        mem.ingest("hello")
    manifest = store_path / "MANIFEST.json"
    doc = json.loads(manifest.read_text())
    doc["format_version"] = 99
    manifest.write_text(json.dumps(doc))
    with pytest.raises(FormatTooNew, match="99"):
        engramdb.open(store_path)


def test_model_mismatch_names_both_fingerprints(store_path: Path) -> None:
    a, b = HashingEncoder(dim=32), HashingEncoder(dim=32, seed=1)
    with engramdb.open(store_path, encoder=a):
        pass
    with pytest.raises(ModelMismatch) as info:
        engramdb.open(store_path, encoder=b)
    assert a.fingerprint[:16] in str(info.value) and b.fingerprint[:16] in str(info.value)


def test_function_encoder_store_asks_for_its_function(store_path: Path) -> None:
    enc = FunctionEncoder(lambda ts: np.ones((len(ts), 4)) + np.arange(4), 4, "mine-v1")
    with engramdb.open(store_path, encoder=enc) as mem:
        mem.ingest("hello")
    with engramdb.open(store_path) as mem:
        assert mem.recall(vector=[1, 2, 3, 4], top_k=1)[0].text == "hello"
        with pytest.raises(EncoderRequired, match="mine-v1"):
            mem.recall("hello")


def test_new_store_needs_encoder_or_dim(store_path: Path) -> None:
    with pytest.raises(InvalidInput):
        engramdb.open(store_path)
    assert not (store_path / "MANIFEST.json").exists()


def test_closed_store_refuses_work(store_path: Path, encoder) -> None:
    mem = engramdb.open(store_path, encoder=encoder)
    mem.close()
    mem.close()  # idempotent
    with pytest.raises(engramdb.errors.StoreClosed):
        mem.ingest("late")


_json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
_metadata = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=10), _json_scalars, max_size=4),
    st.dictionaries(st.text(max_size=5), st.floats(allow_nan=True, allow_infinity=True),
                    min_size=1, max_size=2),
    st.just({"obj": object()}),
    st.integers(),
)
_texts = st.one_of(st.text(max_size=60), st.none(), st.integers(), st.binary(max_size=5))
_vectors = st.one_of(
    st.none(),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=20),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=_texts, metadata=_metadata, vector=_vectors)
def test_property_any_input_is_stored_exactly_or_refused_cleanly(mem, text, metadata, vector):
    before = _stats(mem)
    try:
        result = mem.ingest(text, metadata=metadata, vector=vector)
    except engramdb.errors.EngramError as exc:
        assert exc.hint
        assert _stats(mem) == before  # nothing half-written
        return
    engram = mem.get(result.id)
    assert engram.text == normalize_text(text)
    if metadata is not None:
        assert engram.occurrences[-1].metadata == metadata
    if vector is not None:
        v = np.asarray(vector, np.float64)
        assert len(v) == 16 and np.isfinite(v).all() and np.linalg.norm(v) > 0
    stored = mem.vectors([result.id])[0]
    assert math.isclose(float(np.linalg.norm(stored)), 1.0, rel_tol=1e-5)


def _stats(mem):
    s = mem.stats()
    return s["count"], s["generation"], s["files"].get("segments/00000001.vec", 0)


@pytest.fixture
def encoder():
    return HashingEncoder(dim=16)


def test_property_store_verifies_after_fuzzing(mem) -> None:
    test_property_any_input_is_stored_exactly_or_refused_cleanly(mem)
    assert mem.verify().ok


def test_ingest_many_takes_a_kind_by_name(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "a.engram", dim=4) as mem:
        mem.ingest_many(["kept"], vectors=[[1, 0, 0, 0]], kind="long_term")
        assert mem.recall(vector=[1, 0, 0, 0], top_k=1)[0].kind == engramdb.Kind.LONG_TERM
        for bad in ("dead", "forever", 3):
            with pytest.raises(InvalidInput):
                mem.ingest_many(["x"], vectors=[[0, 1, 0, 0]], kind=bad)


def test_an_encoder_that_raises_is_named_and_writes_nothing(tmp_path: Path) -> None:
    """Whatever the encoder itself throws becomes InvalidInput naming it (ingest and
    reembed share Encoder.encode_stored), and the store keeps what it had."""
    def encode(texts: list[str]) -> np.ndarray:
        if any("boom" in t for t in texts):
            raise RuntimeError("model down")
        return np.ones((len(texts), 8), np.float32)

    enc = FunctionEncoder(encode, dim=8, name="flaky")
    with engramdb.open(tmp_path / "s", encoder=enc) as mem:
        mem.ingest("fine")
        with pytest.raises(InvalidInput, match="the encoder failed: RuntimeError: model down"):
            mem.ingest("boom")
        assert mem.count == 1 and mem.verify().ok
    with engramdb.open(tmp_path / "t", encoder=HashingEncoder(dim=8)) as mem:
        mem.ingest("boom")
    with pytest.raises(InvalidInput, match="the encoder failed"):
        engramdb.reembed(tmp_path / "t", enc)
    with engramdb.open(tmp_path / "t") as mem:
        assert mem.count == 1 and mem.fingerprint == HashingEncoder(dim=8).fingerprint
