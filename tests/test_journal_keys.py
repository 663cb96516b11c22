"""Keyed replacements and removals through the turn journal: the same store as the catalog.

An ``upsert`` of a stored key (same text or a new one) and ``forget(keys=)`` are journal
writes now (one record naming the keys they remove, folded later, replayed after a crash).

* A property test drives two stores with the same random keyed operations mixed with turns,
  one with the journal (the default) and one without (``journal_max_engrams=0``, every write a
  catalog commit): every answer agrees during the run (results, ``get(key=)``, ``engrams()``,
  recall hits with their occurrences and scores), handles are dropped without ``close`` (the
  journal replays) or reopened, and after close the two catalogs hold the same rows, table by
  table (occurrences, context rows, forgetting log, links...).
* The writes take the journal (no catalog commit, no fold), and catalog commits that only
  erase engrams or change counters (``forget``, ``tick``) keep the turn path's mirror.
* The record: version 1 without removals (an engramdb before removals reads it), version 2
  with them; a forged removal refuses the open; a newer version raises FormatTooNew.
"""

from __future__ import annotations

import gc
import json
import struct
import zlib
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engramdb
from engramdb.engine import mirror as mirror_module
from engramdb.errors import CorruptStore, EngramError, FormatTooNew
from engramdb.storage.journal import JOURNAL_NAME, MAGIC
from tests.test_journal import ENC, _catalog_rows

KEYS = [f"k{i}" for i in range(6)]
TEXTS = ["my cat is called oscar", "i live in lisbon by the river", "coffee with no sugar",
         "the piano lesson is on friday", "my sister plays the guitar"]
TURNS = ["what is my cat called", "where do i live now", "tell me about the piano",
         "how do i take my coffee", "who plays the guitar"]
ROLES = st.sampled_from(["user", "bot", None])
SESSIONS = st.sampled_from(["s1", "s2", None])
KEY = st.sampled_from(KEYS)
TEXT = st.integers(0, len(TEXTS) - 1)

_KEYED = [
    st.tuples(st.just("ingest_key"), KEY, TEXT, ROLES, SESSIONS),
    st.tuples(st.just("upsert"), KEY, TEXT, ROLES, SESSIONS, st.integers(0, 3)),
    st.tuples(st.just("upsert_many"), st.lists(st.tuples(KEY, TEXT), min_size=1, max_size=4,
                                               unique_by=lambda x: x[0])),
    st.tuples(st.just("forget_keys"), st.lists(KEY, min_size=1, max_size=3, unique=True)),
    st.tuples(st.just("recall"), st.integers(0, len(TURNS) - 1)),
]
# The keyed writes and recall (which reads occurrences without folding) come twice as often
# as the rest; get_key and engrams fold the journal, the others commit to the catalog.
OPS = st.lists(st.one_of(
    *_KEYED, *_KEYED,
    st.tuples(st.just("integrate"), st.integers(0, len(TURNS) - 1), ROLES, SESSIONS),
    st.tuples(st.just("ingest"), TEXT, SESSIONS),
    st.tuples(st.just("tick"), st.integers(1, 20)),
    st.tuples(st.just("forget_id"), TEXT),
    st.tuples(st.just("get_key"), KEY),
    st.tuples(st.just("engrams"),),
    st.tuples(st.just("drop"),),
    st.tuples(st.just("reopen"),),
), min_size=1, max_size=30)


def _occurrences(occs: list) -> list[tuple]:
    return [(o.key, o.role, o.session, o.tick, o.metadata) for o in occs]


def _call(mem: engramdb.Store, op: tuple) -> object:
    kind = op[0]
    if kind == "ingest_key":
        _, key, t, role, session = op
        return mem.ingest(TEXTS[t], key=key, role=role, session=session, metadata={"k": key})
    if kind == "upsert":
        _, key, t, role, session, n = op
        return mem.upsert(key, TEXTS[t], role=role, session=session, metadata={"n": n})
    if kind == "upsert_many":
        pairs = op[1]
        return mem.upsert_many([k for k, _ in pairs], [TEXTS[t] for _, t in pairs],
                               sessions=["s1"] * len(pairs))
    if kind == "forget_keys":
        return mem.forget(keys=op[1])
    if kind == "integrate":
        _, t, role, session = op
        turn = mem.integrate(TURNS[t], role=role, session=session, top_k=3)
        return (turn.id, turn.is_new, [(r.id, round(r.score, 9), r.via,
                                        _occurrences(r.occurrences)) for r in turn.recalled])
    if kind == "ingest":
        return mem.ingest(TEXTS[op[1]], session=op[2])
    if kind == "tick":
        return mem.tick(op[1])
    if kind == "forget_id":
        return mem.forget(mem.ingest(TEXTS[op[1]]).id)  # said again, then erased
    if kind == "recall":
        return [(r.id, round(r.score, 9), r.via, _occurrences(r.occurrences))
                for r in mem.recall(TURNS[op[1]], top_k=4)]
    if kind == "get_key":
        e = mem.get(key=op[1])
        return e.to_dict()
    if kind == "engrams":
        return [e.to_dict() for e in mem.engrams()]
    raise AssertionError(op)


def _apply(mem: engramdb.Store, op: tuple) -> object:
    """The operation's answer, or the type of error it raised (both stores must agree)."""
    try:
        return _call(mem, op)
    except EngramError as exc:
        return type(exc).__name__


def _agree(root: Path, ops: list[tuple], big: bool) -> None:
    """Run ``ops`` on a journaled store, on one that commits every write to the catalog,
    and on one made without a catalog file (its turns in the journal alone until a write or
    read needs the catalog): every answer agrees, and after close (and the first fold of
    the last one) so does every catalog table. ``big``: the mirror keeps no occurrences in
    memory (a store over OCCURRENCES_MAX), so recall reads them from the catalog and must
    leave out those a pending turn removed."""
    paths = {"j": root / "j", "d": root / "d", "o": root / "o"}
    confs = {"j": {"short_term_capacity": 8, "journal_only_turns": 0},
             "d": {"short_term_capacity": 8, "journal_max_engrams": 0,
                   "journal_only_turns": 0},
             "o": {"short_term_capacity": 8}}
    with mock.patch.object(mirror_module, "OCCURRENCES_MAX", 0 if big else 50_000):
        mems = {n: engramdb.open(paths[n], encoder=ENC, settings=confs[n]) for n in paths}
        try:
            for op in ops:
                if op[0] in ("drop", "reopen"):
                    for n in mems:
                        if op[0] == "drop" and n != "d":  # no close: the journal replays
                            mems[n] = None  # type: ignore[assignment]
                            gc.collect()
                        else:
                            mems[n].close()
                        mems[n] = engramdb.open(paths[n], encoder=ENC)
                    continue
                answer = _apply(mems["d"], op)
                assert _apply(mems["j"], op) == answer, op
                assert _apply(mems["o"], op) == answer, op
                assert mems["j"].count == mems["d"].count == mems["o"].count
        finally:
            for mem in mems.values():
                mem.close()
    assert not (paths["j"] / JOURNAL_NAME).exists()
    with engramdb.open(paths["o"], encoder=ENC) as mem, mem.snapshot():
        pass  # a read of the catalog: the first fold of a store still without one
    rows = _catalog_rows(paths["d"])
    assert _catalog_rows(paths["j"]) == rows
    assert _catalog_rows(paths["o"]) == rows
    with engramdb.open(paths["j"], encoder=ENC) as mem:
        assert mem.verify().ok


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, big=st.booleans())
def test_journaled_keyed_writes_agree_with_catalog_commits(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple], big: bool) -> None:
    _agree(tmp_path_factory.mktemp("jkeys"), ops, big)


_A = ("ingest_key", "k0", 0, "user", "s1")
_SAME = ("upsert", "k0", 0, "bot", "s2", 1)
_SCENARIOS = {
    # A pending upsert replaces a pending occurrence, then one the catalog holds (recall
    # reads the mirror's copy, loaded before or after the removal).
    "pending": [_A, _SAME, ("recall", 0)],
    "folded": [_A, ("engrams",), _SAME, ("recall", 0), _SAME, ("recall", 0)],
    "cached": [_A, ("engrams",), ("recall", 0), _SAME, ("recall", 0)],
    # A text under two keys loses its first occurrence (its context row goes; the upsert's
    # occurrence of another text does not give it one), then its last (erased).
    "shared": [_A, ("ingest_key", "k1", 0, "bot", "s2"), ("engrams",),
               ("upsert", "k0", 1, None, "s1", 0), ("recall", 0), ("get_key", "k1"),
               ("forget_keys", ["k1"]), ("recall", 0), ("ingest_key", "k2", 0, None, None)],
    # New texts erase the old engrams (pending and folded), whose texts come back as new
    # engrams; a dropped handle replays it all.
    "erase": [_A, ("upsert", "k0", 1, "user", "s1", 0), ("ingest", 0, "s1"),
              ("forget_keys", ["k0"]), ("drop",), ("ingest_key", "k0", 1, None, None),
              ("integrate", 1, "user", "s1"), ("upsert_many", [("k0", 2), ("k3", 1)]),
              ("drop",), ("recall", 1), ("engrams",)],
    # After a reopen the first keyed write finds its key in the catalog (the mirror, loaded
    # by the write, reads its keys later: without the one removed meanwhile).
    "reopened": [_A, ("reopen",), ("forget_keys", ["k0"]), ("ingest_key", "k0", 1, None, None),
                 ("get_key", "k0")],
    # forget by id (a catalog commit the mirror follows) takes the key with the engram.
    "forgotten": [_A, ("integrate", 0, "user", "s1"), ("forget_id", 0),
                  ("ingest_key", "k0", 0, None, None), ("integrate", 0, "user", "s1"),
                  ("recall", 0)],
    # Two keys swap their texts in one call (each engram kept, re-homed).
    "swap": [_A, ("ingest_key", "k1", 1, "bot", "s2"), ("engrams",),
             ("upsert_many", [("k0", 1), ("k1", 0)]), ("recall", 0), ("drop",),
             ("engrams",)],
}


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("name", sorted(_SCENARIOS))
def test_keyed_scenarios_agree_with_catalog_commits(tmp_path: Path, name: str,
                                                    big: bool) -> None:
    _agree(tmp_path, _SCENARIOS[name], big)


def _journal_records(path: Path) -> list[dict]:
    """The JSON heads of the records in a store's journal."""
    raw = (path / JOURNAL_NAME).read_bytes() if (path / JOURNAL_NAME).exists() else b""
    heads, pos = [], 0
    while pos < len(raw):
        (length,) = struct.unpack_from("<I", raw, pos + 2)
        payload = raw[pos + 10:pos + 10 + length]
        (n,) = struct.unpack_from("<I", payload, 0)
        heads.append(json.loads(payload[4:4 + n]))
        pos += 10 + length
    return heads


@pytest.mark.usefixtures("catalog_from_the_start")
def test_replacing_and_removing_keys_take_the_journal(tmp_path: Path) -> None:
    """An upsert of a stored key (same or new text) and forget(keys=) append one record each
    and fold nothing; a dropped handle replays them; the record names the removed keys."""
    path = tmp_path / "m"
    with engramdb.open(path, encoder=ENC) as mem:
        mem.ingest_many([TEXTS[0], TEXTS[1], TEXTS[2]], keys=["a", "b", "c"],
                        sessions=["s1", "s1", "s2"], roles=["user", "bot", "user"])
    mem = engramdb.open(path, encoder=ENC)
    generation = mem._committer.counters.generation
    mem.upsert("a", TEXTS[0], role="bot", metadata={"v": 2})  # same text
    mem.upsert("b", TEXTS[3])  # new text: the old engram is erased
    assert mem.forget(keys=["c"]) == 1
    mem.upsert("d", TEXTS[4])  # a new key removes nothing: version 1, as before
    heads = _journal_records(path)
    assert [(h["v"], h.get("x"), len(h["t"])) for h in heads] == [
        (2, ["a"], 1), (2, ["b"], 1), (2, ["c"], 0), (1, None, 1)]
    assert mem._committer.counters.generation == generation + 4
    assert mem._committer.pending  # nothing folded: the catalog has not changed yet
    del mem
    gc.collect()
    with engramdb.open(path, encoder=ENC) as mem:
        assert any("replayed 4 turns" in r for r in mem.recovered)
        a = mem.get(key="a")
        assert (a.text, a.refs, [(o.key, o.role, o.metadata) for o in a.occurrences]) == (
            TEXTS[0], 1, [("a", "bot", {"v": 2})])
        assert mem.get(key="b").text == TEXTS[3]
        assert sorted(e.text for e in mem.engrams()) == sorted([TEXTS[0], TEXTS[3], TEXTS[4]])
        assert [d["reason"] for d in mem.forgetting_log()] == ["forgotten", "forgotten"]
        assert mem.verify().ok


def test_forget_and_tick_keep_the_mirror(tmp_path: Path) -> None:
    """A catalog commit that only erases engrams (forget by id) or moves the clock keeps the
    turn path's mirror (the next turn does not reload it); it forgets what was erased."""
    with engramdb.open(tmp_path / "m", encoder=ENC) as mem:
        gone = mem.ingest(TEXTS[0], key="a").id
        mem.ingest(TEXTS[1], key="b")
        mem.integrate(TURNS[0])  # links the turn to what it recalled
        mirror = mem._parts.mirror
        gone_eid = mirror.eid_of[gone]
        assert mirror.keys_loaded and any(gone_eid in pair for pair in mirror.edges)
        mem.tick(3)
        mem.forget(gone)
        assert mem._parts.mirror is mirror
        assert gone not in mirror.eid_of and "a" not in mirror.keys and "b" in mirror.keys
        assert not any(gone_eid in pair for pair in mirror.edges)
        again = mem.ingest(TEXTS[0], key="a")  # the text and the key are free again
        assert again.is_new and mem.get(key="a").text == TEXTS[0]
        assert mem._parts.mirror is mirror
        mem.reinforce(again.id)  # a commit of its own rows: the mirror is dropped
        assert mem._parts.mirror is None
        mem.upsert("a", TEXTS[2])
        assert mem.verify().ok


_BAD_REMOVALS = [
    ({"x": ["zzz"]}, CorruptStore),  # an upsert removing a key it does not store again
    ({"x": [""]}, CorruptStore),
    ({"x": ["a", "a"]}, CorruptStore),
    ({"v": 1}, CorruptStore),  # version 1 has no removals
    ({"t": [], "r": [], "s": [], "m": [], "p": [], "y": None, "n": 5}, CorruptStore),
    ({"v": 3}, FormatTooNew),
]


@pytest.mark.usefixtures("catalog_from_the_start")
@pytest.mark.parametrize(("patch", "error"), _BAD_REMOVALS)
def test_a_forged_removal_refuses_the_open(tmp_path: Path, patch: dict,
                                           error: type[Exception]) -> None:
    """A removal record is checked like a caller's input: a bad one refuses the open and
    changes nothing; a record of a newer version raises FormatTooNew."""
    path = tmp_path / "m"
    with engramdb.open(path, encoder=ENC) as mem:
        mem.ingest(TEXTS[0], key="a")
    mem = engramdb.open(path, encoder=ENC)
    mem.upsert("a", TEXTS[0], metadata={"v": 2})  # the same text: no vector to append
    raw = (path / JOURNAL_NAME).read_bytes()
    del mem
    gc.collect()
    (length,) = struct.unpack_from("<I", raw, 2)
    payload = raw[10:10 + length]
    (n,) = struct.unpack_from("<I", payload, 0)
    head = {**json.loads(payload[4:4 + n]), **patch}
    assert head["x"] is not None
    body = json.dumps(head).encode()
    payload = struct.pack("<I", len(body)) + body + payload[4 + n:]
    (path / JOURNAL_NAME).write_bytes(
        MAGIC + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != "LOCK"}
    with pytest.raises(error):
        engramdb.open(path, encoder=ENC)
    after = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != "LOCK"}
    assert after == before


@pytest.mark.usefixtures("catalog_from_the_start")
def test_a_removal_of_a_key_the_catalog_lost_replays_as_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """In "fast" durability a power cut can lose the catalog commit that stored a key (a bulk
    write) but keep the journaled forget(keys=) of it: replay finds nothing to remove, says
    so in the log, and the store opens whole."""
    path = tmp_path / "m"
    with engramdb.open(path, encoder=ENC) as mem:
        mem.ingest(TEXTS[0])
    before = (path / "catalog.duckdb").read_bytes()
    mem = engramdb.open(path, encoder=ENC)
    bulk = [f"bulk note {i}" for i in range(70)]  # over 64 texts: a catalog commit
    mem.ingest_many(bulk, keys=[f"b{i}" for i in range(70)])
    mem.forget(keys=["b3"])  # a turn: journaled
    del mem
    gc.collect()
    (path / "catalog.duckdb.wal").unlink(missing_ok=True)
    (path / "catalog.duckdb").write_bytes(before)  # the bulk commit never reached the disk
    mem = engramdb.open(path, encoder=ENC)
    assert any("replayed 1 turns" in r for r in mem.recovered)
    assert "removes keys ['b3'] the store does not hold" in caplog.text
    assert [e.text for e in mem.engrams()] == [TEXTS[0]]
    assert mem.verify().ok
    # The record that changed nothing still moved the journal's numbering: the fold after
    # the replay committed it, so a turn of the same handle replays after a crash too.
    mem.ingest(TEXTS[1], key="late")
    del mem
    gc.collect()
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.get(key="late").text == TEXTS[1]
        assert mem.verify().ok


def test_forgetting_no_keys_writes_nothing(tmp_path: Path) -> None:
    """forget(keys=[]) removes nothing and appends no record (a record removing nothing
    would be refused by the replay that reads it)."""
    path = tmp_path / "m"
    mem = engramdb.open(path, encoder=ENC)
    mem.ingest(TEXTS[0], key="a")
    size = (path / JOURNAL_NAME).stat().st_size
    assert mem.forget(keys=[]) == 0
    assert (path / JOURNAL_NAME).stat().st_size == size
    del mem  # dropped: the journal replays
    gc.collect()
    with engramdb.open(path, encoder=ENC) as mem:
        assert mem.get(key="a").text == TEXTS[0]
        assert mem.verify().ok


@pytest.mark.parametrize("big", [False, True])
def test_get_reads_unfolded_turns_without_folding(tmp_path: Path, big: bool) -> None:
    """``get`` and ``get_keys`` after journaled writes answer from memory (no fold) exactly
    what they answer once the turns are folded: fields, lifespan and every occurrence."""
    limit = 0 if big else mirror_module.OCCURRENCES_MAX
    with mock.patch.object(mirror_module, "OCCURRENCES_MAX", limit), \
            engramdb.open(tmp_path / "m", encoder=ENC) as mem:
        ids = [mem.ingest(t, key=f"k{i}", role="user", session="s1",
                          metadata={"n": i}).id for i, t in enumerate(TEXTS)]
        mem._fold()  # noqa: SLF001 - start from a folded catalog
        mem.ingest(TEXTS[0], key="again", role="bot", session="s2")
        mem.upsert("k1", TEXTS[1], metadata={"n": "new"})  # same text: occurrence replaced
        mem.upsert("k2", "a text never said before")
        mem.forget(keys=["k3"])
        mem.integrate(TURNS[0], top_k=3)  # rewards what it recalls
        mirror = mem._parts.mirror  # noqa: SLF001
        assert mirror is not None and mirror.pending
        folds = mirror.folds
        live = [i for i in ids if i in mem]
        before = {i: mem.get(i).to_dict() for i in live}
        keyed = {k: e.to_dict() for k, e in mem.get_keys(["k0", "k1", "k2", "k3", "again"])
                 .items()}
        listed = [[e.to_dict() for e in mem.engrams(**page)]
                  for page in ({}, {"order": "-seq", "limit": 2, "offset": 1})]
        assert mirror.folds == folds and mirror.pending  # nothing was folded
        mem._fold()  # noqa: SLF001
        assert mirror.folds > folds or mem._parts.mirror is not mirror  # noqa: SLF001
        assert {i: mem.get(i).to_dict() for i in live} == before
        assert {k: e.to_dict() for k, e in mem.get_keys(["k0", "k1", "k2", "k3", "again"])
                .items()} == keyed
        assert [[e.to_dict() for e in mem.engrams(**page)]
                for page in ({}, {"order": "-seq", "limit": 2, "offset": 1})] == listed
        assert "k3" not in keyed and keyed["k1"]["occurrences"][0]["metadata"] == {"n": "new"}
        assert len(keyed["k0"]["occurrences"]) == 2
