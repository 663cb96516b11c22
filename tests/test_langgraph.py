"""engramdb.integrations.langgraph.EngramStore: the same LangGraph flow run against LangGraph's
own InMemoryStore and against EngramStore must give the same items, keys and order (and the
same again after reopening); plus timestamps, async, the model-free mode and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("langgraph.store.memory")
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langgraph.store.base import (  # noqa: E402
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore  # noqa: E402

import engramdb  # noqa: E402
from engramdb.encoders import HashingEncoder  # noqa: E402
from engramdb.errors import DimensionMismatch, InvalidInput, ModelMismatch  # noqa: E402
from engramdb.integrations import langgraph as lg  # noqa: E402
from engramdb.integrations.langgraph import EngramStore  # noqa: E402
from tests.conftest import PYTHON, python_env  # noqa: E402

DIMS = 32
ALICE, ALICE_WORK, BOB = ("memories", "alice"), ("memories", "alice", "work"), ("memories", "bob")
QUERIES = ["guinea pig", "green tea in the morning", "pets"]
FILTERS: list[dict[str, Any]] = [
    {"topic": "pets"},
    {"topic": {"$eq": "food"}},
    {"topic": {"$ne": "pets"}},
    {"year": {"$gte": 2022}},
    {"year": {"$gt": 2019, "$lte": 2023}},
    {"year": {"$lt": 2021}},
    {"tags": ["daily"]},
    {"meta": {"mood": "happy"}},
    {"meta": {"level": {"$gt": 2}}},
    {"topic": "pets", "year": {"$gte": 2022}},
]


def index(embed: Any = None) -> dict[str, Any]:
    """LangGraph's index config; the same one for both stores."""
    return {"dims": DIMS, "embed": embed or DeterministicFakeEmbedding(size=DIMS),
            "fields": ["text"]}


def hashed_embed(texts: list[str]) -> list[list[float]]:
    """A small deterministic embedding function (the callable form of ``embed``)."""
    out = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        out.append(np.random.default_rng(seed).normal(size=DIMS).tolist())
    return out


# -- the flow ---------------------------------------------------------------------------------


def put_memories(s: Any) -> None:
    """Two users' memories (and a nested namespace of alice's)."""
    s.put(ALICE, "pet", {"text": "I adopted a guinea pig named Oscar", "topic": "pets",
                         "year": 2021, "meta": {"mood": "happy", "level": 3}})
    s.put(ALICE, "food", {"text": "Ramen is my favourite dinner", "topic": "food",
                          "year": 2023})
    s.put(ALICE_WORK, "job", {"text": "I work night shifts as a nurse", "topic": "work",
                              "year": 2020})
    s.put(BOB, "pet", {"text": "My dog Rex loves the beach", "topic": "pets", "year": 2022,
                       "meta": {"mood": "calm", "level": 1}})
    s.put(BOB, "tea", {"text": "Green tea every morning", "topic": "food", "year": 2019,
                       "tags": ["daily"]})
    # The same text under another key: one engram, two items with equal scores.
    s.put(BOB, "tea2", {"text": "Green tea every morning", "topic": "habit", "year": 2024})
    # Not embedded: listed, never ranked (they fill a page after the ranked items).
    s.put(ALICE, "secret", {"text": "the alarm code is 1234", "topic": "private",
                            "year": 2020}, index=False)
    s.put(ALICE, "no-text", {"topic": "pets", "year": 2018})
    # A put's own fields.
    s.put(BOB, "by-topic", {"text": "not embedded", "topic": "pets", "year": 2022},
          index=["topic"])


def overwrite(s: Any) -> None:
    """A new text under a key, and a new value with the same text."""
    s.put(ALICE, "pet", {"text": "My guinea pig Oscar turned three", "topic": "pets",
                         "year": 2024, "meta": {"mood": "happy", "level": 4}})
    s.put(BOB, "pet", {"text": "My dog Rex loves the beach", "topic": "pets", "year": 2025})
    s.put(ALICE, "secret", {"text": "the alarm code is 9999", "topic": "private",
                            "year": 2020})  # now indexed


def delete(s: Any) -> None:
    """Deletes (one of a key that never was), and a key put again after its delete."""
    s.delete(BOB, "tea")
    s.delete(ALICE, "food")
    s.delete(ALICE, "never-there")
    s.put(ALICE, "food", {"text": "Pho is my favourite dinner now", "topic": "food",
                          "year": 2025})


def mixed_batch(s: Any) -> Any:
    """One batch of reads and writes: the reads see the store before the batch's puts, and
    the last put of a key wins."""
    return s.batch([
        PutOp(ALICE, "city", {"text": "I live in Lyon", "topic": "home", "year": 2022}),
        GetOp(ALICE, "city"),
        SearchOp(ALICE, None, 10, 0, "Lyon"),
        PutOp(ALICE, "city", {"text": "I moved to Porto", "topic": "home", "year": 2025}),
        PutOp(BOB, "tea2", None),
        ListNamespacesOp(None, None, 100, 0),
    ])


def reads(s: Any) -> dict[str, Any]:
    """Everything the flow looks at: gets, listings, searches, filters, pages, namespaces."""
    out: dict[str, Any] = {}
    # (No get in a namespace that holds nothing: InMemoryStore would list it from then on.)
    for ns, key in [(ALICE, "pet"), (BOB, "tea"), (BOB, "nope"), (ALICE_WORK, "pet")]:
        out[f"get {ns} {key}"] = s.get(ns, key)
    for prefix in [("memories",), ALICE, BOB, ("nobody",)]:
        out[f"list {prefix}"] = s.search(prefix, limit=100)
        for q in QUERIES:
            out[f"search {prefix} {q}"] = s.search(prefix, query=q, limit=100)
    for f in FILTERS:
        out[f"filter {f}"] = s.search(("memories",), filter=f, limit=100)
        out[f"filter {f} query"] = s.search(("memories",), query="pets", filter=f, limit=100)
    for limit, offset in [(2, 0), (2, 1), (3, 4), (5, 7), (0, 0)]:
        out[f"page {limit} {offset}"] = s.search(("memories",), limit=limit, offset=offset)
        out[f"page {limit} {offset} query"] = s.search(("memories",), query="tea",
                                                       limit=limit, offset=offset)
    for kwargs in [{}, {"prefix": ("memories",)}, {"suffix": ("bob",)},
                   {"prefix": ("memories", "*")}, {"suffix": ("*", "work")},
                   {"max_depth": 2}, {"max_depth": 1}, {"limit": 1, "offset": 1},
                   {"prefix": ("elsewhere",)}]:
        out[f"namespaces {kwargs}"] = s.list_namespaces(**kwargs)
    return out


def plain(result: Any) -> Any:
    """A result with its scores split off: (data, scores) are compared separately."""
    if isinstance(result, Item):
        return (tuple(result.namespace), result.key, result.value)
    if isinstance(result, list):
        return [plain(r) for r in result]
    return result


def scores(result: Any) -> list[float | None]:
    if isinstance(result, list):
        return [getattr(r, "score", None) for r in result if isinstance(r, Item)]
    return []


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same items, keys and order; scores equal within float32 precision."""
    assert got.keys() == want.keys()
    for name in want:
        assert plain(got[name]) == plain(want[name]), name
        for g, w in zip(scores(got[name]), scores(want[name])):
            assert (g is None) == (w is None), name
            assert g is None or abs(g - w) < 1e-5, (name, g, w)


def run_flow(stores: list[Any], check: Callable[[], None]) -> None:
    put_memories_all = [put_memories, overwrite, delete]
    for step in put_memories_all:
        for s in stores:
            step(s)
        check()
    results = [mixed_batch(s) for s in stores]
    assert plain(results[0]) == plain(results[1])
    assert results[0][1] is None  # the get ran before the batch's puts
    check()


# -- the LangGraph flow test --------------------------------------------------------------------


def test_flow_matches_inmemorystore_and_survives_reopen(tmp_path: Path) -> None:
    """Two users' memories put, searched, overwritten, filtered, deleted and listed through
    EngramStore give the same keys and order as InMemoryStore, and again after reopening."""
    root = tmp_path / "memories"
    ref = InMemoryStore(index=index())
    eng = EngramStore(root, index=index())

    def check() -> None:
        assert_same(reads(eng), reads(ref))

    run_flow([ref, eng], check)
    final = reads(ref)
    stamps = {(i.key, tuple(i.namespace)): (i.created_at, i.updated_at)
              for i in eng.search(("memories",), limit=100)}
    eng.close()

    with EngramStore(root, index=index()) as again:
        assert_same(reads(again), final)
        assert {(i.key, tuple(i.namespace)): (i.created_at, i.updated_at)
                for i in again.search(("memories",), limit=100)} == stamps
        assert engramdb.Pool(root).users() == ["memories.alice", "memories.alice.work",
                                               "memories.bob"]


def test_flow_with_an_embedding_function(tmp_path: Path) -> None:
    """``embed`` as a plain function: the same results as InMemoryStore with that function."""
    ref = InMemoryStore(index=index(hashed_embed))
    with EngramStore(tmp_path / "m", index=index(hashed_embed)) as eng:
        run_flow([ref, eng], lambda: None)
        assert_same(reads(eng), reads(ref))


def test_async_flow_with_an_async_embedding(tmp_path: Path) -> None:
    """abatch with an async embedding function (which has no sync form) agrees with
    InMemoryStore's abatch."""

    async def aembed(texts: list[str]) -> list[list[float]]:
        await asyncio.sleep(0)
        return hashed_embed(list(texts))

    async def flow(s: Any) -> list[Any]:
        await s.aput(ALICE, "pet", {"text": "a guinea pig named Oscar", "n": 1})
        await s.aput(BOB, "pet", {"text": "a dog named Rex", "n": 2})
        await s.aput(BOB, "tea", {"text": "green tea", "n": 3})
        await s.aput(ALICE, "pet", {"text": "Oscar the guinea pig", "n": 4})
        await s.adelete(BOB, "tea")
        return [await s.aget(ALICE, "pet"),
                await s.asearch(("memories",), query="guinea pig"),
                await s.asearch(("memories",), filter={"n": {"$gt": 1}}),
                await s.alist_namespaces(prefix=("memories",))]

    ref = InMemoryStore(index=index(aembed))
    with EngramStore(tmp_path / "m", index=index(aembed)) as eng:
        want, got = asyncio.run(flow(ref)), asyncio.run(flow(eng))
        assert plain(got) == plain(want)
        assert scores(got[1]) == pytest.approx(scores(want[1]), abs=1e-5)
        with pytest.raises(ValueError, match="async"):
            eng.put(ALICE, "sync", {"text": "the sync path needs a sync embedding"})


def test_score_ties_keep_listing_order(tmp_path: Path) -> None:
    """Equal texts under several keys (one engram) tie; like InMemoryStore, ties keep the
    listing order (namespaces sorted, then the order the keys were first put)."""
    ref = InMemoryStore(index=index())
    with EngramStore(tmp_path / "m", index=index()) as eng:
        for s in (ref, eng):
            for key in ["z", "a", "m"]:
                s.put(ALICE, key, {"text": "the very same words"})
            s.put(ALICE, "other", {"text": "something else entirely"})
        want = ref.search(ALICE, query="words")
        got = eng.search(ALICE, query="words")
        assert plain(got) == plain(want)
        assert [i.key for i in got if i.key != "other"] == ["z", "a", "m"]
        assert len(set(i.score for i in got if i.key != "other")) == 1


def test_namespaces_are_listed_sorted(tmp_path: Path) -> None:
    """The documented difference: InMemoryStore lists namespaces in the order they were first
    written, EngramStore sorted (equal when they were first written in sorted order)."""
    ref = InMemoryStore()
    with EngramStore(tmp_path / "m") as eng:
        for s in (ref, eng):
            s.put(BOB, "k", {"text": "bob's"})
            s.put(ALICE, "k", {"text": "alice's"})
        assert [i.namespace for i in ref.search(("memories",))] == [BOB, ALICE]
        assert [i.namespace for i in eng.search(("memories",))] == [ALICE, BOB]
        assert eng.list_namespaces() == ref.list_namespaces() == [ALICE, BOB]


def test_timestamps(tmp_path: Path) -> None:
    """created_at survives an overwrite (updated_at moves); a delete and a new put start
    afresh; both are timezone-aware UTC."""
    with EngramStore(tmp_path / "m", index=index()) as eng:
        eng.put(ALICE, "k", {"text": "first"})
        first = eng.get(ALICE, "k")
        assert first.created_at.utcoffset() is not None
        eng.put(ALICE, "k", {"text": "second"})
        second = eng.get(ALICE, "k")
        assert second.created_at == first.created_at < second.updated_at
        eng.delete(ALICE, "k")
        eng.put(ALICE, "k", {"text": "third"})
        assert eng.get(ALICE, "k").created_at > second.updated_at


def test_same_text_items_share_one_engram(tmp_path: Path) -> None:
    """Items are keyed occurrences: one engram for one text, removed with its last key."""
    with EngramStore(tmp_path / "m", index=index()) as eng:
        eng.put(ALICE, "a", {"text": "shared words"})
        eng.put(ALICE, "b", {"text": "shared words"})
        with eng.pool.session(lg.namespace_user(ALICE)) as store:
            assert store.count == 1
            engram = store.get(key="a")
            assert sorted(o.key for o in engram.occurrences) == ["a", "b"]
            assert engram.pinned
        eng.delete(ALICE, "a")
        assert eng.get(ALICE, "a") is None and eng.get(ALICE, "b").value["text"] == "shared words"
        eng.delete(ALICE, "b")
        with eng.pool.session(lg.namespace_user(ALICE)) as store:
            assert store.count == 0


def test_model_free_mode(tmp_path: Path) -> None:
    """Without ``index``: engramdb's HashingEncoder embeds the value's JSON; listings and
    filters agree with InMemoryStore, and a query runs engramdb's own recall (InMemoryStore
    ignores the query without an index) with scores in [0, 1]."""
    ref = InMemoryStore()
    with EngramStore(tmp_path / "m") as eng:
        for s in (ref, eng):
            put_memories(s)
            overwrite(s)
            delete(s)
        for prefix in [("memories",), ALICE, BOB]:
            assert plain(eng.search(prefix, limit=50)) == plain(ref.search(prefix, limit=50))
        for f in FILTERS:
            assert (plain(eng.search(("memories",), filter=f, limit=50))
                    == plain(ref.search(("memories",), filter=f, limit=50))), f
        hits = eng.search(("memories",), query="guinea pig Oscar")
        assert hits[0].key == "pet" and hits[0].namespace == ALICE
        assert all(0.0 <= h.score <= 1.0 for h in hits)
        assert eng.get(ALICE, "pet").value == ref.get(ALICE, "pet").value
    # Reopened with the same (default) encoder: the stores' fingerprints agree.
    with EngramStore(tmp_path / "m") as eng:
        assert eng.search(("memories",), query="guinea pig Oscar")[0].key == "pet"


def test_reads_create_nothing(tmp_path: Path) -> None:
    """A get, search or delete in a namespace that holds nothing creates no store (nor lists
    the namespace, as InMemoryStore does after a get or a delete there)."""
    with EngramStore(tmp_path / "m", index=index()) as eng:
        assert eng.get(ALICE, "k") is None
        assert eng.search(ALICE, query="x") == [] and eng.search(ALICE) == []
        eng.delete(ALICE, "k")
        assert eng.list_namespaces() == [] and engramdb.Pool(tmp_path / "m").users() == []


def test_foreign_users_of_the_root(tmp_path: Path) -> None:
    """A Pool user that is no namespace is not listed; unkeyed memories are no items."""
    root = tmp_path / "m"
    with engramdb.Pool(root, encoder=HashingEncoder()) as pool:
        with pool.session("memories.carol") as mem:
            mem.ingest("said in a chat, without a key", metadata={"value": {"x": 1}})
        with pool.session("a..b") as mem:
            mem.ingest("an id with an empty label")
    with EngramStore(root) as eng:
        assert eng.list_namespaces() == [("memories", "carol")]
        assert eng.search(("memories",)) == []
        assert eng.search(("memories",), query="chat") == []


def test_namespace_users_round_trip() -> None:
    for ns in [("a",), ALICE, ("x y", "ünï", "*", "-")]:
        assert lg.user_namespace(lg.namespace_user(ns)) == ns
    assert lg.user_namespace("a..b") is None and lg.user_namespace("") is None


# -- bad input ----------------------------------------------------------------------------------


@pytest.fixture
def eng(tmp_path: Path) -> Any:
    with EngramStore(tmp_path / "m", index=index()) as store:
        yield store


@pytest.mark.parametrize("key", ["", "a\x00b", "k" * 1025])
def test_bad_keys(eng: EngramStore, key: str) -> None:
    with pytest.raises(InvalidInput):
        eng.put(ALICE, key, {"text": "x"})
    with pytest.raises(InvalidInput):
        eng.get(ALICE, key)


@pytest.mark.parametrize("value", [["not", "a", "dict"], {"when": object()},
                                   {"x": float("nan")}, {1: "int key"}])
def test_bad_values_write_nothing(eng: EngramStore, value: Any) -> None:
    with pytest.raises(InvalidInput):
        eng.batch([PutOp(ALICE, "good", {"text": "fine"}), PutOp(ALICE, "bad", value)])
    assert eng.get(ALICE, "good") is None and eng.list_namespaces() == []


@pytest.mark.parametrize("namespace", [(), ("a.b",), ("",), ("a", 1), ("langgraph", "x"),
                                       ("a\x00",)])
def test_bad_namespaces(eng: EngramStore, namespace: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidNamespaceError):
        eng.batch([PutOp(namespace, "k", {"text": "x"})])
    assert eng.list_namespaces() == []


@pytest.mark.parametrize("kwargs", [
    {"filter": {"n": {"$regex": "x"}}}, {"filter": {"n": {"$gt": [1]}}}, {"filter": ["n"]},
    {"filter": {"n": {"$gt": 1, "plain": 2}}}, {"limit": -1}, {"offset": -1},
    {"limit": True}, {"query": 3},
])
def test_bad_searches(eng: EngramStore, kwargs: dict[str, Any]) -> None:
    """Refused even when no namespace exists yet (the filter is checked up front)."""
    with pytest.raises(InvalidInput):
        eng.batch([SearchOp(("memories",), kwargs.get("filter"), kwargs.get("limit", 10),
                            kwargs.get("offset", 0), kwargs.get("query"))])


def test_bad_namespace_listing(eng: EngramStore) -> None:
    with pytest.raises(InvalidInput):
        eng.list_namespaces(max_depth=0)
    with pytest.raises(InvalidInput):
        eng.batch([ListNamespacesOp((MatchCondition("middle", ("a",)),))])  # type: ignore[arg-type]
    with pytest.raises(InvalidNamespaceError):
        eng.list_namespaces(prefix=("a.b",))


def test_bad_ops_and_ttl(eng: EngramStore) -> None:
    with pytest.raises(InvalidInput, match="unknown operation"):
        eng.batch(["get everything"])  # type: ignore[list-item]
    with pytest.raises(NotImplementedError):
        eng.put(ALICE, "k", {"text": "x"}, ttl=5)
    with pytest.raises(NotImplementedError):
        eng.batch([PutOp(ALICE, "k", {"text": "x"}, ttl=5)])
    with pytest.raises(InvalidInput):
        eng.put(ALICE, "k", {"text": "x"}, index="text")  # type: ignore[arg-type]


@pytest.mark.parametrize("config", [
    {"dims": 0, "embed": hashed_embed}, {"dims": "8", "embed": hashed_embed}, {"dims": 8},
    {"dims": 8, "embed": hashed_embed, "fields": "text"}, ["dims", 8],
])
def test_bad_index_configs(tmp_path: Path, config: Any) -> None:
    with pytest.raises(InvalidInput):
        EngramStore(tmp_path / "m", index=config)


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not both"):
        EngramStore(tmp_path / "m", index=index(), encoder=HashingEncoder())
    with pytest.raises(InvalidInput):
        EngramStore(tmp_path / "m", embed_name="needs an index")
    with pytest.raises(InvalidInput):
        EngramStore(tmp_path / "m", pin="yes")  # type: ignore[arg-type]


def test_wrong_embedding_dimension_writes_nothing(tmp_path: Path) -> None:
    short = {"dims": DIMS, "embed": lambda texts: [[1.0, 0.0] for _ in texts]}
    with EngramStore(tmp_path / "m", index=short) as eng:
        with pytest.raises(DimensionMismatch):
            eng.put(ALICE, "k", {"text": "x"})
        assert eng.list_namespaces() == []  # refused before any store was made


def test_another_embedding_is_refused_on_reopen(tmp_path: Path) -> None:
    with EngramStore(tmp_path / "m", index=index()) as eng:
        eng.put(ALICE, "k", {"text": "x"})
    with EngramStore(tmp_path / "m", index=index(), embed_name="another-model") as eng:
        with pytest.raises(ModelMismatch):
            eng.get(ALICE, "k")


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "langgraph.store.base", None)
    monkeypatch.delitem(sys.modules, "engramdb.integrations.langgraph")
    with pytest.raises(ImportError, match=r"pip install 'engramdb\[langgraph\]'"):
        importlib.import_module("engramdb.integrations.langgraph")


def test_import_engramdb_does_not_import_langgraph() -> None:
    code = ("import sys, engramdb, engramdb.integrations; "
            "assert not any(m.startswith('langgraph') for m in sys.modules), 'imported'")
    subprocess.run([PYTHON, "-c", code], check=True, env=python_env(), timeout=60)
