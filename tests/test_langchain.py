"""engramdb.integrations.langchain: EngramVectorStore under LangChain's standard VectorStore
suite (sync and async, none skipped or overridden), plus our own tests: reopening a store,
documents sharing a text, metadata filter operators, scores, MMR, pinning, bad input, and
the extra staying optional."""

from __future__ import annotations

import asyncio
import datetime
import importlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from engramdb import Store
from engramdb.encoders import HashingEncoder
from engramdb.errors import DimensionMismatch, InvalidInput, ModelMismatch
from engramdb.integrations.langchain import (
    EngramVectorStore,
    default_embedding_name,
    metadata_where,
    relevance_of_cosine,
)
from tests.conftest import PYTHON, python_env


# The standard suite mixes sync tests with coroutines: the asyncio mark runs the coroutines
# under pytest-asyncio (strict mode), and its warning about the sync ones carrying the mark is
# noise.
@pytest.mark.asyncio
@pytest.mark.filterwarnings(
    "ignore:The test <Function .*> is marked with '@pytest.mark.asyncio' but it is not an "
    "async function")
class TestStandardSuite(VectorStoreIntegrationTests):
    """LangChain's VectorStoreIntegrationTests, unchanged, on a fresh store per test."""

    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[EngramVectorStore]:
        """An empty EngramVectorStore in tmp_path, with the suite's embeddings."""
        store = EngramVectorStore(tmp_path / "lc.engram", self.get_embeddings())
        try:
            yield store
        finally:
            store.close()


# -- our own tests ----------------------------------------------------------------------------


class WordEmbeddings(Embeddings):
    """Model-free embeddings in which texts sharing words are close (engramdb's hashing
    encoder); counts its calls."""

    def __init__(self, dim: int = 64) -> None:
        self.encoder = HashingEncoder(dim=dim)
        self.calls = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text."""
        self.calls += 1
        return self.encoder.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query."""
        return self.embed_documents([text])[0]


class BrokenEmbeddings(WordEmbeddings):
    """Embeddings whose model fails once it has told its dimension."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Fails after the first call (the dimension probe)."""
        if self.calls:
            raise RuntimeError("model server unreachable")
        return super().embed_documents(texts)


PAPERS = [
    ("old paper on retrieval", {"year": 2019, "tags": ["ir"], "user": {"name": "ann"}}),
    ("new paper on retrieval", {"year": 2023, "tags": ["ir", "ml"], "draft": True}),
    ("newer paper on memory", {"year": 2024.5, "user": {"name": "bob"}}),
    ("a note without a year", {"kind": "note"}),
]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[EngramVectorStore]:
    with EngramVectorStore(tmp_path / "db.engram", WordEmbeddings()) as store:
        yield store


@pytest.fixture
def papers(db: EngramVectorStore) -> EngramVectorStore:
    db.add_texts([text for text, _ in PAPERS], [meta for _, meta in PAPERS],
                 ids=[f"p{i}" for i in range(len(PAPERS))])
    return db


def _ids(db: EngramVectorStore, **filter_: object) -> set[str | None]:
    return {doc.id for doc in db.similarity_search("paper", k=100, filter=filter_)}


def test_reopen_finds_the_documents_again(tmp_path: Path) -> None:
    path = tmp_path / "kept.engram"
    first = WordEmbeddings()
    with EngramVectorStore(path, first) as db:
        ids = db.add_texts(["Oscar is a guinea pig.", "Paris is in France."],
                           [{"topic": "pets"}, {"topic": "geo"}])
    again = WordEmbeddings()
    with EngramVectorStore(path, again) as db:
        assert again.calls == 0  # the dimension came from the manifest, not a probe
        assert db.get_by_ids(ids) == [
            Document(id=ids[0], page_content="Oscar is a guinea pig.", metadata={"topic": "pets"}),
            Document(id=ids[1], page_content="Paris is in France.", metadata={"topic": "geo"}),
        ]
        assert db.similarity_search("guinea pig", k=1)[0].id == ids[0]
        assert db.store.verify().ok


def test_reopen_with_other_embeddings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kept.engram"
    EngramVectorStore(path, WordEmbeddings()).close()
    with pytest.raises(ModelMismatch):
        EngramVectorStore(path, WordEmbeddings(), embedding_name="another-model")
    with EngramVectorStore(path, WordEmbeddings(dim=32)) as db:  # same name, other dim
        with pytest.raises(InvalidInput, match=r"shape \(1, 32\), expected \(1, 64\)"):
            db.add_texts(["refused"])
        with pytest.raises(DimensionMismatch):
            db.similarity_search("refused")
        assert db.store.count == 0


def test_embedding_name() -> None:
    assert default_embedding_name(DeterministicFakeEmbedding(size=4)) == \
        "langchain:DeterministicFakeEmbedding"

    class Named(WordEmbeddings):
        model = "mini-v2"

    assert default_embedding_name(Named()) == "langchain:Named:mini-v2"


def test_same_text_under_two_ids_is_two_documents(db: EngramVectorStore) -> None:
    db.add_texts(["shared text", "shared text"], [{"n": 1}, {"n": 2}], ids=["a", "b"])
    assert db.store.count == 1  # one engram, two occurrences
    found = db.similarity_search_with_score("shared text", k=5)
    assert sorted((doc.id, doc.metadata["n"]) for doc, _ in found) == [("a", 1), ("b", 2)]
    assert found[0][1] == pytest.approx(found[1][1]) == pytest.approx(1.0, abs=1e-5)
    assert len(db.similarity_search("shared text", k=1)) == 1  # k counts documents
    db.delete(["a"])
    assert db.get_by_ids(["a", "b"]) == [Document(id="b", page_content="shared text",
                                                  metadata={"n": 2})]
    db.delete(["b"])
    assert db.store.count == 0


def test_a_batch_is_one_upsert_many_call(db: EngramVectorStore,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    original = Store.upsert_many

    def counting(store: Store, keys: list[str], *args: object, **kwargs: object) -> object:
        calls.append(list(keys))
        return original(store, keys, *args, **kwargs)

    monkeypatch.setattr(Store, "upsert_many", counting)
    ids = db.add_documents([Document(page_content=f"doc {i}") for i in range(100)])
    assert calls == [ids] and len(set(ids)) == 100
    assert all(str(uuid.UUID(key, version=4)) == key for key in ids)


def test_upsert_replaces_text_and_metadata(db: EngramVectorStore) -> None:
    db.add_texts(["first text"], [{"v": 1}], ids=["x"])
    db.add_texts(["second text"], [{"v": 2}], ids=["x"])
    assert db.get_by_ids(["x"]) == [Document(id="x", page_content="second text",
                                             metadata={"v": 2})]
    assert db.store.count == 1  # the first text's engram went with its last occurrence


def test_filter_operators(papers: EngramVectorStore) -> None:
    assert _ids(papers) == {"p0", "p1", "p2", "p3"}
    assert _ids(papers, year=2019) == {"p0"}
    assert _ids(papers, year={"$gt": 2019}) == {"p1", "p2"}
    assert _ids(papers, year={"$gte": 2023, "$lt": 2024}) == {"p1"}
    assert _ids(papers, year={"$lte": 2023}) == {"p0", "p1"}
    assert _ids(papers, year={"$in": [2019, 2024.5]}) == {"p0", "p2"}
    assert _ids(papers, year={"$nin": [2019]}) == {"p1", "p2", "p3"}  # p3 has no year
    assert _ids(papers, year={"$ne": 2023}) == {"p0", "p2", "p3"}
    assert _ids(papers, year={"$exists": False}) == {"p3"}
    assert _ids(papers, draft=True) == {"p1"}
    assert _ids(papers, tags=["ir", "ml"]) == {"p1"}  # a list matches the same list
    assert _ids(papers, **{"user.name": "bob"}) == {"p2"}  # a dotted key reaches inside
    assert _ids(papers, **{"user.name": {"$exists": True}, "year": {"$lt": 2020}}) == {"p0"}
    assert _ids(papers, year="2019") == set()  # a str never matches a number


def test_filter_applies_to_each_document_of_a_text(db: EngramVectorStore) -> None:
    db.add_texts(["same words", "same words"], [{"lang": "en"}, {"lang": "fr"}],
                 ids=["en", "fr"])
    docs = db.similarity_search("same words", k=5, filter={"lang": "fr"})
    assert [(d.id, d.metadata) for d in docs] == [("fr", {"lang": "fr"})]


def test_scores_and_relevance(papers: EngramVectorStore) -> None:
    scored = papers.similarity_search_with_score("new paper on retrieval", k=4)
    cosines = [score for _, score in scored]
    assert scored[0][0].id == "p1" and cosines[0] == pytest.approx(1.0, abs=1e-5)
    assert cosines == sorted(cosines, reverse=True) and all(-1 <= c <= 1 for c in cosines)
    relevant = papers.similarity_search_with_relevance_scores("new paper on retrieval", k=4)
    assert [doc for doc, _ in relevant] == [doc for doc, _ in scored]
    for (_, cos), (_, rel) in zip(scored, relevant):
        assert rel == pytest.approx(relevance_of_cosine(cos))  # Recall.relevance
        assert 0.0 <= rel <= 1.0
    assert relevance_of_cosine(0.1) == 0.0 and relevance_of_cosine(0.9) == 1.0
    assert relevance_of_cosine(0.5) == pytest.approx(0.5)
    kept = papers.similarity_search_with_relevance_scores(
        "new paper on retrieval", k=4, score_threshold=0.99)
    assert [doc.id for doc, _ in kept] == ["p1"]
    retriever = papers.as_retriever(search_type="similarity_score_threshold",
                                    search_kwargs={"score_threshold": 0.99, "k": 4})
    assert [doc.id for doc in retriever.invoke("new paper on retrieval")] == ["p1"]


def test_retrievers(papers: EngramVectorStore) -> None:
    plain = papers.as_retriever(search_kwargs={"k": 2, "filter": {"year": {"$exists": True}}})
    assert [doc.id for doc in plain.invoke("newer paper on memory")] == ["p2", "p1"]
    mmr = papers.as_retriever(search_type="mmr",
                              search_kwargs={"k": 2, "fetch_k": 4, "lambda_mult": 0.5})
    assert len(mmr.invoke("paper")) == 2


def test_search_by_vector(papers: EngramVectorStore) -> None:
    vector = papers.embeddings.embed_query("newer paper on memory")
    assert papers.similarity_search_by_vector(vector, k=1)[0].id == "p2"
    scaled = [3.0 * x for x in vector]  # any length: normalised like stored vectors
    assert papers.similarity_search_by_vector(scaled, k=1)[0].id == "p2"
    assert papers.similarity_search_by_vector(vector, k=4, filter={"year": 2019})[0].id == "p0"


def test_max_marginal_relevance(db: EngramVectorStore) -> None:
    db.add_texts(["red apple pie", "red apple pie!", "green pear tart"], ids=["a", "b", "c"])
    closest = db.similarity_search("red apple pie", k=2)
    assert {d.id for d in closest} == {"a", "b"}
    diverse = db.max_marginal_relevance_search("red apple pie", k=2, fetch_k=3, lambda_mult=0.3)
    assert diverse[0].id == "a" and diverse[1].id == "c"
    assert db.max_marginal_relevance_search("red apple pie", k=2, lambda_mult=1.0)[1].id == "b"
    assert db.max_marginal_relevance_search("x", k=2, filter={"none": 1}) == []


def test_delete(papers: EngramVectorStore) -> None:
    assert papers.delete(["p0", "missing", "p0"]) is True  # missing and repeated ids: fine
    assert papers.get_by_ids(["p0", "p1"])[0].id == "p1"
    assert papers.delete([]) is True
    papers.store.ingest("a chat turn stored without a key")
    keyless = papers.similarity_search("chat turn", k=1)[0]
    assert keyless.id is None and keyless.page_content == "a chat turn stored without a key"
    assert papers.delete() is True  # None: everything, keyless occurrences too
    assert papers.store.count == 0
    assert papers.similarity_search("paper", k=4) == []


def test_documents_are_pinned_by_default(tmp_path: Path) -> None:
    with EngramVectorStore(tmp_path / "pinned", WordEmbeddings()) as db:
        db.add_texts(["kept forever"], ids=["k"])
        db.store.tick(1_000_000)
        assert [d.id for d in db.similarity_search("kept", k=1)] == ["k"]
    with EngramVectorStore(tmp_path / "aging", WordEmbeddings(), pin=False) as db:
        db.add_texts(["ages like a memory"], ids=["m"])
        db.store.tick(1_000_000)  # far past the short-term lifespan
        assert db.similarity_search("memory", k=1) == []


def test_from_texts_and_documents(tmp_path: Path) -> None:
    db = EngramVectorStore.from_documents(
        [Document(page_content="  padded text \r\n", metadata={"a": 1}, id="d1")],
        WordEmbeddings(), path=tmp_path / "ft")
    try:
        # engramdb keeps text normalised: outer blanks stripped, line ends unified
        assert db.get_by_ids(["d1"]) == [Document(id="d1", page_content="padded text",
                                                  metadata={"a": 1})]
    finally:
        db.close()
    with pytest.raises(InvalidInput, match="path"):
        EngramVectorStore.from_texts(["x"], WordEmbeddings())


@pytest.mark.asyncio
async def test_async_methods(papers: EngramVectorStore) -> None:
    found = await papers.asimilarity_search_with_relevance_scores(
        "newer paper on memory", k=2, filter={"year": {"$gt": 2020}})
    assert [doc.id for doc, _ in found] == ["p2", "p1"]
    mmr = await papers.amax_marginal_relevance_search("paper", k=2, fetch_k=4)
    assert len(mmr) == 2
    ids = await asyncio.gather(*(papers.aadd_texts([f"async text {i}"]) for i in range(5)))
    got = await papers.aget_by_ids([key for batch in ids for key in batch])
    assert sorted(doc.page_content for doc in got) == [f"async text {i}" for i in range(5)]
    assert await papers.adelete([ids[0][0]]) is True


BAD_CALLS = [
    (lambda db: db.similarity_search("x", k=0), "k must be a positive int"),
    (lambda db: db.similarity_search("x", k=True), "k must be a positive int"),
    (lambda db: db.similarity_search(3), "query must be a str"),
    (lambda db: db.similarity_search("x", filter="year=2019"), "filter must be a dict"),
    (lambda db: db.similarity_search("x", filter={"$or": [{"a": 1}]}), "'\\$or' is not"),
    (lambda db: db.similarity_search("x", filter={"a": {"$regex": "x"}}), "unknown operator"),
    (lambda db: db.similarity_search("x", fetch_k=3), "unexpected argument 'fetch_k'"),
    (lambda db: db.max_marginal_relevance_search("x", lambda_mult=2), "lambda_mult"),
    (lambda db: db.add_texts("one text"), "texts must be a list"),
    (lambda db: db.add_texts(["a", "b"], ids=["1"]), "ids has 1 entries for 2 texts"),
    (lambda db: db.add_texts(["a"], [{}, {}]), "metadatas has 2 entries for 1 texts"),
    (lambda db: db.add_texts(["a"], [{"when": datetime.date(2024, 1, 1)}]),
     "not JSON-serialisable"),
    (lambda db: db.add_texts(["a"], ["not a dict"]), "metadata must be a dict"),
    (lambda db: db.add_texts(["  "]), "empty or only whitespace"),
    (lambda db: db.add_texts(["a", "b"], ids=["same", "same"]), "same"),
    (lambda db: db.add_texts(["a"], color="red"), "unexpected argument 'color'"),
    (lambda db: db.get_by_ids("p0"), "ids must be a list"),
    (lambda db: db.get_by_ids([1]), "ids must be str"),
    (lambda db: db.delete("p0"), "ids must be a list"),
    (lambda db: db.delete(["p0"], cascade=True), "unexpected argument 'cascade'"),
]


@pytest.mark.parametrize(("call", "message"), BAD_CALLS)
def test_bad_input_is_refused_and_changes_nothing(papers: EngramVectorStore, call: object,
                                                  message: str) -> None:
    before = sorted(d.id for d in papers.similarity_search("paper", k=100))
    with pytest.raises(InvalidInput, match=message):
        call(papers)  # type: ignore[operator]
    assert sorted(d.id for d in papers.similarity_search("paper", k=100)) == before


def test_bad_vectors_and_embeddings(tmp_path: Path, papers: EngramVectorStore) -> None:
    with pytest.raises(DimensionMismatch):
        papers.similarity_search_by_vector([1.0, 2.0], k=1)
    with pytest.raises(InvalidInput, match="zero"):
        papers.similarity_search_by_vector([0.0] * 64, k=1)
    with pytest.raises(InvalidInput, match="langchain_core Embeddings"):
        EngramVectorStore(tmp_path / "e", lambda texts: texts)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="path must be"):
        EngramVectorStore(42, WordEmbeddings())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="pin must be"):
        EngramVectorStore(tmp_path / "p", WordEmbeddings(), pin="yes")  # type: ignore[arg-type]
    with EngramVectorStore(tmp_path / "broken", BrokenEmbeddings()) as db:
        with pytest.raises(InvalidInput, match="model server unreachable"):
            db.add_texts(["anything"])
        with pytest.raises(InvalidInput, match="model server unreachable"):
            db.similarity_search("anything")
        assert db.store.count == 0


def test_metadata_where() -> None:
    assert metadata_where(None) is None and metadata_where({}) is None
    assert metadata_where({"a": {"$in": [1]}}) == {"metadata": {"a": {"$in": [1]}}}


def test_import_engramdb_does_not_import_langchain() -> None:
    code = "import sys, engramdb; assert 'langchain_core' not in sys.modules; print('ok')"
    done = subprocess.run([PYTHON, "-c", code], env=python_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "langchain_core" or
                 m.startswith("langchain_core.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    monkeypatch.delitem(sys.modules, "engramdb.integrations.langchain")
    with pytest.raises(ImportError, match=r"pip install 'engramdb\[langchain\]'"):
        importlib.import_module("engramdb.integrations.langchain")
