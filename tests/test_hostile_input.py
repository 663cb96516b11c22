"""Hostile input (issue 18, items 7 and 8): values that passed every check, were stored, and
failed later with a raw exception, and a tampered catalog that verify() called clean.

- Settings and index configurations are checked by type: ints are ints (5.0 and True are
  refused, naming the setting and the value), floats are finite, also when read back from a
  manifest (CorruptStore) or an export's header (InvalidInput).
- Metadata (ingest, ``where=``) nests at most 32 levels: deeper raised RecursionError.
- verify() reports kind codes outside the table, non-finite link weights, metadata that is not
  a JSON object, and eids that no store can have; open refuses an absurd eid before sizing its
  arrays by it (it once asked for terabytes).

The catalog is tampered with through duckdb directly, while the store is closed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.errors import CorruptStore, InvalidInput
from engramdb.transfer import export_store, import_store

ENC = HashingEncoder(dim=16)
TEXTS = ["the cat sat on the mat", "a dog barked at night", "rain fell on the roof",
         "the kettle boiled over", "she read the letter twice"]


def _nested(depth: int) -> dict[str, Any]:
    """A dict ``depth`` levels deep: {'a': {'a': ... {'a': 1}}}."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _store(path: Path, **settings: Any) -> list[str]:
    """A small store with occurrences, metadata, a link and a forgotten engram; its ids."""
    with engramdb.open(path, encoder=ENC, settings=settings or None) as mem:
        ids = [r.id for r in mem.ingest_many(
            TEXTS, sessions=["s1"] * len(TEXTS), roles=["user", "bot"] * 2 + ["user"],
            metadatas=[{"n": i, "tags": ["x", {"deep": [1.5, None]}]} for i in range(5)])]
        mem.reinforce(ids[:2])  # a link
        mem.ingest("pinned fact", pin=True)
        mem.forget(ids[4])
    return ids


def _tamper(path: Path, sql: str, params: list[Any] | None = None) -> None:
    con = duckdb.connect(str(path / "catalog.duckdb"))
    try:
        con.execute(sql, params or [])
    finally:
        con.close()


def _problems(path: Path) -> list[str]:
    with engramdb.open(path, encoder=ENC) as mem:
        return mem.verify().problems


# -- settings: ints are ints ---------------------------------------------------------------------

WHOLE_AS_FLOAT = [{"neighbour_seeds": 5.0}, {"associative_fanout": 3.0}, {"batch_rows": 1e4},
                  {"associative_depth": 1.0}, {"hybrid_pool": 100.0},
                  {"short_term_capacity": 10.0}, {"segment_bytes": float(2**20)}]


@pytest.mark.parametrize("bad", WHOLE_AS_FLOAT, ids=lambda b: next(iter(b)))
def test_whole_number_settings_refuse_floats(tmp_path: Path, bad: dict[str, Any]) -> None:
    (name, value), = bad.items()
    with pytest.raises(InvalidInput) as err:
        engramdb.Settings(**bad)
    assert name in str(err.value) and repr(value) in str(err.value)
    path = tmp_path / "never.engram"
    with pytest.raises(InvalidInput):
        engramdb.open(path, encoder=ENC, settings=bad)
    assert not path.exists()


@pytest.mark.parametrize("bad", [
    {"hybrid_pool": True}, {"lexical_weight": True}, {"context": 1}, {"prefault_vectors": "yes"},
    {"neighbour_weight": math.nan}, {"date_prior": math.nan}, {"short_term_lifespan": math.inf},
    {"link_half_life": math.inf}, {"index_backlog_mb": math.inf}, {"hybrid_pool": "100"},
    {"date_key": 3}, {"vector_dtype": None}, {"link_gain": 10**400}, {"batch_rows": 2**70},
], ids=lambda b: f"{next(iter(b))}={next(iter(b.values()))!r}"[:40])
def test_settings_refuse_wrong_types_and_non_finite_values(bad: dict[str, Any]) -> None:
    (name, _), = bad.items()
    with pytest.raises(InvalidInput) as err:
        engramdb.Settings(**bad)
    assert name in str(err.value)


def test_settings_keep_declared_types_and_check_assignments(tmp_path: Path) -> None:
    s = engramdb.Settings(lexical_weight=1, hybrid_pool=np.int64(50), link_max=np.float32(0.5))
    assert type(s.lexical_weight) is float and type(s.hybrid_pool) is int
    assert type(s.link_max) is float
    assert json.loads(json.dumps(s.to_dict())) == s.to_dict()  # the manifest is JSON
    with pytest.raises(InvalidInput, match="batch_rows"):
        s.batch_rows = 1e4  # recorded at the next open: checked like the constructor's
    assert s.batch_rows == 4096
    with pytest.raises(InvalidInput, match="neighbour_seeds"):
        s.replace(neighbour_seeds=5.0)


@pytest.mark.parametrize("name, value", [("neighbour_seeds", 5.0), ("associative_fanout", 3.0),
                                         ("batch_rows", 1e4), ("context", "yes")])
def test_a_manifest_with_a_bad_setting_is_refused_on_open(tmp_path: Path, name: str,
                                                          value: Any) -> None:
    path = tmp_path / "m.engram"
    _store(path)
    manifest = json.loads((path / "MANIFEST.json").read_text())
    manifest["settings"][name] = value
    (path / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptStore) as err:
        with engramdb.open(path, encoder=ENC) as mem:
            mem.recall("cat")
            mem.ingest_many(["one more", "and another"])
    assert name in str(err.value) and "MANIFEST.json" in err.value.hint
    # The hint's way out: a valid value in the manifest.
    manifest["settings"][name] = engramdb.Settings().to_dict()[name]
    (path / "MANIFEST.json").write_text(json.dumps(manifest))
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.recall("cat sat mat")[0].text == TEXTS[0]
        mem.ingest_many(["one more", "and another"])
        assert mem.verify().ok


def _edit_jsonl_header(src: Path, dst: Path, edit: Any) -> None:
    lines = src.read_text().splitlines()
    header = json.loads(lines[0])
    edit(header)
    dst.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")


@pytest.mark.parametrize("name, value", [("neighbour_seeds", 5.0), ("associative_fanout", 3.0),
                                         ("batch_rows", 1e4), ("lexical_weight", "0.5")])
def test_an_import_header_with_a_bad_setting_is_refused(tmp_path: Path, name: str,
                                                        value: Any) -> None:
    _store(tmp_path / "a.engram")
    with engramdb.open(tmp_path / "a.engram", encoder=ENC) as mem:
        export_store(mem, tmp_path / "a.jsonl")
    _edit_jsonl_header(tmp_path / "a.jsonl", tmp_path / "bad.jsonl",
                       lambda h: h["settings"].__setitem__(name, value))
    dest = tmp_path / "b.engram"
    with pytest.raises(InvalidInput) as err:
        import_store(dest, tmp_path / "bad.jsonl")
        with engramdb.open(dest, encoder=ENC) as mem:  # before: imported, then TypeError
            mem.recall("cat")
            mem.ingest_many(["one more", "and another"])
    assert name in str(err.value) and "bad.jsonl" in str(err.value)
    assert not dest.exists()


def test_a_parquet_header_with_a_bad_setting_is_refused(tmp_path: Path) -> None:
    _store(tmp_path / "a.engram")
    with engramdb.open(tmp_path / "a.engram", encoder=ENC) as mem:
        export_store(mem, tmp_path / "a.parquet", fmt="parquet")
    header = json.loads((tmp_path / "a.parquet" / "header.json").read_text())
    header["settings"]["neighbour_seeds"] = 5.0
    (tmp_path / "a.parquet" / "header.json").write_text(json.dumps(header))
    with pytest.raises(InvalidInput, match="neighbour_seeds"):
        import_store(tmp_path / "b.engram", tmp_path / "a.parquet")
    assert not (tmp_path / "b.engram").exists()


@pytest.mark.parametrize("edit", [
    lambda h: h["counters"].__setitem__("clock", "7"),
    lambda h: h["counters"].__setitem__("generation", None),
    lambda h: h.__setitem__("last_turn", ["not", "an", "id"]),
], ids=["counter-str", "counter-null", "last_turn-list"])
def test_an_import_header_with_bad_counters_is_refused(tmp_path: Path, edit: Any) -> None:
    _store(tmp_path / "a.engram")
    with engramdb.open(tmp_path / "a.engram", encoder=ENC) as mem:
        export_store(mem, tmp_path / "a.jsonl")
    _edit_jsonl_header(tmp_path / "a.jsonl", tmp_path / "bad.jsonl", edit)
    with pytest.raises(InvalidInput, match="bad.jsonl"):
        import_store(tmp_path / "b.engram", tmp_path / "bad.jsonl")
    assert not (tmp_path / "b.engram").exists()


@pytest.mark.parametrize("override", [
    {"ef_search": 64.0}, {"levels": [16.7]}, {"levels": ["16"]}, {"levels": [True, 16]},
    {"seed": -1}, {"seed": 2**70}, {"M": 2**40}, {"filter_crossover": "1e3"},
    {"filter_crossover": math.inf}, {"filter_crossover": True}, {1: 2},
], ids=lambda o: f"{next(iter(o))}={next(iter(o.values()))!r}"[:40])
def test_index_overrides_are_checked_by_type(tmp_path: Path, override: dict[Any, Any]) -> None:
    path = tmp_path / "m.engram"
    _store(path)
    before = (path / "MANIFEST.json").read_bytes()
    with pytest.raises(InvalidInput) as err:
        with engramdb.open(path, encoder=ENC, index=override) as mem:
            mem.ingest_many([f"more text {i}" for i in range(20)])
            mem.recall("cat")
            mem.rebuild()
    assert str(next(iter(override))) in str(err.value)
    assert (path / "MANIFEST.json").read_bytes() == before
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.verify().ok


# -- metadata depth ------------------------------------------------------------------------------

def test_metadata_depth_is_bounded(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "m.engram", encoder=ENC) as mem:
        mem.ingest("exactly deep enough", metadata=_nested(32))
        for depth in (33, 100, 5_000):
            with pytest.raises(InvalidInput, match="32 levels"):
                mem.ingest("too deep", metadata=_nested(depth))
            with pytest.raises(InvalidInput, match="32 levels"):
                mem.ingest_many(["fine", "too deep"], metadatas=[None, _nested(depth)])
            with pytest.raises(InvalidInput, match="32 levels"):
                mem.integrate("too deep", metadata=_nested(depth))
        deep_list: Any = 1
        for _ in range(5_000):
            deep_list = [deep_list]
        with pytest.raises(InvalidInput, match="32 levels"):
            mem.ingest("too deep", metadata={"a": deep_list})
        cycle: dict[str, Any] = {}
        cycle["self"] = cycle
        with pytest.raises(InvalidInput):
            mem.ingest("a cycle", metadata=cycle)
        assert len(mem) == 1 and mem.verify().ok


def test_where_metadata_depth_is_bounded(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "m.engram", encoder=ENC) as mem:
        mem.ingest("a nested fact", metadata={"k": _nested(31)})  # 32 levels
        hits = mem.recall("nested fact", where={"metadata": {"k": _nested(31)}})
        assert [h.text for h in hits] == ["a nested fact"]
        for depth in (32, 5_000):  # 33 levels and more
            with pytest.raises(InvalidInput, match="32 levels"):
                mem.recall("nested fact", where={"metadata": {"k": _nested(depth)}})


def test_metadata_with_a_lone_surrogate_is_invalid_input(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "m.engram", encoder=ENC) as mem:
        for meta in ({"a": "\ud800"}, {"\udfff": 1}, {"a": ["ok", {"b": "x\ud800"}]}):
            with pytest.raises(InvalidInput):
                mem.ingest("surrogates", metadata=meta)
        mem.ingest("fine", metadata={"a": "é"})
        with pytest.raises(InvalidInput):  # was CorruptStore ("restore from backup")
            mem.recall("fine", where={"metadata": {"a": "\ud800"}})
        assert len(mem) == 1 and mem.verify().ok


def test_a_deeply_nested_export_line_is_invalid_input(tmp_path: Path) -> None:
    _store(tmp_path / "a.engram")
    with engramdb.open(tmp_path / "a.engram", encoder=ENC) as mem:
        export_store(mem, tmp_path / "a.jsonl")
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    text = json.dumps(record)
    deep = "[" * 100_000 + "]" * 100_000
    lines[1] = text[:-1] + ', "extra": ' + deep + "}"
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidInput, match="bad.jsonl"):
        import_store(tmp_path / "b.engram", tmp_path / "bad.jsonl")


# -- verify() on a tampered catalog ---------------------------------------------------------------

def test_a_rich_clean_store_verifies_clean(tmp_path: Path) -> None:
    path = tmp_path / "m.engram"
    _store(path)
    with engramdb.open(path, encoder=ENC) as mem:
        mem.integrate("what did the cat do", role="user", session="s2",
                      metadata={"date": "2024-05-01", "score": -0.0, "big": 10**30})
        mem.integrate("it sat on the mat", role="bot", session="s2")
        mem.gc()
        assert mem.verify().ok, mem.verify().problems
        export_store(mem, tmp_path / "a.jsonl")
    import_store(tmp_path / "b.engram", tmp_path / "a.jsonl")
    assert _problems(tmp_path / "b.engram") == []


def test_verify_reports_an_unknown_kind_code(tmp_path: Path) -> None:
    path = tmp_path / "m.engram"
    ids = _store(path)
    _tamper(path, "UPDATE engrams SET kind = 99 WHERE id = ?", [ids[0]])
    assert any("kind code" in p for p in _problems(path))


def test_verify_reports_an_unknown_kind_code_in_the_forgetting_log(tmp_path: Path) -> None:
    path = tmp_path / "m.engram"
    _store(path)
    _tamper(path, "UPDATE forgotten SET kind = -3")
    assert any("kind code" in p for p in _problems(path))


@pytest.mark.parametrize("weight", ["'NaN'::DOUBLE", "'inf'::DOUBLE", "-0.5"])
def test_verify_reports_bad_link_weights(tmp_path: Path, weight: str) -> None:
    path = tmp_path / "m.engram"
    _store(path)
    _tamper(path, f"UPDATE edges SET weight = {weight}")
    assert any("weight" in p for p in _problems(path))


@pytest.mark.parametrize("meta", ["not json", "[1, 2]", '"a string"', '{"a": NaN}',
                                  '{"a": 1e999}', '{"a": 1'])
def test_verify_reports_metadata_that_is_not_a_json_object(tmp_path: Path, meta: str) -> None:
    path = tmp_path / "m.engram"
    _store(path)
    _tamper(path, "UPDATE occurrences SET metadata = ? WHERE seq = (SELECT min(seq) FROM "
                  "occurrences WHERE metadata IS NOT NULL)", [meta])
    assert any("metadata" in p for p in _problems(path))


def test_verify_reports_a_non_finite_expiry(tmp_path: Path) -> None:
    path = tmp_path / "m.engram"
    ids = _store(path)
    _tamper(path, "UPDATE engrams SET expires_at = 'NaN'::DOUBLE WHERE id = ?", [ids[1]])
    assert any("non-finite" in p for p in _problems(path))


@pytest.mark.parametrize("column", ["eid", '"row"'])
@pytest.mark.parametrize("value", [2_000_000_000_000, -7])
def test_open_refuses_an_absurd_eid_or_row_before_allocating(tmp_path: Path, column: str,
                                                            value: int) -> None:
    path = tmp_path / "m.engram"
    ids = _store(path)
    _tamper(path, f"UPDATE engrams SET {column} = ? WHERE id = ?", [value, ids[2]])
    with pytest.raises(CorruptStore, match="catalog"):  # was MemoryError, or a silent open
        engramdb.open(path, encoder=ENC)


@pytest.mark.parametrize("next_eid", [2**40, 3])
def test_a_next_eid_counter_that_no_store_can_have_is_caught(tmp_path: Path,
                                                             next_eid: int) -> None:
    path = tmp_path / "m.engram"
    _store(path)  # eids 0-5
    _tamper(path, "UPDATE counters SET value = ? WHERE name = 'next_eid'", [next_eid])
    try:
        mem = engramdb.open(path, encoder=ENC)
    except CorruptStore:
        return  # refused on open
    with mem:
        problems = mem.verify().problems
    assert any("next_eid" in p for p in problems), problems


def test_hot_state_refuses_eids_and_rows_past_its_bounds() -> None:
    import pyarrow as pa

    from engramdb.derived.hotstate import HOT_COLUMNS, MAX_EIDS, HotState, eid_problem

    def table(eids: list[int], rows: list[int]) -> pa.Table:
        n = len(eids)
        cols = {"eid": pa.array(eids, pa.int64()), "seg": pa.array([1] * n, pa.int32()),
                "row": pa.array(rows, pa.int64()), "kind": pa.array([1] * n, pa.int8()),
                "expires_at": pa.array([10.0] * n), "created_tick": pa.array([0] * n),
                "id": pa.array([f"id{i}" for i in range(n)]),
                "text": pa.array([b"x"] * n, pa.binary())}
        assert set(cols) == {c.strip().strip('"') for c in HOT_COLUMNS.split(",")}
        return pa.table(cols)

    assert HotState.from_arrow(table([0, 5], [0, 1]), next_eid=6, max_row=2).capacity >= 6
    for eids, rows, next_eid, max_row in (([0, 6], [0, 1], 6, 2), ([0, 1], [0, 2], 6, 2),
                                          ([-1, 1], [0, 1], 6, 2), ([0, MAX_EIDS], [0, 1], None,
                                                                    None)):
        with pytest.raises(CorruptStore):
            HotState.from_arrow(table(eids, rows), next_eid=next_eid, max_row=max_row)
    with pytest.raises(CorruptStore):
        HotState.from_arrow(table([], []), next_eid=MAX_EIDS + 1)
    assert eid_problem(0, 5, 6) is None and "next_eid" in eid_problem(0, 6, 6)
