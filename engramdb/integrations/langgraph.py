"""LangGraph long-term memory on engramdb: :class:`EngramStore`, a LangGraph ``BaseStore``.

One engramdb store per LangGraph namespace, under one root directory (an :class:`engramdb.Pool`):
the namespace ``("memories", "alice")`` is the Pool user ``"memories.alice"`` (LangGraph
forbids ``.`` in a label, so the join is reversible; :func:`namespace_user`,
:func:`user_namespace`), so ``engramdb users ROOT`` lists the namespaces and each one is an
ordinary store that ``engramdb inspect`` can read. ``list_namespaces`` reads the stores'
manifests only (:meth:`engramdb.Pool.users`): no store is opened.

An item is one keyed occurrence (``Store.upsert``): its key is the engramdb key, and the
occurrence's metadata holds ``{"value": <the item's value>, "created_at": ..., "updated_at":
..., "indexed": <bool>}``. The value is nested, not spread at the top level, so no field of a
value can collide with the bookkeeping; engramdb's own filters reach it as ``"value.<field>"``.
``created_at`` is kept across overwrites (as PostgresStore does; InMemoryStore resets it),
``updated_at`` is the time of the last put. Both are wall-clock UTC, strictly increasing within
a process (the occurrence's ``tick`` is engramdb's logical clock, not a time).

The engram's text is the item's text to embed: the ``fields`` of the value (the ``index``
config's, or a put's own ``index=[...]``), joined by newlines; by default the whole value as
JSON, as InMemoryStore does. Equal texts under several keys are one engram (content
addressing) with one occurrence per key.

Search:

- with ``index`` (LangGraph's ``{"dims", "embed", "fields"}``, ``embed`` an ``Embeddings``, a
  sync or async callable, or a ``"provider:model"`` string): vectors come from that embedding,
  the query from ``embed_query``, and ``score`` is the cosine similarity, as in InMemoryStore.
  A value with several fields gets one vector, of its fields' texts joined (InMemoryStore keeps
  one per field and scores the best). A put with ``index=False`` (or with none of the fields)
  is listed but never ranked; like InMemoryStore, such items fill the page after the ranked
  ones. Its text is embedded all the same: engramdb keeps one vector per distinct content,
  shared by every key that holds it, so it must be right if another key holds that text.
- without ``index``: engramdb's encoder embeds the text (``encoder``; by default the model-free
  :class:`~engramdb.encoders.HashingEncoder`, so no model is needed). Unlike InMemoryStore,
  which ignores a query when it has no index, a query then runs engramdb's own hybrid recall
  (vectors and BM25) and ``score`` is its absolute ``relevance`` in [0, 1].
- without a query: the items in order, namespaces sorted, then each namespace's keys in the
  order they were first put (an overwrite keeps the key's place, a delete and a new put move
  it to the end): InMemoryStore's order whenever the namespaces were first written in sorted
  order (InMemoryStore keeps them in the order they were first written). Each call reads the
  matching items of each namespace whole, then pages.
- ``filter``: ``{field: value}`` (equality; a dict matches a dict holding those fields) or
  ``{field: {"$op": operand}}`` with LangGraph's ``$eq $ne $gt $gte $lt $lte`` and engramdb's
  ``$in $nin $exists``; it runs inside engramdb's search (docs/recall.md, "Filters").

Items are pinned by default (``pin=True``): engramdb's lifespans never forget them, only
a delete does. ``batch`` runs the reads of a batch (gets, searches, listings) before its
writes, and the last put of a key wins, as in InMemoryStore; its writes commit namespace by
namespace (one upsert each), not as one transaction. Every argument (and every embedding's
size) is checked before anything is written; engramdb's errors (``InvalidInput``, a
``ValueError``) carry a hint, and a bad namespace raises LangGraph's ``InvalidNamespaceError``.
TTLs are not supported.

Needs the ``langgraph`` extra (``pip install 'engramdb[langgraph]'``); ``import engramdb``
never imports this module.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from engramdb.content import check_key, encode_metadata, normalize_text
from engramdb.encoders import Encoder, FunctionEncoder, HashingEncoder
from engramdb.errors import DimensionMismatch, InvalidInput
from engramdb.pool import SUFFIX, Pool
from engramdb.recall.filters import occurrence_filter
from engramdb.settings import Settings
from engramdb.store import Store
from engramdb.types import Occurrence, Recall

INSTALL_HINT = "pip install 'engramdb[langgraph]'"

try:
    from langchain_core.embeddings import Embeddings
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        InvalidNamespaceError,
        Item,
        ListNamespacesOp,
        MatchCondition,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
        ensure_embeddings,
        get_text_at_path,
        tokenize_path,
    )
except ImportError as exc:  # the extra is missing (or too old)
    raise ImportError(
        f"engramdb.integrations.langgraph needs the langgraph package ({exc}); "
        f"install it with: {INSTALL_HINT}"
    ) from exc

__all__ = ["INSTALL_HINT", "EngramStore", "namespace_user", "user_namespace"]

Namespace = tuple[str, ...]

# The occurrence metadata of an item, and where engramdb's filters find its parts.
_VALUE, _CREATED, _UPDATED, _INDEXED = "value", "created_at", "updated_at", "indexed"
_VALUE_PTR, _INDEXED_PTR = "/value", "/indexed"
_SEP = "."  # LangGraph refuses "." in a namespace label: joining on it is reversible
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- namespaces <-> Pool users ----------------------------------------------------------------


def namespace_user(namespace: Sequence[str]) -> str:
    """The Pool user id that holds ``namespace``: its labels joined by ``"."``.

    Raises LangGraph's ``InvalidNamespaceError`` for an empty namespace or a label that is
    not a non-empty str without ``"."`` and NUL (LangGraph's own rules).

    >>> namespace_user(("memories", "alice"))
    'memories.alice'
    """
    namespace = tuple(namespace)
    if not namespace:
        raise InvalidNamespaceError("Namespace cannot be empty.")
    _check_labels(namespace)
    return _SEP.join(namespace)


def user_namespace(user_id: str) -> Namespace | None:
    """The namespace a Pool user id stands for, or None when it is not one (an empty label,
    a NUL: a user made by another tool sharing the root).

    >>> user_namespace("memories.alice")
    ('memories', 'alice')
    """
    labels = tuple(user_id.split(_SEP))
    if any(not label or "\x00" in label for label in labels):
        return None
    return labels


def _check_labels(labels: Iterable[object], *, wildcard: bool = False) -> None:
    """LangGraph's label rules: str, not empty, no ``.``, no NUL (``*`` in a match path)."""
    labels = tuple(labels)
    for label in labels:
        if not isinstance(label, str):
            raise InvalidNamespaceError(
                f"namespace labels must be str, got {type(label).__name__} in {labels!r}")
        bad = not label or "." in label or "\x00" in label
        if bad and not (wildcard and label == "*"):
            raise InvalidNamespaceError(
                f"invalid namespace label {label!r} in {labels!r}: labels are non-empty "
                "and hold no '.' and no NUL")


# -- values, texts, times ----------------------------------------------------------------------


class _Clock:
    """Wall-clock UTC times, at least 1 µs apart within the process, so that the puts of one
    batch keep their order when sorted by time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = _EPOCH

    def now(self) -> datetime:
        """The current time, later than every time this clock gave before."""
        with self._lock:
            self._last = max(datetime.now(UTC), self._last + timedelta(microseconds=1))
            return self._last


_CLOCK = _Clock()

Fields = list[tuple[str, Any]]
"""Paths to embed, each with its tokens (or ``"$"``: the whole value as JSON)."""


def _tokenized(paths: Sequence[str]) -> Fields:
    """InMemoryStore's tokenized ``fields``."""
    return [(p, p) if p == "$" else (p, tokenize_path(p)) for p in paths]


def _text_of(value: dict[str, Any], paths: Fields) -> str | None:
    """The text of ``value`` at ``paths``, joined by newlines; None when there is none."""
    texts = [t for _, tokens in paths for t in get_text_at_path(value, tokens)]
    text = "\n".join(texts)
    return text if text.strip() else None


def _json_text(value: dict[str, Any]) -> str:
    """The whole value as JSON, as LangGraph embeds the field ``"$"``."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _parse_time(raw: object) -> datetime:
    """A stored ISO time, or the epoch for a missing or damaged one."""
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            pass
    return _EPOCH


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def _is_item(occ: Occurrence) -> bool:
    """Whether an occurrence is an item: keyed, with a value (other tools sharing the root
    store occurrences without)."""
    meta = occ.metadata
    return occ.key is not None and isinstance(meta, dict) and isinstance(meta.get(_VALUE), dict)


def _item(cls: type[Item], namespace: Namespace, occ: Occurrence, **extra: Any) -> Any:
    """The ``Item`` (or ``SearchItem``) of one keyed occurrence."""
    meta = occ.metadata or {}
    return cls(namespace=namespace, key=occ.key, value=meta[_VALUE],
               created_at=_parse_time(meta.get(_CREATED)),
               updated_at=_parse_time(meta.get(_UPDATED)), **extra)


def _items(namespace: Namespace, occurrences: Iterable[Occurrence],
           score: float | None = None) -> list[SearchItem]:
    return [_item(SearchItem, namespace, o, score=score) for o in occurrences if _is_item(o)]


def _listing_order(item: Item) -> tuple[Namespace, datetime, str]:
    """Namespaces sorted, then each key where it was first put."""
    return item.namespace, item.created_at, item.key


# -- filters -------------------------------------------------------------------------------------


def _pointer_token(key: str) -> str:
    """``key`` as one reference token of a JSON pointer (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _flatten(pointer: str, cond: Any, out: dict[str, Any]) -> None:
    """One filter condition at ``pointer``: an operator dict or a plain value as it is, a
    plain dict as its fields (LangGraph matches a dict by the fields the filter names)."""
    if isinstance(cond, Mapping) and not any(str(k).startswith("$") for k in cond):
        if not cond:  # any dict matches {}; the closest engramdb says is "present"
            out[pointer] = {"$exists": True}
        for key, sub in cond.items():
            if not isinstance(key, str):
                raise InvalidInput(f"filter keys must be str, got {key!r}")
            _flatten(f"{pointer}/{_pointer_token(key)}", sub, out)
    else:
        out[pointer] = dict(cond) if isinstance(cond, Mapping) else cond


def _where(filter_: Mapping[str, Any] | None, *, indexed: bool | None = None) -> dict[str, Any]:
    """The engramdb ``where`` of a LangGraph filter over items (of one ``indexed`` state)."""
    meta: dict[str, Any] = {_VALUE_PTR: {"$exists": True}}
    if indexed is not None:
        meta[_INDEXED_PTR] = indexed
    if filter_ is not None:
        if not isinstance(filter_, Mapping):
            raise InvalidInput(f"filter must be a dict, got {type(filter_).__name__}")
        for key, cond in filter_.items():
            if not isinstance(key, str):
                raise InvalidInput(f"filter keys must be str, got {key!r}")
            _flatten(f"{_VALUE_PTR}/{_pointer_token(key)}", cond, meta)
    return {"metadata": meta}


# -- the index configuration -----------------------------------------------------------------


@dataclass(frozen=True)
class _Index:
    """What ``index`` says: the LangGraph embeddings (None: engramdb's encoder embeds) and the
    fields to embed."""

    embeddings: Embeddings | None
    fields: Fields
    config: dict[str, Any] | None


def _check_count(value: object, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def _parse_index(index: Mapping[str, Any] | None) -> _Index:
    """Check LangGraph's ``{"dims", "embed", "fields"}`` and build its embeddings."""
    if not index:
        return _Index(None, _tokenized(["$"]), None)
    if not isinstance(index, Mapping):
        raise InvalidInput(f"index must be a dict such as {{'dims': 384, 'embed': fn}}, "
                           f"got {type(index).__name__}")
    _check_count(index.get("dims"), "index['dims']", 1)
    fields = index.get("fields") or ["$"]
    if isinstance(fields, str) or not all(isinstance(f, str) and f for f in fields):
        raise InvalidInput(f"index['fields'] must be a list of paths (str), got {fields!r}")
    if index.get("embed") is None:
        raise InvalidInput("index needs 'embed': an Embeddings, a function list[str] -> "
                           "list[list[float]], or a 'provider:model' string")
    try:
        embeddings = ensure_embeddings(index["embed"])
    except (ValueError, ImportError) as exc:
        raise InvalidInput(f"index['embed'] cannot be used: {exc}") from exc
    return _Index(embeddings, _tokenized(list(fields)), dict(index))


def _embed_name(embed: Any) -> str:
    """A name for the embedding in the stores' fingerprint: the provider string, or the
    class (with its model and size, when it has them) or function it is."""
    if isinstance(embed, str):
        return f"langgraph:{embed}"
    target = embed if inspect.isfunction(embed) or inspect.ismethod(embed) else type(embed)
    parts = [f"{getattr(target, '__module__', '?')}."
             f"{getattr(target, '__qualname__', type(target).__name__)}"]
    for attr in ("model", "model_name", "size"):
        found = getattr(embed, attr, None)
        if isinstance(found, (str, int)) and not isinstance(found, bool):
            parts.append(f"{attr}={found}")
    return "langgraph:" + ";".join(parts)


def _pool_encoder(index: _Index, encoder: Encoder | None, embed_name: str | None) -> Encoder:
    """The encoder every namespace's store is created (and checked) with."""
    if index.embeddings is None:
        if embed_name is not None:
            raise InvalidInput("embed_name names the index's embedding: pass it with index=")
        return encoder if encoder is not None else HashingEncoder()
    if encoder is not None:
        raise InvalidInput("pass index= (LangGraph embeddings) or encoder= (an engramdb "
                           "Encoder), not both")
    assert index.config is not None
    name = embed_name if embed_name is not None else _embed_name(index.config["embed"])
    # EngramStore always hands the stores its vectors; the function stands for the stores'
    # identity (name and dim) and serves engramdb's own re-encoding only.
    return FunctionEncoder(index.embeddings.embed_documents, dim=index.config["dims"],
                           name=name)


# -- a batch, checked and planned ----------------------------------------------------------------


@dataclass
class _Put:
    """One put (``value`` None: a delete), its text and how it is embedded."""

    namespace: Namespace
    key: str
    value: dict[str, Any] | None
    text: str = ""
    indexed: bool = False
    vector: list[float] | None = None


@dataclass
class _Plan:
    """A batch after its checks: the ops, the last put of each key, each search's ``where``,
    and the texts and queries to embed."""

    ops: list[Op]
    puts: dict[tuple[Namespace, str], _Put] = field(default_factory=dict)
    wheres: dict[int, dict[str, Any]] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)

    def texts(self) -> list[str]:
        """The distinct texts the puts need embedded, in order."""
        return list(dict.fromkeys(p.text for p in self.puts.values() if p.value is not None))

    def attach(self, texts: list[str], vectors: Sequence[Sequence[float]], dims: int) -> None:
        """Give each put the vector of its text; DimensionMismatch (nothing written) unless
        the embedding gave one vector of ``dims`` numbers per text."""
        if len(vectors) != len(texts):
            raise InvalidInput(f"the embedding returned {len(vectors)} vectors for "
                               f"{len(texts)} texts")
        for vector in vectors:
            if len(vector) != dims:
                raise DimensionMismatch(f"the embedding returned a vector of {len(vector)} "
                                        f"numbers; index['dims'] is {dims}")
        by_text = dict(zip(texts, vectors))
        for put in self.puts.values():
            if put.value is not None:
                put.vector = list(by_text[put.text])


# -- the store -------------------------------------------------------------------------------------


class EngramStore(BaseStore):
    """A LangGraph ``BaseStore`` that keeps each namespace in its own engramdb store under
    ``root``; use it wherever LangGraph takes a store (``graph.compile(store=...)``).

    ``index``: LangGraph's index config as InMemoryStore takes it, ``{"dims": int, "embed":
    Embeddings | callable | "provider:model", "fields": [...]}``; ``embed_name`` names that
    embedding in the stores' fingerprint (default: derived from it; give a new name whenever
    its vectors change: a store refuses another encoder with ``ModelMismatch``). Without
    ``index``, ``encoder`` (an engramdb Encoder; default ``HashingEncoder()``) embeds the
    items' text. ``pin``: items never expire (default); False lets engramdb's lifespans forget
    the unused ones. ``settings``, ``max_open``, ``idle_seconds``, ``lock_timeout`` and
    ``multiprocess`` go to the :class:`~engramdb.Pool` (``multiprocess=True`` when several
    worker processes serve one root). Close it (or use ``with``) to close
    every store.

    Raises InvalidInput for a bad argument; see the module docstring for the mapping.

    >>> from langchain_core.embeddings import DeterministicFakeEmbedding  # doctest: +SKIP
    >>> with EngramStore("memories", index={"dims": 64,  # doctest: +SKIP
    ...         "embed": DeterministicFakeEmbedding(size=64), "fields": ["text"]}) as store:
    ...     store.put(("memories", "alice"), "pet", {"text": "a guinea pig named Oscar"})
    ...     store.search(("memories", "alice"), query="pets")
    """

    __slots__ = ("_index", "_names", "_names_lock", "_pin", "embeddings", "index_config", "pool")

    def __init__(
        self,
        root: str | os.PathLike[str],
        index: Mapping[str, Any] | None = None,
        *,
        encoder: Encoder | None = None,
        embed_name: str | None = None,
        pin: bool = True,
        settings: Settings | dict[str, Any] | None = None,
        max_open: int = 64,
        idle_seconds: float = 300.0,
        lock_timeout: float | None = None,
        multiprocess: bool = False,
    ) -> None:
        if not isinstance(pin, bool):
            raise InvalidInput(f"pin must be True or False, got {pin!r}")
        if embed_name is not None and (not isinstance(embed_name, str) or not embed_name):
            raise InvalidInput(f"embed_name must be a non-empty str, got {embed_name!r}")
        self._index = _parse_index(index)
        self.index_config: dict[str, Any] | None = self._index.config
        """The ``index`` config given, or None."""
        self.embeddings: Embeddings | None = self._index.embeddings
        """The LangGraph embeddings of ``index``, or None."""
        self._pin = pin
        self.pool = Pool(root, encoder=_pool_encoder(self._index, encoder, embed_name),
                         settings=settings, max_open=max_open, idle_seconds=idle_seconds,
                         lock_timeout=lock_timeout, multiprocess=multiprocess)
        """The :class:`~engramdb.Pool` of per-namespace stores (user ids: namespace_user)."""
        self._names_lock = threading.Lock()
        self._names: tuple[frozenset[str], list[Namespace]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close every namespace's store (idempotent); later calls raise StoreClosed."""
        self.pool.close()

    def __enter__(self) -> EngramStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "vector index" if self.embeddings is not None else "engramdb encoder"
        return f"<engramdb EngramStore {str(self.pool.root)!r} ({kind})>"

    # -- BaseStore ---------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` (GetOp, SearchOp, ListNamespacesOp, PutOp) and return one result per
        op, in order: the reads see the store as it was before the batch's puts, and the last
        put of a key wins (as InMemoryStore). Raises before anything runs if any op is bad."""
        plan = self._plan(ops)
        embeddings = self.embeddings
        vectors: dict[str, list[float]] = {}
        if embeddings is not None:
            texts = plan.texts()
            if texts:
                plan.attach(texts, embeddings.embed_documents(texts), self._dims())
            vectors = {q: embeddings.embed_query(q) for q in plan.queries}
        return self._execute(plan, vectors)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """:meth:`batch` for asyncio: the embedding is awaited (``aembed_documents``,
        ``aembed_query``) and the stores' work runs in a worker thread, so the event loop
        never waits for a disk."""
        plan = self._plan(ops)
        embeddings = self.embeddings
        vectors: dict[str, list[float]] = {}
        if embeddings is not None:
            texts = plan.texts()
            if texts:
                plan.attach(texts, await embeddings.aembed_documents(texts), self._dims())
            found = await asyncio.gather(*(embeddings.aembed_query(q) for q in plan.queries))
            vectors = dict(zip(plan.queries, found))
        return await asyncio.to_thread(self._execute, plan, vectors)

    def _dims(self) -> int:
        assert self.index_config is not None
        return int(self.index_config["dims"])

    # -- checking a batch ---------------------------------------------------------------------

    def _plan(self, ops: Iterable[Op]) -> _Plan:
        """Check every op (nothing has run yet) and collect what the batch must embed."""
        plan = _Plan(list(ops))
        for i, op in enumerate(plan.ops):
            if isinstance(op, GetOp):
                _check_labels(op.namespace)
                check_key(op.key)
            elif isinstance(op, SearchOp):
                plan.wheres[i] = self._check_search(op)
                if op.query and self.embeddings is not None and op.query not in plan.queries:
                    plan.queries.append(op.query)
            elif isinstance(op, ListNamespacesOp):
                _check_list_op(op)
            elif isinstance(op, PutOp):
                put = self._check_put(op)
                plan.puts[(put.namespace, put.key)] = put
            else:
                raise InvalidInput(f"unknown operation {type(op).__name__}; use GetOp, "
                                   "SearchOp, ListNamespacesOp or PutOp")
        return plan

    def _check_search(self, op: SearchOp) -> dict[str, Any]:
        """Check a search; return its filter as an engramdb ``where`` (without the index
        state), checked by engramdb's own filter parser."""
        _check_labels(op.namespace_prefix)
        _check_count(op.limit, "limit")
        _check_count(op.offset, "offset")
        if op.query is not None and not isinstance(op.query, str):
            raise InvalidInput(f"query must be a str, got {type(op.query).__name__}")
        where = _where(op.filter)
        occurrence_filter(where)  # pure: raises InvalidInput for a bad operator or operand
        return where

    def _check_put(self, op: PutOp) -> _Put:
        """Check a put; return it with its text and index state."""
        namespace = tuple(op.namespace)
        namespace_user(namespace)  # InvalidNamespaceError for a bad one
        if namespace[0] == "langgraph":
            raise InvalidNamespaceError(f'the root label cannot be "langgraph", got {namespace}')
        key = check_key(op.key)
        if op.ttl is not None:
            raise NotImplementedError("EngramStore does not support TTLs; pass ttl=None")
        if op.value is None:
            return _Put(namespace, key, None)
        if not isinstance(op.value, Mapping):
            raise InvalidInput(f"value must be a dict, got {type(op.value).__name__}")
        value = dict(op.value)
        if not all(isinstance(k, str) for k in value):
            raise InvalidInput(f"the keys of a value must be str, got {list(value)!r}")
        encode_metadata({_VALUE: value})  # JSON, finite numbers, bounded depth
        if op.index is not None and op.index is not False and (
                isinstance(op.index, str) or not all(isinstance(p, str) for p in op.index)):
            raise InvalidInput(f"index must be False, None or a list of paths, got {op.index!r}")
        text = None
        if op.index is not False:
            paths = self._index.fields if op.index is None else _tokenized(list(op.index))
            text = _text_of(value, paths)
        put = _Put(namespace, key, value, text or _json_text(value), indexed=text is not None)
        normalize_text(put.text, what=f"the text of {key!r}")  # e.g. over 1 MiB
        return put

    # -- running a batch -----------------------------------------------------------------------

    def _execute(self, plan: _Plan, vectors: dict[str, list[float]]) -> list[Result]:
        """The reads in op order, then the writes."""
        results: list[Result] = []
        for i, op in enumerate(plan.ops):
            if isinstance(op, GetOp):
                results.append(self._get(tuple(op.namespace), op.key))
            elif isinstance(op, SearchOp):
                results.append(self._search(op, plan.wheres[i], vectors.get(op.query or "")))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            else:
                results.append(None)
        groups: dict[Namespace, list[_Put]] = {}
        for put in plan.puts.values():
            groups.setdefault(put.namespace, []).append(put)
        for namespace, puts in groups.items():
            self._write(namespace, puts)
        return results

    @contextmanager
    def _existing(self, namespace: Namespace) -> Iterator[Store | None]:
        """The namespace's store, or None when it has none (a read never creates one)."""
        if not namespace:
            yield None
            return
        user = namespace_user(namespace)
        if not self.pool.path_for(user).is_dir():
            yield None
            return
        with self.pool.session(user) as store:
            yield store

    def _get(self, namespace: Namespace, key: str) -> Item | None:
        with self._existing(namespace) as store:
            engram = None if store is None else store.get_keys([key]).get(key)
        if engram is None:
            return None
        for occ in engram.occurrences:
            if occ.key == key and _is_item(occ):
                return _item(Item, namespace, occ)
        return None

    def _write(self, namespace: Namespace, puts: list[_Put]) -> None:
        """Apply one namespace's puts: deletes, then one ``upsert_many`` of the rest."""
        kept = [p for p in puts if p.value is not None]
        session = self._existing(namespace) if not kept else self.pool.session(
            namespace_user(namespace))
        with session as store:
            if store is None:
                return  # deletes in a namespace that holds nothing
            found = store.get_keys([p.key for p in puts])
            gone = [p.key for p in puts if p.value is None and p.key in found]
            if gone:
                store.forget(keys=gone)
            if not kept:
                return
            metadatas = []
            for put in kept:
                now = _CLOCK.now()
                created = _created_at(found[put.key], put.key) if put.key in found else None
                metadatas.append({_VALUE: put.value, _CREATED: _iso(created or now),
                                  _UPDATED: _iso(now), _INDEXED: put.indexed})
            store.upsert_many(
                [p.key for p in kept], [p.text for p in kept], metadatas=metadatas,
                vectors=None if self.embeddings is None else [p.vector for p in kept],
                pins=[self._pin] * len(kept))

    # -- search ----------------------------------------------------------------------------------

    def _search(self, op: SearchOp, where: dict[str, Any],
                vector: list[float] | None) -> list[SearchItem]:
        namespaces = self._under(tuple(op.namespace_prefix))
        if not op.query:
            return self._listed(namespaces, where)[op.offset:op.offset + op.limit]
        stop = op.offset + op.limit
        ranked: list[SearchItem] = []
        if stop:
            indexed = _with_index_state(where, True)
            for namespace in namespaces:
                ranked.extend(self._ranked(namespace, op.query, vector, indexed, stop))
        ranked.sort(key=lambda it: (-(it.score or 0.0), *_listing_order(it)))
        kept = ranked[op.offset:stop]
        if len(kept) < op.limit:  # as InMemoryStore: unranked items fill the page
            rest = self._listed(namespaces, _with_index_state(where, False))
            kept.extend(rest[:op.limit - len(kept)])
        return kept

    def _listed(self, namespaces: list[Namespace], where: dict[str, Any]) -> list[SearchItem]:
        """Every item of ``namespaces`` matching ``where``, in listing order."""
        items: list[SearchItem] = []
        for namespace in namespaces:
            with self._existing(namespace) as store:
                if store is not None:
                    for engram in store.engrams(where=where):
                        items.extend(_items(namespace, engram.occurrences))
        return sorted(items, key=_listing_order)

    def _ranked(self, namespace: Namespace, query: str, vector: list[float] | None,
                where: dict[str, Any], top_k: int) -> list[SearchItem]:
        """The items of the ``top_k`` best engrams of one namespace, scored."""
        with self._existing(namespace) as store:
            if store is None:
                return []
            if vector is None:  # engramdb's own encoder: hybrid recall, absolute relevance
                hits = store.recall(query, top_k=top_k, where=where, associative=False,
                                    context=False)
                scores = [h.relevance for h in hits]
            else:
                hits = store.recall(vector=vector, top_k=top_k, where=where,
                                    associative=False, context=False)
                scores = _cosines(store, hits, vector)
            return [item for hit, score in zip(hits, scores)
                    for item in _items(namespace, hit.occurrences, float(score))]

    # -- namespaces --------------------------------------------------------------------------------

    def _namespaces(self) -> list[Namespace]:
        """Every namespace with a store under the root, sorted: from the stores' manifests
        (:meth:`Pool.user_listing`), read again only when the root's directories change."""
        names = self._dir_names()
        with self._names_lock:
            if names is not None and self._names is not None and self._names[0] == names:
                return list(self._names[1])
        listing = self.pool.user_listing()
        found = sorted(ns for ns in map(user_namespace, listing.users) if ns is not None)
        if names is not None and not listing.unknown and not listing.damaged:
            with self._names_lock:  # every directory accounted for: safe to reuse
                self._names = (names, found)
        return list(found)

    def _dir_names(self) -> frozenset[str] | None:
        try:
            with os.scandir(self.pool.root) as entries:
                return frozenset(e.name for e in entries if e.name.endswith(SUFFIX))
        except OSError:
            return None

    def _under(self, prefix: Namespace) -> list[Namespace]:
        return [ns for ns in self._namespaces() if ns[:len(prefix)] == prefix]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[Namespace]:
        """InMemoryStore's listing: match conditions, ``max_depth``, sorted, paged."""
        found = [ns for ns in self._namespaces()
                 if all(_matches(c, ns) for c in op.match_conditions or ())]
        if op.max_depth is not None:
            found = sorted({ns[:op.max_depth] for ns in found})
        return found[op.offset:op.offset + op.limit]


# -- helpers of the store ------------------------------------------------------------------------


def _created_at(engram: Any, key: str) -> datetime | None:
    """When the item under ``key`` was first put (None when unknown)."""
    for occ in engram.occurrences:
        if occ.key == key and _is_item(occ):
            moment = _parse_time((occ.metadata or {}).get(_CREATED))
            return None if moment == _EPOCH else moment
    return None


def _with_index_state(where: dict[str, Any], indexed: bool) -> dict[str, Any]:
    return {"metadata": {**where["metadata"], _INDEXED_PTR: indexed}}


def _cosines(store: Store, hits: list[Recall], vector: Sequence[float]) -> list[float]:
    """The cosine similarity of each hit with the query vector (InMemoryStore's score)."""
    if not hits:
        return []
    query = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(query))
    stored = store.vectors([h.id for h in hits]).astype(np.float64)  # unit rows
    if not norm or not math.isfinite(norm):
        return [0.0] * len(hits)
    return (stored @ (query / norm)).tolist()


def _check_list_op(op: ListNamespacesOp) -> None:
    _check_count(op.limit, "limit")
    _check_count(op.offset, "offset")
    if op.max_depth is not None:
        _check_count(op.max_depth, "max_depth", 1)
    for cond in op.match_conditions or ():
        if cond.match_type not in ("prefix", "suffix"):
            raise InvalidInput(f"match_type must be 'prefix' or 'suffix', got {cond.match_type!r}")
        _check_labels(cond.path, wildcard=True)


def _matches(cond: MatchCondition, namespace: Namespace) -> bool:
    """Whether ``namespace`` starts (``prefix``) or ends (``suffix``) with ``cond.path``;
    ``"*"`` matches any one label."""
    path = tuple(cond.path)
    if len(namespace) < len(path):
        return False
    part = namespace[:len(path)] if cond.match_type == "prefix" else namespace[len(namespace)
                                                                               - len(path):]
    return all(p in ("*", label) for p, label in zip(path, part))
