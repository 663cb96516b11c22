"""The ``where=`` operators of recall and integrate (issue 17): ``$eq $ne $in $nin $gt $gte $lt
$lte $exists`` on metadata values and on role/session, dotted keys and JSON pointers into
nested metadata, numbers compared as numbers, bad filters rejected before anything runs, and a
property test against a pure-Python evaluation of the same filter."""

from __future__ import annotations

import itertools
import json
import operator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.errors import InvalidInput
from engramdb.recall.filters import occurrence_filter

DIM = 64
EVERYTHING = 1_000  # top_k above any store here: recall returns every matching engram


def _open(tmp_path: Path) -> engramdb.Store:
    return engramdb.open(tmp_path / "m", encoder=HashingEncoder(dim=DIM))


def _texts(mem: engramdb.Store, where: dict[str, Any]) -> set[str]:
    hits = mem.recall(vector=[1.0] * DIM, top_k=EVERYTHING, where=where, associative=False)
    return {h.text for h in hits}


# -- examples ---------------------------------------------------------------------------------

ROWS: list[tuple[str, str | None, str | None, dict[str, Any] | None]] = [
    # text, role, session, metadata
    ("old paper", "alice", "s1", {"year": 2019, "tags": ["ml", "ir"], "user": {"name": "ann"}}),
    ("new paper", "bob", "s1", {"year": 2021.0, "score": 1, "user": {"name": "bob"}}),
    ("string year", None, "s2", {"year": "2022", "score": 1.0}),
    ("flag note", "carol", "s2", {"flag": True, "score": 2.5, "none": None}),
    ("plain note", "dave", None, None),
    ("dotted note", "alice", "s3", {"a.b": 1, "a": {"b": 2, "c.d": 3}, "x/y": {"z": 4}}),
    ("nested note", "bob", "s3", {"a": {"b": 5}}),
]


@pytest.fixture
def mem(tmp_path: Path):
    with _open(tmp_path) as m:
        m.ingest_many([r[0] for r in ROWS], roles=[r[1] for r in ROWS],
                      sessions=[r[2] for r in ROWS], metadatas=[r[3] for r in ROWS])
        yield m


METADATA_CASES = [
    ({"year": {"$gte": 2020}}, {"new paper"}),  # "2022" is a str: no match, no error
    ({"year": {"$gt": 2019, "$lt": 2021.5}}, {"new paper"}),
    ({"year": {"$lte": 2019}}, {"old paper"}),
    ({"year": {"$lt": 2019}}, set()),
    ({"year": 2021}, {"new paper"}),  # 2021 matches 2021.0
    ({"year": {"$eq": 2021.0}}, {"new paper"}),
    ({"score": 1}, {"new paper", "string year"}),  # 1 matches 1.0
    ({"score": {"$in": [1.0, 2.5]}}, {"new paper", "string year", "flag note"}),
    ({"score": {"$gt": 1}}, {"flag note"}),
    ({"score": {"$gte": 1.0}}, {"new paper", "string year", "flag note"}),
    ({"year": {"$in": [2019, "2022"]}}, {"old paper", "string year"}),
    ({"year": {"$gt": "2000"}}, {"string year"}),  # str against str only
    ({"flag": True}, {"flag note"}),
    ({"flag": 1}, set()),  # a bool is not a number
    ({"score": True}, set()),
    ({"none": None}, {"flag note"}),
]


def test_metadata_operators(mem: engramdb.Store) -> None:
    for metadata, expected in METADATA_CASES:
        assert _texts(mem, {"metadata": metadata}) == expected, metadata


def test_ne_and_nin_are_complements(mem: engramdb.Store) -> None:
    every = {text for text, *_ in ROWS}
    eq = _texts(mem, {"metadata": {"year": 2019}})
    assert _texts(mem, {"metadata": {"year": {"$ne": 2019}}}) == every - eq
    inn = _texts(mem, {"metadata": {"year": {"$in": [2019, 2021]}}})
    assert inn == {"old paper", "new paper"}
    assert _texts(mem, {"metadata": {"year": {"$nin": [2019, 2021]}}}) == every - inn
    assert _texts(mem, {"metadata": {"year": {"$in": []}}}) == set()
    assert _texts(mem, {"metadata": {"year": {"$nin": []}}}) == every


def test_exists(mem: engramdb.Store) -> None:
    every = {text for text, *_ in ROWS}
    has_year = {"old paper", "new paper", "string year"}
    assert _texts(mem, {"metadata": {"year": {"$exists": True}}}) == has_year
    assert _texts(mem, {"metadata": {"year": {"$exists": False}}}) == every - has_year
    assert _texts(mem, {"metadata": {"none": {"$exists": True}}}) == {"flag note"}  # null is
    assert _texts(mem, {"metadata": {"tags.0": {"$exists": True}}}) == {"old paper"}
    assert _texts(mem, {"metadata": {"tags.2": {"$exists": True}}}) == set()


def test_dotted_keys_reach_nested_values(mem: engramdb.Store) -> None:
    assert _texts(mem, {"metadata": {"user.name": "bob"}}) == {"new paper"}
    assert _texts(mem, {"metadata": {"user.name": {"$in": ["ann", "bob"]}}}) == {
        "old paper", "new paper"}
    assert _texts(mem, {"metadata": {"tags.1": "ir"}}) == {"old paper"}
    # A top-level key holding the dot wins where an occurrence has one ("dotted note" has
    # both "a.b": 1 and a.b = 2); elsewhere the key is a path ("nested note": a.b = 5).
    assert _texts(mem, {"metadata": {"a.b": 1}}) == {"dotted note"}
    assert _texts(mem, {"metadata": {"a.b": 2}}) == set()
    assert _texts(mem, {"metadata": {"a.b": {"$gte": 1}}}) == {"dotted note", "nested note"}
    # A JSON pointer names exactly one path, dots and slashes included.
    assert _texts(mem, {"metadata": {"/a/b": 2}}) == {"dotted note"}
    assert _texts(mem, {"metadata": {"/a.b": 1}}) == {"dotted note"}
    assert _texts(mem, {"metadata": {"/a/c.d": 3}}) == {"dotted note"}
    assert _texts(mem, {"metadata": {"/x~1y/z": 4}}) == {"dotted note"}
    assert _texts(mem, {"metadata": {"a.c.d": 3}}) == set()  # a path: a -> c -> d


def test_role_and_session_operators(mem: engramdb.Store) -> None:
    assert _texts(mem, {"role": {"$in": ["alice", "bob"]}}) == {
        "old paper", "new paper", "dotted note", "nested note"}
    assert _texts(mem, {"role": ["alice", "bob"]}) == _texts(mem, {"role": {"$in": ["alice",
                                                                                   "bob"]}})
    assert _texts(mem, {"role": "carol"}) == {"flag note"}
    assert _texts(mem, {"role": {"$eq": "carol"}}) == {"flag note"}
    assert _texts(mem, {"role": {"$ne": "alice"}}) == {  # no role: not alice
        "new paper", "string year", "flag note", "plain note", "nested note"}
    assert _texts(mem, {"role": {"$nin": ["alice", "bob"]}}) == {
        "string year", "flag note", "plain note"}
    assert _texts(mem, {"role": {"$exists": False}}) == {"string year"}
    assert _texts(mem, {"role": {"$gte": "c", "$lt": "d"}}) == {"flag note"}
    assert _texts(mem, {"session": {"$gt": "s1"}}) == {
        "string year", "flag note", "dotted note", "nested note"}
    assert _texts(mem, {"session": {"$exists": False}}) == {"plain note"}
    assert _texts(mem, {"session": {"$in": ["s3"]}, "role": "bob",
                        "metadata": {"a.b": {"$gt": 4}}}) == {"nested note"}


def test_plain_dicts_still_mean_equality(tmp_path: Path) -> None:
    with _open(tmp_path) as mem:
        mem.ingest("dict value", metadata={"k": {"x": 1, "y": [1, "a"]}})
        mem.ingest("dollar dict", metadata={"k": {"$in": [1, 2]}})
        mem.ingest("number", metadata={"k": 1})
        assert _texts(mem, {"metadata": {"k": {"y": [1, "a"], "x": 1}}}) == {"dict value"}
        assert _texts(mem, {"metadata": {"k": {}}}) == set()
        # An operator dict now; the literal dict with $ keys is still reachable through $eq.
        assert _texts(mem, {"metadata": {"k": {"$in": [1, 2]}}}) == {"number"}
        assert _texts(mem, {"metadata": {"k": {"$eq": {"$in": [1, 2]}}}}) == {"dollar dict"}
        assert _texts(mem, {"metadata": {"k": {"$in": [{"$in": [1, 2]}, 1]}}}) == {
            "dollar dict", "number"}


def test_integers_compare_exactly(tmp_path: Path) -> None:
    big = 2**53 + 1  # no double equals it
    with _open(tmp_path) as mem:
        mem.ingest("big int", metadata={"n": big})
        mem.ingest("near double", metadata={"n": float(2**53)})
        mem.ingest("largest", metadata={"n": 2**64 - 1})
        mem.ingest("smallest", metadata={"n": -(2**63)})
        assert _texts(mem, {"metadata": {"n": big}}) == {"big int"}
        assert _texts(mem, {"metadata": {"n": float(2**53)}}) == {"near double"}
        assert _texts(mem, {"metadata": {"n": 2**53}}) == {"near double"}
        assert _texts(mem, {"metadata": {"n": {"$gt": 2**53, "$lt": 2**60}}}) == {"big int"}
        assert _texts(mem, {"metadata": {"n": {"$gte": big}}}) == {"big int", "largest"}
        assert _texts(mem, {"metadata": {"n": {"$lt": big}}}) == {"near double", "smallest"}
        assert _texts(mem, {"metadata": {"n": {"$gt": 1e300}}}) == set()
        assert _texts(mem, {"metadata": {"n": {"$gt": -1e300}}}) == {
            "big int", "near double", "largest", "smallest"}
        assert _texts(mem, {"metadata": {"n": 2**64 - 1}}) == {"largest"}
        assert _texts(mem, {"metadata": {"n": -(2**63)}}) == {"smallest"}


BAD_FILTERS = [
    ({"metadata": {"k": {"$foo": 1}}}, "unknown operator '\\$foo'"),
    ({"role": {"$regex": "a.*"}}, "unknown operator"),
    ({"metadata": {"k": {"$in": 1}}}, "must be a list"),
    ({"metadata": {"k": {"$in": "abc"}}}, "must be a list"),
    ({"metadata": {"k": {"$nin": {"a": 1}}}}, "must be a list"),
    ({"role": {"$in": "alice"}}, "must be a list"),
    ({"role": {"$in": ["alice", 3]}}, "list of str"),
    ({"metadata": {"k": {"$exists": 1}}}, "True or False"),
    ({"metadata": {"k": {"$exists": "yes"}}}, "True or False"),
    ({"session": {"$exists": None}}, "True or False"),
    ({"metadata": {"k": {"$gt": 1, "x": 2}}}, "mixes operators"),
    ({"role": {"$eq": "alice", "name": "bob"}}, "mixes operators"),
    ({"metadata": {"k": {"$gt": True}}}, "number or a str"),
    ({"metadata": {"k": {"$lt": None}}}, "number or a str"),
    ({"metadata": {"k": {"$lte": [1]}}}, "number or a str"),
    ({"metadata": {"k": {"$gte": float("nan")}}}, "finite"),
    ({"metadata": {"k": {"$gte": float("inf")}}}, "finite"),
    ({"metadata": {"k": {"$eq": float("nan")}}}, "JSON"),
    ({"metadata": {"k": {"$in": [1, {1, 2}]}}}, "JSON"),
    ({"role": {"$eq": 3}}, "must be a str"),
    ({"role": {"$gt": 3}}, "must be a str"),
    ({"role": {"x": 1}}, "must be a str"),
    ({"role": "\ud800"}, "lone surrogate"),  # was CorruptStore from the catalog
    ({"session": {"$ne": "\udfff"}}, "lone surrogate"),
    ({"metadata": {"k": {"$gt": "\ud800"}}}, "surrogate"),
    ({"metadata": {"\ud800": {"$exists": True}}}, "lone surrogate"),
]


@pytest.mark.parametrize(("where", "message"), BAD_FILTERS)
def test_bad_filters_are_invalid_input(where: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        occurrence_filter(where)  # pure: checked before any SQL exists


def test_bad_filters_raise_before_anything_runs(tmp_path: Path) -> None:
    with _open(tmp_path) as mem:
        mem.ingest("a fact", metadata={"k": 1})
        clock, count = mem.clock, len(mem)
        for where, message in BAD_FILTERS:
            with pytest.raises(InvalidInput, match=message):
                mem.recall("a fact", where=where)
            with pytest.raises(InvalidInput, match=message):
                mem.integrate("a new turn", where=where)
        assert (mem.clock, len(mem)) == (clock, count)  # no turn was stored
        assert mem.verify().ok


def test_user_values_never_reach_the_sql_text(tmp_path: Path) -> None:
    hostile = "x' OR 1=1; DROP TABLE occurrences; --"
    where = {"role": {"$in": [hostile]}, "session": {"$gt": hostile},
             "metadata": {hostile: {"$gte": hostile}, f"a.{hostile}": hostile,
                          f"/{hostile}": {"$exists": True}}}
    sql, params = occurrence_filter(where)
    assert "DROP" not in sql and "'x" not in sql
    assert sql.count("?") == len(params)
    with _open(tmp_path) as mem:
        mem.ingest("a fact", role=hostile, metadata={hostile: hostile})
        assert _texts(mem, {"metadata": {hostile: {"$gte": hostile}}}) == {"a fact"}
        assert _texts(mem, where) == set()
        assert _texts(mem, {"role": hostile}) == {"a fact"}


def test_integrate_honours_operators(tmp_path: Path) -> None:
    with _open(tmp_path) as mem:
        mem.ingest("my cat is called Tom", metadata={"year": 2019})
        mem.ingest("my cat is called Felix", metadata={"year": 2023})
        turn = mem.integrate("what is my cat called", top_k=5,
                             where={"metadata": {"year": {"$gt": 2020}}})
        assert [h.text for h in turn.recalled] == ["my cat is called Felix"]


def test_hits_carry_only_the_matching_occurrences(tmp_path: Path) -> None:
    with _open(tmp_path) as mem:
        mem.ingest("the same words", role="alice", metadata={"n": 1})
        mem.ingest("the same words", role="bob", metadata={"n": 5})
        hits = mem.recall("the same words", where={"metadata": {"n": {"$gt": 2}}})
        assert [[o.role for o in h.occurrences] for h in hits] == [["bob"]]


# -- property: the SQL filter equals a pure-Python evaluation ---------------------------------

MISSING = object()
_SCALARS = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([2**53, 2**53 + 1, -(2**63), 2**64 - 1]),
    st.sampled_from([-1.5, -0.0, 0.0, 0.5, 1.0, 2.0, 2.5, float(2**53)]),
    st.floats(-4, 4, allow_nan=False),
    st.text(alphabet="aBé", max_size=2),
    st.booleans(),
    st.none(),
)
_VALUES = st.one_of(
    _SCALARS,
    st.dictionaries(st.sampled_from(["x", "y"]), _SCALARS, max_size=2),
    st.lists(_SCALARS, max_size=2),
)
_METADATA = st.integers(0, 4).flatmap(  # no metadata one time in five
    lambda n: st.dictionaries(st.sampled_from(["a", "b", "a.x"]), _VALUES, min_size=1,
                              max_size=3) if n else st.none())
_FILTER_KEYS = ["a", "b", "c", "a.x", "a.y", "b.0", "b.1", "/a/x", "/a.x"]
_RANGE_OPERANDS = st.one_of(st.integers(-3, 3), st.sampled_from([2**53, 2.5, -0.5]),
                            st.text(alphabet="aBé", max_size=2))
_ROLES = ["alice", "bob", "carol"]
_OPERATORS = ["$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists"]


def _either(a: st.SearchStrategy, b: st.SearchStrategy) -> st.SearchStrategy:
    """``a`` or ``b``, half and half (``st.one_of`` would flatten a one_of into its branches,
    each as likely as ``a``)."""
    return st.booleans().flatmap(lambda first: a if first else b)


def _operator_dicts(operand: Any) -> st.SearchStrategy:
    """Dicts of one or two operators, each with an ``operand(name)``."""
    ops = st.lists(st.sampled_from(_OPERATORS), min_size=1, max_size=2, unique=True)
    return ops.flatmap(lambda names: st.fixed_dictionaries(
        {name: operand(name) for name in names}))


def _condition(plain: st.SearchStrategy, operand: Any) -> st.SearchStrategy:
    """A plain value or an operator dict, half and half."""
    return _either(plain, _operator_dicts(operand))


def _role_operand(op: str) -> st.SearchStrategy:
    if op in ("$in", "$nin"):
        return st.lists(st.sampled_from(_ROLES), max_size=2)
    return st.booleans() if op == "$exists" else st.sampled_from(_ROLES)


_ROLE_FILTERS = _either(st.none(), st.one_of(  # no role filter half the time
    st.sampled_from(_ROLES),
    st.lists(st.sampled_from(_ROLES), min_size=1, max_size=2),
    _operator_dicts(_role_operand),
))


def _metadata_filters(rows: list) -> st.SearchStrategy:
    """Metadata filters over keys the rows hold (or any key) whose operands are often values
    the rows hold at that key (so that filters match some rows, not none)."""
    present = [key for key in _FILTER_KEYS if any(_resolve(m, key) is not MISSING for m, _ in rows)]
    keys = _either(st.sampled_from(present), st.sampled_from(_FILTER_KEYS)) if present \
        else st.sampled_from(_FILTER_KEYS)
    entries = keys.flatmap(lambda key: st.tuples(st.just(key), _key_condition(rows, key)))
    return st.lists(entries, min_size=1, max_size=2, unique_by=lambda e: e[0]).map(dict)


def _key_condition(rows: list, key: str) -> st.SearchStrategy:
    """A condition on ``key`` whose operands are often the values the rows hold there."""
    seen = [v for m, _ in rows if (v := _resolve(m, key)) is not MISSING]
    ordered = [v for v in seen if _is_number(v) or isinstance(v, str)]
    values = _either(st.sampled_from(seen), _VALUES) if seen else _VALUES
    bounds = _either(st.sampled_from(ordered), _RANGE_OPERANDS) if ordered \
        else _RANGE_OPERANDS

    def operand(op: str) -> st.SearchStrategy:
        if op in ("$eq", "$ne"):
            return values
        if op in ("$in", "$nin"):
            return st.lists(values, max_size=3)
        return st.booleans() if op == "$exists" else bounds

    return _condition(values, operand)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[list, list]:
    """Rows (metadata, role) and a few (metadata filter, role filter) pairs over them."""
    rows = draw(st.lists(st.tuples(_METADATA, st.sampled_from([*_ROLES, None])), min_size=1,
                         max_size=8))
    filters = draw(st.lists(st.tuples(_metadata_filters(rows), _ROLE_FILTERS), min_size=1,
                            max_size=4))
    return rows, filters


def _resolve(metadata: dict[str, Any] | None, key: str) -> Any:
    """The value a filter key names: the top-level key, else a dotted path or a pointer."""
    if metadata is None:
        return MISSING
    if key in metadata:
        return metadata[key]
    if key.startswith("/"):
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in key[1:].split("/")]
    elif "." in key:
        tokens = key.split(".")
    else:
        return MISSING
    value: Any = metadata
    for token in tokens:
        if isinstance(value, dict) and token in value:
            value = value[token]
        elif isinstance(value, list) and token.isdigit() and int(token) < len(value):
            value = value[int(token)]
        else:
            return MISSING
    return value


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _equal(value: Any, x: Any) -> bool:
    if value is MISSING:
        return False
    if x is None or isinstance(x, bool):
        return value is x
    if _is_number(x):
        return _is_number(value) and value == x
    if isinstance(x, str):
        return isinstance(value, str) and value == x
    return json.dumps(value, sort_keys=True) == json.dumps(x, sort_keys=True)  # list, dict


_COMPARE = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _holds(value: Any, op: str, x: Any) -> bool:
    if op == "$exists":
        return (value is not MISSING) == x
    if op in ("$eq", "$ne"):
        return _equal(value, x) == (op == "$eq")
    if op in ("$in", "$nin"):
        return any(_equal(value, v) for v in x) == (op == "$in")
    if isinstance(x, str):
        return isinstance(value, str) and _COMPARE[op](value, x)
    return _is_number(value) and _COMPARE[op](value, x)


def _ops(condition: Any) -> dict[str, Any]:
    if isinstance(condition, dict) and condition and all(k.startswith("$") for k in condition):
        return condition
    return {"$eq": condition}


def _reference(metadata: dict | None, role: str | None, where_meta: dict,
               where_role: Any) -> bool:
    for key, condition in where_meta.items():
        value = _resolve(metadata, key)
        if not all(_holds(value, op, x) for op, x in _ops(condition).items()):
            return False
    if where_role is None:
        return True
    value = MISSING if role is None else role
    if isinstance(where_role, list):
        return value in where_role
    return all(_holds(value, op, x) for op, x in _ops(where_role).items())


_example = itertools.count()


@pytest.fixture
def shared(tmp_path: Path):
    """One store for every example of the property test; each example is a session."""
    with _open(tmp_path) as m:
        yield m


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=_cases())
def test_filters_equal_a_python_reference(shared: engramdb.Store, case: tuple) -> None:
    rows, filters = case
    session = f"example {next(_example)}"  # one commit per example, one session each
    texts = [f"{session} row {i}" for i in range(len(rows))]
    shared.ingest_many(texts, roles=[r for _, r in rows], sessions=[session] * len(rows),
                       metadatas=[m for m, _ in rows])
    for where_meta, where_role in filters:
        where: dict[str, Any] = {"session": session, "metadata": where_meta}
        if where_role is not None:
            where["role"] = where_role
        expected = {t for t, (m, r) in zip(texts, rows)
                    if _reference(m, r, where_meta, where_role)}
        assert _texts(shared, where) == expected, (rows, where)
