"""LangChain: one engramdb store as a ``langchain_core`` :class:`VectorStore`.

:class:`EngramVectorStore` keeps LangChain documents in a store at ``path``, embedded by any
LangChain :class:`~langchain_core.embeddings.Embeddings`::

    from engramdb.integrations.langchain import EngramVectorStore

    with EngramVectorStore("memories/docs.engram", embeddings) as db:
        ids = db.add_texts(["Oscar is a guinea pig."], metadatas=[{"topic": "pets"}])
        docs = db.similarity_search("which pets?", k=3, filter={"topic": "pets"})

How LangChain's notions map onto engramdb's:

- A document is one keyed *occurrence*: ``Document.id`` is the occurrence's caller key,
  ``metadata`` its metadata, ``page_content`` the engram's text. engramdb stores text
  normalised (NFC, ``\\r\\n`` -> ``\\n``, outer blanks stripped), so that is the text that comes
  back, and an empty or blank text is refused. The same text under two ids is one engram (one
  vector) with two occurrences: a search returns both documents, with the same score.
- Adding with ids replaces those documents (``Store.upsert_many``, one call per batch); without
  ids, uuid4 keys are generated and returned. Documents are pinned by default (they never
  expire as the store's clock advances); ``pin=False`` lets them age like other memories.
- A search embeds the query with ``embed_query`` and recalls by vector, without association:
  plain cosine similarity over the stored (unit-length) vectors. ``filter`` is a dict of
  metadata conditions, all of which must hold, with engramdb's operators (``$eq $ne $in $nin
  $gt $gte $lt $lte $exists``, dotted keys for nested values; docs/recall.md, "Filters").
- Scores: :meth:`~EngramVectorStore.similarity_search_with_score` gives the cosine similarity
  in [-1, 1] (higher is closer); ``similarity_search_with_relevance_scores`` gives
  :attr:`engramdb.types.Recall.relevance` in [0, 1] (0 up to cosine 0.2, 1 from cosine 0.8,
  linear between; docs/recall.md, "Relevance"), which ``score_threshold`` compares against.
- Occurrences stored without a key (by ``Store.ingest``, e.g. a chatbot sharing the store)
  are documents too, with ``id=None``.

Needs the ``langchain`` extra (``pip install 'engramdb[langchain]'``); ``import engramdb`` never
imports this module or ``langchain_core``. The async methods are LangChain's defaults: each
runs its sync twin in a worker thread (the Store is thread-safe).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np

from engramdb.encoders import FunctionEncoder
from engramdb.errors import EngramError, InvalidInput, NotFound
from engramdb.recall.hybrid import dense_relevance
from engramdb.settings import Settings
from engramdb.storage.manifest import MANIFEST_NAME, Manifest
from engramdb.store import Store
from engramdb.store import open as open_store
from engramdb.types import Engram, Occurrence, Recall

INSTALL_HINT = "pip install 'engramdb[langchain]'"


class MissingExtra(EngramError, ImportError):
    """``langchain-core`` (the ``langchain`` extra) is not installed."""

    default_hint = INSTALL_HINT


try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ImportError as exc:  # the extra is missing: say how to get it
    raise MissingExtra(
        f"engramdb.integrations.langchain needs langchain-core ({exc})") from exc

# Attributes that name an Embeddings' model, in the order they are looked for.
_MODEL_ATTRS = ("model", "model_name", "model_id")
# Engrams listed and forgotten per commit by delete() without ids.
_DELETE_PAGE = 1000
_PROBE_TEXT = "engramdb dimension probe"


class _Found(NamedTuple):
    """One document a search found: its cosine with the query, its relevance, its engram."""

    document: Document
    cosine: float
    relevance: float
    engram_id: str


class EngramVectorStore(VectorStore):
    """A LangChain vector store kept in one engramdb store (see the module docstring).

    ``path`` is the store's directory: created if missing (``embedding`` is asked for one
    vector then, to learn its dimension), reopened otherwise (its dimension is read from the
    manifest). ``embedding_name`` identifies the embedding model in the store's fingerprint;
    by default ``"langchain:<class name>[:<model>]"``; reopening with another name raises
    :class:`~engramdb.errors.ModelMismatch`, and vectors of another dimension than the
    store's are refused when they come (InvalidInput, DimensionMismatch). ``settings`` and
    ``lock_timeout`` are :func:`engramdb.open`'s. ``pin`` (default True) keeps added documents
    from ever expiring. Close the store with :meth:`close` or a ``with`` block.

    Raises InvalidInput for a bad argument, and what :func:`engramdb.open` raises
    (StoreLocked, NotAStore, ModelMismatch...).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        embedding: Embeddings,
        *,
        settings: Settings | dict[str, Any] | None = None,
        embedding_name: str | None = None,
        pin: bool = True,
        lock_timeout: float = 0.0,
    ) -> None:
        if not isinstance(embedding, Embeddings):
            raise InvalidInput(
                f"embedding must be a langchain_core Embeddings, got {type(embedding).__name__}")
        if not isinstance(pin, bool):
            raise InvalidInput(f"pin must be True or False, got {pin!r}")
        where = _store_path(path)
        name = default_embedding_name(embedding) if embedding_name is None else embedding_name
        encoder = FunctionEncoder(embedding.embed_documents, _store_dim(where, embedding), name)
        self._embedding = embedding
        self._pin = pin
        self._store = open_store(where, encoder, settings=settings, lock_timeout=lock_timeout)

    # -- the store ----------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The engramdb :class:`~engramdb.Store` underneath (for recall, stats, gc...)."""
        return self._store

    @property
    def embeddings(self) -> Embeddings:
        """The LangChain embeddings that encode documents and queries."""
        return self._embedding

    def close(self) -> None:
        """Close the store (idempotent); every acknowledged write is already durable."""
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -------------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store ``texts``; return their ids, in order.

        An id already stored is replaced (its text, metadata and vector); an id that is None,
        or no ``ids`` at all, gets a new uuid4. Everything is checked before anything is
        written, and the batch is one ``Store.upsert_many`` call. ``batch_size`` is accepted
        (LangChain's indexing API passes it) and ignored: engramdb commits in batches of
        ``settings.batch_rows``. Raises InvalidInput for a text that is not a non-empty str,
        metadata that is not a JSON dict, an id twice, or lists of the wrong length.
        """
        _options(kwargs, ("batch_size",), "add_texts")
        listed = _text_list(texts)
        keys = _keys_for(ids, len(listed))
        metas = _metadata_list(metadatas, len(listed))
        if listed:
            self._store.upsert_many(keys, listed, metadatas=metas, pins=[self._pin] * len(keys))
        return keys

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete the documents with these ids; ids not stored are skipped. Return True.

        With ``ids=None`` every engram in the store is forgotten (LangChain's "delete all"),
        keyless occurrences stored outside LangChain included. An engram is erased once its
        last occurrence goes; ``store.gc()`` then reclaims its bytes.
        """
        _options(kwargs, (), "delete")
        if ids is None:
            self._forget_everything()
            return True
        keys = _id_list(ids)
        for _ in range(len(keys) + 1):  # each retry follows a key another writer removed
            present = list(self._store.get_keys(keys))
            if not present:
                return True
            try:
                self._store.forget(keys=present)
                return True
            except NotFound:
                continue
        return True

    def _forget_everything(self) -> None:
        """Forget every engram, a page per commit, until the store is empty."""
        while page := self._store.engrams(limit=_DELETE_PAGE):
            try:
                self._store.forget([engram.id for engram in page])
            except NotFound:  # another writer removed one meanwhile: list again
                continue

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str | None] | None = None,
        path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Self:
        """Open (or create) the store at ``path`` and add ``texts`` to it.

        ``path`` is required; the other keywords are the constructor's (``settings``,
        ``embedding_name``, ``pin``, ``lock_timeout``). The store is closed again if adding
        fails.
        """
        if path is None:
            raise InvalidInput("from_texts needs path=...: the directory of the engramdb store")
        store = cls(path, embedding, **kwargs)
        try:
            store.add_texts(texts, metadatas, ids=ids)
        except BaseException:
            store.close()
            raise
        return store

    # -- reads --------------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids, in the order given; ids not stored are skipped."""
        keys = _id_list(ids)
        found = self._store.get_keys(keys)
        docs = (_keyed_document(found[key], key) for key in keys if key in found)
        return [doc for doc in docs if doc is not None]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """The ``k`` documents closest to ``query``; ``filter=`` a dict of metadata
        conditions (see the module docstring)."""
        return [f.document for f in self._search(self._query_vector(query), k, kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """As :meth:`similarity_search`, each document with its cosine similarity to the
        query in [-1, 1] (higher is closer)."""
        return [(f.document, f.cosine) for f in self._search(self._query_vector(query), k, kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents closest to ``embedding`` (any length but zero; it is
        normalised like stored vectors); ``filter=`` as in :meth:`similarity_search`."""
        return [f.document for f in self._search(embedding, k, kwargs)]

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Documents with :attr:`engramdb.types.Recall.relevance` in [0, 1]; LangChain's
        ``similarity_search_with_relevance_scores`` applies ``score_threshold`` to it."""
        found = self._search(self._query_vector(query), k, kwargs)
        return [(f.document, f.relevance) for f in found]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Cosine (what ``similarity_search_with_score`` gives) to engramdb's relevance."""
        return relevance_of_cosine

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents picked by maximal marginal relevance among the ``fetch_k``
        closest to ``query`` (``lambda_mult`` 1: closest only, 0: most diverse)."""
        return self.max_marginal_relevance_search_by_vector(
            self._query_vector(query), k, fetch_k, lambda_mult, **kwargs)

    def max_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """As :meth:`max_marginal_relevance_search`, from a query vector. The candidates'
        vectors are the stored ones (``Store.vectors``)."""
        k = _check_k(k, "k")
        lambda_mult = _check_lambda(lambda_mult)
        found = self._search(embedding, max(k, _check_k(fetch_k, "fetch_k")), kwargs)
        if not found:
            return []
        vectors = self._store.vectors([f.engram_id for f in found])
        query = np.asarray(embedding, dtype=np.float64)
        picked = maximal_marginal_relevance(query, vectors, lambda_mult=lambda_mult, k=k)
        return [found[i].document for i in picked]

    def _query_vector(self, query: str) -> list[float]:
        """``embed_query(query)``; InvalidInput for a non-str or an embedding that fails."""
        if not isinstance(query, str):
            raise InvalidInput(f"query must be a str, got {type(query).__name__}")
        try:
            return self._embedding.embed_query(query)
        except EngramError:
            raise
        except Exception as exc:  # user code or a remote model: wrap what it throws
            raise InvalidInput(f"the embedding failed: {type(exc).__name__}: {exc}") from exc

    def _search(self, vector: Any, k: int, kwargs: dict[str, Any]) -> list[_Found]:
        """The ``k`` best documents for a query vector, best first, ``filter`` applied."""
        options = _options(kwargs, ("filter",), "search")
        hits = self._store.recall(vector=vector, top_k=_check_k(k, "k"),
                                  where=metadata_where(options.get("filter")), associative=False)
        return list(islice(_found_documents(hits), k))


# -- conversions ----------------------------------------------------------------------------


def default_embedding_name(embedding: Embeddings) -> str:
    """The name an Embeddings gets in a store's fingerprint: ``"langchain:<class name>"``,
    plus ``":<model>"`` from its ``model``, ``model_name`` or ``model_id`` attribute.

    >>> from langchain_core.embeddings import DeterministicFakeEmbedding
    >>> default_embedding_name(DeterministicFakeEmbedding(size=8))
    'langchain:DeterministicFakeEmbedding'
    """
    name = f"langchain:{type(embedding).__name__}"
    for attr in _MODEL_ATTRS:
        model = getattr(embedding, attr, None)
        if isinstance(model, str) and model:
            return f"{name}:{model}"
    return name


def metadata_where(filter: dict[str, Any] | None) -> dict[str, Any] | None:  # noqa: A002
    """A LangChain metadata ``filter`` as engramdb's ``where``: ``{"metadata": filter}``
    (None or ``{}``: no filter). InvalidInput for a non-dict, or a logical operator such as
    ``$and``/``$or`` (every key must hold already; engramdb has no ``$or``)."""
    if filter is None or (isinstance(filter, dict) and not filter):
        return None
    if not isinstance(filter, dict):
        raise InvalidInput(f"filter must be a dict of metadata conditions, got "
                           f"{type(filter).__name__}",
                           hint="e.g. {'topic': 'pets', 'year': {'$gte': 2020}}")
    logical = [key for key in filter if isinstance(key, str) and key.startswith("$")]
    if logical:
        raise InvalidInput(
            f"filter: {logical[0]!r} is not supported at the top level",
            hint="every key of the filter must hold (an implicit $and); for one key with "
                 "several values use {'key': {'$in': [...]}}")
    return {"metadata": dict(filter)}


def relevance_of_cosine(cosine: float) -> float:
    """engramdb's relevance of a cosine similarity: 0 up to 0.2, 1 from 0.8, linear between
    (:func:`engramdb.recall.hybrid.dense_relevance`; docs/recall.md, "Relevance")."""
    return float(dense_relevance(np.float64(cosine)))


def _found_documents(hits: list[Recall]) -> Iterator[_Found]:
    """One document per occurrence of each hit, in rank order (a hit's oldest first)."""
    for hit in hits:
        cosine = float(hit.scores.get("vector", hit.score))
        for occurrence in hit.occurrences:
            yield _Found(_document(hit.text, occurrence), cosine, float(hit.relevance), hit.id)


def _document(text: str, occurrence: Occurrence) -> Document:
    """The LangChain document of one occurrence of a text."""
    return Document(id=occurrence.key, page_content=text,
                    metadata=dict(occurrence.metadata or {}))


def _keyed_document(engram: Engram, key: str) -> Document | None:
    """The document of ``engram``'s occurrence under ``key`` (None if it has none)."""
    for occurrence in engram.occurrences:
        if occurrence.key == key:
            return _document(engram.text, occurrence)
    return None


# -- argument checks ------------------------------------------------------------------------


def _store_path(path: object) -> Path:
    """``path`` as a Path; InvalidInput for anything but a str or os.PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInput(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _store_dim(path: Path, embedding: Embeddings) -> int:
    """The store's dimension: from its manifest if it exists, else from one probe vector."""
    if (path / MANIFEST_NAME).is_file():
        return Manifest.read(path).dim
    try:
        probe = np.asarray(embedding.embed_documents([_PROBE_TEXT]), dtype=np.float64)
    except Exception as exc:  # user code or a remote model: wrap what it throws
        raise InvalidInput(f"the embedding failed: {type(exc).__name__}: {exc}") from exc
    if probe.ndim != 2 or probe.shape[0] != 1 or probe.shape[1] < 1:
        raise InvalidInput(f"embed_documents([text]) returned shape {probe.shape}, expected "
                           "one non-empty vector", hint="check the embedding model")
    return int(probe.shape[1])


def _options(kwargs: dict[str, Any], allowed: tuple[str, ...], what: str) -> dict[str, Any]:
    """``kwargs`` if every name is in ``allowed``; InvalidInput naming the first stranger."""
    unknown = [name for name in kwargs if name not in allowed]
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise InvalidInput(f"{what}() got an unexpected argument {unknown[0]!r} "
                           f"(accepted: {accepted})")
    return kwargs


def _check_k(k: object, what: str) -> int:
    """``k`` if it is a positive int."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInput(f"{what} must be a positive int, got {k!r}")
    return k


def _check_lambda(value: object) -> float:
    """``lambda_mult`` if it is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"lambda_mult must be a number in [0, 1], got {value!r}")
    return float(value)


def _text_list(texts: object) -> list[str]:
    """``texts`` as a list (each text is checked by the store)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise InvalidInput("texts must be a list of str (for one text pass [text])")
    return list(texts)


def _keys_for(ids: Sequence[str | None] | None, n: int) -> list[str]:
    """One key per text: the id given, or a new uuid4 where it is None."""
    if ids is None:
        return [str(uuid.uuid4()) for _ in range(n)]
    listed = _sequence(ids, "ids")
    if len(listed) != n:
        raise InvalidInput(f"ids has {len(listed)} entries for {n} texts")
    return [str(uuid.uuid4()) if key is None else key for key in listed]


def _metadata_list(metadatas: Sequence[dict[str, Any] | None] | None,
                   n: int) -> list[dict[str, Any] | None]:
    """One metadata dict (or None) per text; ``{}`` is stored as no metadata."""
    if metadatas is None:
        return [None] * n
    listed = _sequence(metadatas, "metadatas")
    if len(listed) != n:
        raise InvalidInput(f"metadatas has {len(listed)} entries for {n} texts")
    return [meta or None for meta in listed]


def _id_list(ids: object) -> list[str]:
    """Distinct ids, in first-seen order; InvalidInput for anything but a list of str."""
    listed = _sequence(ids, "ids")
    for key in listed:
        if not isinstance(key, str):
            raise InvalidInput(f"ids must be str, got {type(key).__name__}")
    return list(dict.fromkeys(listed))


def _sequence(values: object, what: str) -> list[Any]:
    """``values`` as a list if it is a list-like of items (a str is not)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidInput(f"{what} must be a list, got {type(values).__name__}")
    return list(values)


__all__ = [
    "EngramVectorStore",
    "MissingExtra",
    "default_embedding_name",
    "metadata_where",
    "relevance_of_cosine",
]
