"""The turn journal: turns written through it read back, fold and replay exactly as turns
committed straight to the catalog.

* A property test drives two stores with the same random operations, one with the journal
  (the default) and one without (``journal_max_engrams=0``): every answer agrees during the
  run, and after close the two catalogs hold the same rows, table by table.
* Replay: a handle dropped without close leaves its turns in the journal; the next open
  replays them, and a record already folded is never applied twice.
* Damage: a torn tail is cut and reported; a record that passes its checksum but not its
  checks refuses the open with CorruptStore and changes nothing.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engramdb
from engramdb.content import content_id, normalize_text
from engramdb.encoders import HashingEncoder
from engramdb.errors import CorruptStore, NotFound
from engramdb.storage.journal import JOURNAL_NAME, MAGIC

# These tests are about a store with its catalog file (its journal folded at close,
# its files damaged or counted): new stores here are made with it.
pytestmark = pytest.mark.usefixtures("catalog_from_the_start")

DIM = 32
ENC = HashingEncoder(dim=DIM)
WORDS = "oscar guinea pig paris sister carrots rain coffee piano train lisbon".split()
TABLES = {
    "engrams": "*", "occurrences": "*", "edges": "*", "segments": "*", "lex_docs": "*",
    "lex_postings": "*", "turns": "*", "labels": "*", "forgotten": "eid, tick, reason, kind",
}


def _catalog_rows(store: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    try:
        out = {t: con.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").fetchall()
               for t, cols in TABLES.items()}
        out["counters"] = con.execute(
            "SELECT * FROM counters WHERE name <> 'journal_seq' ORDER BY ALL").fetchall()
    finally:
        con.close()
    return out


def _text(k: int) -> str:
    return f"{WORDS[k % len(WORDS)]} {WORDS[(k * 7) % len(WORDS)]} note {k % 13}"


OPS = st.lists(st.one_of(
    st.tuples(st.just("integrate"), st.integers(0, 40), st.sampled_from(["user", "bot", None]),
              st.sampled_from(["s1", "s2", None]), st.booleans()),
    st.tuples(st.just("ingest"), st.integers(0, 40), st.sampled_from(["user", None]),
              st.sampled_from(["s1", None]), st.booleans()),
    st.tuples(st.just("tick"), st.integers(0, 30)),
    st.tuples(st.just("forget"), st.integers(0, 40)),
    st.tuples(st.just("reinforce"), st.integers(0, 40)),
    st.tuples(st.just("recall"), st.integers(0, 40), st.booleans()),
    st.tuples(st.just("reopen"),),
), min_size=1, max_size=40)


def _apply(mem: engramdb.Store, op: tuple) -> object:
    kind = op[0]
    if kind == "integrate":
        _, k, role, session, meta = op
        turn = mem.integrate(_text(k), role=role, session=session, top_k=3,
                             metadata={"date": f"2024-01-{1 + k % 28:02d}"} if meta else None)
        return (turn.id, turn.is_new, [(r.id, round(r.score, 9), r.via) for r in turn.recalled],
                [(o.role, o.session, o.tick) for r in turn.recalled for o in r.occurrences])
    if kind == "ingest":
        _, k, role, session, pin = op
        return mem.ingest(_text(k), role=role, session=session, pin=pin)
    if kind == "tick":
        return mem.tick(op[1])
    if kind in ("forget", "reinforce"):
        ident = content_id(mem.fingerprint, normalize_text(_text(op[1])))
        try:
            return mem.forget(ident) if kind == "forget" else mem.reinforce(ident)
        except NotFound:
            return "not found"
    if kind == "recall":
        _, k, filtered = op
        hits = mem.recall(_text(k), top_k=4, where={"session": "s1"} if filtered else None)
        return [(r.id, round(r.score, 9), r.via, len(r.occurrences)) for r in hits]
    raise AssertionError(op)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_journal_agrees_with_direct_commits(tmp_path_factory: pytest.TempPathFactory,
                                            ops: list[tuple]) -> None:
    root = tmp_path_factory.mktemp("journal")
    journaled = {"short_term_capacity": 6}  # the capacity rule runs in the turn path too
    direct = {"short_term_capacity": 6, "journal_max_engrams": 0}
    paths = {"j": root / "j", "d": root / "d"}
    confs = {"j": journaled, "d": direct}
    mems = {n: engramdb.open(paths[n], encoder=ENC, settings=confs[n]) for n in paths}
    try:
        for op in ops:
            if op[0] == "reopen":
                for n in mems:
                    mems[n].close()
                    mems[n] = engramdb.open(paths[n], encoder=ENC)
                continue
            assert _apply(mems["j"], op) == _apply(mems["d"], op), op
            assert mems["j"].count == mems["d"].count
    finally:
        for mem in mems.values():
            mem.close()
    assert not (paths["j"] / JOURNAL_NAME).exists()  # close folded it and removed the file
    assert _catalog_rows(paths["j"]) == _catalog_rows(paths["d"])
    with engramdb.open(paths["j"], encoder=ENC) as mem:
        assert mem.verify().ok


def _dropped(path: Path, texts: list[str], **conf: object) -> list[str]:
    """Integrate ``texts`` and drop the handle without close: the turns stay journaled."""
    mem = engramdb.open(path, encoder=ENC, settings=conf or None)
    ids = [mem.integrate(t, session="s").id for t in texts]
    del mem
    gc.collect()
    return ids


def test_dropped_handle_turns_are_replayed(tmp_path: Path) -> None:
    path = tmp_path / "m"
    texts = [_text(k) for k in range(12)]
    ids = _dropped(path, texts)
    assert (path / JOURNAL_NAME).stat().st_size > 0
    with engramdb.open(path, encoder=ENC) as mem:
        assert any("replayed 12 turns" in r for r in mem.recovered)
        assert [mem.get(i).text for i in ids] == texts
        assert mem.verify().ok
        assert len(mem.links(100)) > 0
    reference = tmp_path / "ref"
    with engramdb.open(reference, encoder=ENC, settings={"journal_max_engrams": 0}) as mem:
        for t in texts:
            mem.integrate(t, session="s")
    assert _catalog_rows(path) == _catalog_rows(reference)


def test_folded_records_are_not_applied_twice(tmp_path: Path, monkeypatch) -> None:
    """A crash after the fold's commit but before the journal is emptied."""
    path = tmp_path / "m"
    texts = [_text(k) for k in range(5)]
    from engramdb.storage.journal import TurnJournal

    monkeypatch.setattr(TurnJournal, "reset", lambda self: None)
    monkeypatch.setattr(TurnJournal, "close", lambda self: None)
    with engramdb.open(path, encoder=ENC) as mem:
        for t in texts:
            mem.integrate(t)
    monkeypatch.undo()
    assert (path / JOURNAL_NAME).stat().st_size > 0
    before = _catalog_rows(path)
    with engramdb.open(path, encoder=ENC) as mem:
        assert not any("replayed" in r for r in mem.recovered)
        assert mem.verify().ok
    assert _catalog_rows(path) == before


def test_fold_threshold_empties_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "m"
    with engramdb.open(path, encoder=ENC, settings={"journal_fold_turns": 3}) as mem:
        for k in range(7):
            mem.integrate(_text(k))
            folded = (k + 1) % 3 == 0
            assert ((path / JOURNAL_NAME).stat().st_size == 0) == folded, k
        assert mem.stats()["count"] == 7


def test_torn_tail_is_cut_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "m"
    ids = _dropped(path, [_text(k) for k in range(4)])
    with open(path / JOURNAL_NAME, "ab") as f:
        f.write(MAGIC + struct.pack("<II", 500, 0) + b"half a record")
    with engramdb.open(path, encoder=ENC) as mem:
        assert any("torn" in r for r in mem.recovered)
        assert all(i in mem for i in ids)
        assert mem.verify().ok


def _forged(payload: bytes) -> bytes:
    return MAGIC + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


@pytest.mark.parametrize("head", [
    {"v": 1, "q": 2, "t": [""], "r": [None], "s": [None], "m": [None], "p": [False],
     "k": 0, "n": 1, "h": None, "i": []},
    {"v": 1, "q": 2, "t": ["x"], "r": [None], "s": [None], "m": ["[[[[" * 50], "p": [False],
     "k": 0, "n": 1, "h": None, "i": [0]},
    {"v": 1, "q": 2, "t": ["x"], "r": [None], "s": [None], "m": [None], "p": [False],
     "k": 9, "n": 1, "h": None, "i": [0]},
    {"v": 1, "q": 2, "t": ["x"], "r": [None], "s": [None], "m": [None], "p": [False],
     "k": 0, "n": 1, "h": [10**9], "i": [0]},
    {"v": 1, "q": 7, "t": ["x"], "r": [None], "s": [None], "m": [None], "p": [False],
     "k": 0, "n": 1, "h": None, "i": [0]},
    "not a dict",
])
def test_forged_record_refuses_open_and_changes_nothing(tmp_path: Path, head: object) -> None:
    path = tmp_path / "m"
    with engramdb.open(path, encoder=ENC) as mem:
        mem.ingest("kept")
    body = json.dumps(head).encode()
    vec = b"\x00\x00\x80\x3f" * DIM
    (path / JOURNAL_NAME).write_bytes(_forged(struct.pack("<I", len(body)) + body + vec))
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    with pytest.raises(CorruptStore):
        engramdb.open(path, encoder=ENC)
    after = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "LOCK"} == \
        {k: v for k, v in before.items() if k != "LOCK"}


def test_reads_of_the_catalog_see_journaled_turns(tmp_path: Path) -> None:
    path = tmp_path / "m"
    with engramdb.open(path, encoder=ENC) as mem:
        t = mem.integrate("my sister lives in lisbon", session="a", metadata={"k": 1})
        assert mem.get(t.id).occurrences[0].metadata == {"k": 1}
        u = mem.integrate("the train to paris", session="b")
        hits = mem.recall("train paris", where={"session": "b"})
        assert [h.id for h in hits] == [u.id]
        with mem.snapshot() as snap:
            assert snap.query("SELECT count(*) FROM occurrences")[0][0] == 2


def test_fast_durability_power_cut_loses_only_unsynced_turns(tmp_path: Path) -> None:
    """"fast": turns are appended without an fsync; a sync point makes them durable. A power
    cut (the journal's unsynced appends never reached the disk) loses only later turns."""
    path = tmp_path / "f"
    mem = engramdb.open(path, encoder=ENC, settings={"durability": "fast",
                                                     "sync_interval": 3600.0})
    try:
        synced = [mem.integrate(_text(k)).id for k in range(5)]
        mem.sync()
        kept = (path / JOURNAL_NAME).stat().st_size if (path / JOURNAL_NAME).exists() else 0
        later = [mem.integrate(f"later turn {k} about rain").id for k in range(4)]
        snap = tmp_path / "snap"
        shutil.copytree(path, snap, ignore=shutil.ignore_patterns("LOCK"))
    finally:
        mem.close()
    os.truncate(snap / JOURNAL_NAME, kept)  # what a power cut leaves of unsynced appends
    with engramdb.open(snap, encoder=ENC) as again:
        assert again.verify().ok
        assert all(i in again for i in synced)
        assert not any(i in again for i in later)
    with engramdb.open(path, encoder=ENC) as again:  # the clean close kept everything
        assert all(i in again for i in synced + later)


def test_replay_of_more_turns_than_the_fold_threshold(tmp_path: Path) -> None:
    """Replay folds once, at the end: a fold mid-replay would empty the journal while records
    not yet applied are only in memory."""
    path = tmp_path / "m"
    texts = [_text(k) for k in range(10)]
    ids = _dropped(path, texts)
    with engramdb.open(path, encoder=ENC, settings={"journal_fold_turns": 3}) as mem:
        assert any("replayed 10 turns" in r for r in mem.recovered)
        assert [mem.get(i).text for i in ids] == texts
        assert mem.verify().ok


def test_gc_rewrite_migrates_a_large_block_catalog(tmp_path: Path) -> None:
    """A store made before 16 KiB blocks (256 KiB ones) migrates with gc(rewrite=True)."""
    from engramdb.engine.collect import rewrite_catalog
    from engramdb.storage.catalog import block_size

    path = tmp_path / "old"
    with engramdb.open(path, encoder=ENC) as mem:
        ids = [mem.integrate(_text(k), session="s").id for k in range(20)]
    con = duckdb.connect(":memory:")
    con.execute(f"ATTACH '{path / 'catalog.duckdb'}' AS c")
    con.execute("USE c")
    rewrite_catalog(con, path / "catalog.duckdb", 262144)  # as an older engramdb made it
    con.close()
    big = (path / "catalog.duckdb").stat().st_size
    with engramdb.open(path, encoder=ENC) as mem:
        assert block_size(mem.catalog.con) == 262144
        report = mem.gc(rewrite=True)
        assert report["catalog_rewritten"]
        assert block_size(mem.catalog.con) == 16384
        assert mem.verify().ok and all(i in mem for i in ids)
    assert (path / "catalog.duckdb").stat().st_size < big / 4


def test_damage_in_the_middle_of_the_journal_refuses_the_open(tmp_path: Path) -> None:
    """A crash tears only the last append; a bad record followed by good ones is damage,
    and cutting there would drop acknowledged turns without a word."""
    path = tmp_path / "m"
    _dropped(path, [_text(k) for k in range(5)])
    data = bytearray((path / JOURNAL_NAME).read_bytes())
    data[20] ^= 0xFF  # inside the first record's payload
    (path / JOURNAL_NAME).write_bytes(bytes(data))
    with pytest.raises(CorruptStore, match="damaged"):
        engramdb.open(path, encoder=ENC)


def test_replay_uses_the_settings_the_turns_were_written_with(tmp_path: Path) -> None:
    path, ref = tmp_path / "m", tmp_path / "ref"
    texts = [_text(k) for k in range(6)]
    _dropped(path, texts)
    with engramdb.open(path, encoder=ENC, settings={"short_term_lifespan": 5000.0,
                                                    "link_gain": 0.9}):
        pass
    with engramdb.open(ref, encoder=ENC) as mem:
        for t in texts:
            mem.integrate(t, session="s")
    with engramdb.open(ref, encoder=ENC, settings={"short_term_lifespan": 5000.0,
                                                   "link_gain": 0.9}):
        pass
    assert _catalog_rows(path) == _catalog_rows(ref)


def test_a_store_gains_its_index_when_it_outgrows_exact_scans(tmp_path: Path) -> None:
    """No index files while every search is an exact scan; the write that crosses
    ``exact_threshold`` starts one on the background indexer, and answers stay exact."""
    import numpy as np

    dim, n = 384, 5_000  # exact_threshold at 384-d is 5,000
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n + 300, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    path = tmp_path / "grow"
    with engramdb.open(path, dim=dim) as mem:
        ids = [r.id for r in mem.ingest_many([f"e{i}" for i in range(n)], vectors=x[:n])]
        assert mem.index is None
    assert not list((path / "index").glob("*")) if (path / "index").exists() else True
    with engramdb.open(path) as mem:
        assert mem.index is None
        ids += [r.id for r in mem.ingest_many([f"e{i}" for i in range(n, n + 300)],
                                              vectors=x[n:])]
        assert mem.index is not None
        q = x[7] + 0.1 * x[9]
        q /= np.linalg.norm(q)
        want = [ids[i] for i in np.argsort(-(x @ q), kind="stable")[:10]]
        got = [h.id for h in mem.recall(vector=q, top_k=10, associative=False)]
        # Exact while the backlog is scanned; the graph (approximate) may take over meanwhile.
        assert got[0] == want[0] and len(set(got) & set(want)) >= 8
        mem.drain_index()
    assert (path / "index" / "index.json").exists()
