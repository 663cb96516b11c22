"""engramdb.reembed: a store rebuilt under a new encoder keeps everything but vectors and ids.

Two HashingEncoders of different dims and seeds stand for the old and the new model (no
download). Checked field by field: every engram row (text, kind, lifespan, pin, recall
counts), every occurrence (order, role, session, tick, metadata, key), every link, the
forgetting log, the counters, the settings and a Pool's user; the id map (returned and
written); turns left in the journal; vectors and recall after; the CLI command; bad input;
the fallback switch and its recovery; leftovers of killed runs. The SIGKILL campaign is
tests/test_crash_reembed.py.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engramdb
from engramdb.content import check_vectors, content_id
from engramdb.encoders import HashingEncoder
from engramdb.errors import (
    InvalidInput,
    ModelMismatch,
    NotAStore,
    ReadOnlyStore,
    StoreLocked,
)
from engramdb.reembed import ID_MAP_NAME, load_id_map, reembed, settle
from engramdb.storage.locking import StoreLock
from tests.cli_support import run
from tests.conftest import python_env

# The module (for monkeypatching its steps), whatever the package's ``reembed`` name is bound to.
rb = importlib.import_module("engramdb.reembed")

OLD = HashingEncoder(dim=32)
NEW = HashingEncoder(dim=48, seed=7)
SETTINGS = {"short_term_lifespan": 60.0, "link_gain": 0.3, "recall_reward": 12.0}
TURNS = [
    ("I adopted a guinea pig named Oscar.", "user", "s1", {"date": "2024-03-02"}),
    ("Oscar likes carrots and hay.", "user", "s1", None),
    ("My sister lives in Lisbon.", "user", "s2", {"n": 1.5, "tags": ["family", "é"]}),
    ("Thanks!", "assistant", "s1", None),
    ("Thanks!", "user", "s2", None),  # one engram, two occurrences
    ("The meeting moved to Thursday.", "user", "s3", None),
]


def _rich_store(path: Path, **open_kw: Any) -> None:
    """A store with repeats, keys (an upsert among them), a pin, a forgotten engram
    collected by gc, an expired one left uncollected, integrate turns (links, recalls,
    earned lifespan), reinforcement and a moved clock."""
    with engramdb.open(path, encoder=OLD, settings=SETTINGS, **open_kw) as mem:
        res = mem.ingest_many([t for t, *_ in TURNS], roles=[r for _, r, _, _ in TURNS],
                              sessions=[s for *_, s, _ in TURNS],
                              metadatas=[m for *_, m in TURNS])
        mem.ingest("I live in Lyon.", key="pref:city", metadata={"source": "onboarding"})
        mem.upsert("pref:city", "I moved to Nantes.", role="user", metadata={"v": 2}, pin=True)
        mem.ingest_many(["Doc one about trains.", "Doc two about rain."],
                        keys=["doc:1", "doc:2"], sessions=["docs", "docs"], pins=[True, True])
        mem.ingest("Remember: my passport is in the blue folder.", pin=True)
        gone = mem.ingest("A secret I want erased.")
        mem.forget(gone.id)
        mem.ingest("A passing remark about the weather.")
        for q in ("What is my guinea pig called?", "Where does my sister live?",
                  "What does Oscar eat?"):
            mem.integrate(q, top_k=2, session="s4", metadata={"date": "2024-04-01"})
        mem.reinforce([res[0].id, res[2].id], 40.0)  # promoted to long-term
        mem.tick(70)  # the remark and the other unused short-term engrams expire
        mem.gc()  # collects the forgotten and the expired: log entries without rows
        mem.ingest("Another remark, soon dead.")
        mem.forget(mem.ingest("Forgotten after the gc.").id)  # logged, not yet collected
        mem.tick(30)
        mem.integrate("Is Oscar still around?", top_k=2, session="s5")
        mem.tick(35)  # "soon dead" expires; not collected: its row stays


def _catalog(path: Path) -> dict[str, Any]:
    """Everything the catalog and manifest hold, by content id (no eids or pointers)."""
    with engramdb.open(path) as mem, mem.snapshot() as snap:
        engrams = {r["id"]: r for r in snap.query_arrow(
            "SELECT * EXCLUDE (eid, seg, row, vec_sum) FROM engrams").to_pylist()}
        counters = snap.counters()
        turn = counters.pop("last_turn", None)
        return {
            "engrams": engrams,
            "occurrences": snap.query(
                "SELECT e.id, o.seq, o.role, o.session, o.tick, o.metadata, o.key "
                "FROM occurrences o JOIN engrams e USING (eid) ORDER BY o.seq"),
            "links": {frozenset((a, b)): (w, t) for a, b, w, t in snap.query(
                "SELECT a.id, b.id, x.weight, x.tick FROM edges x "
                "JOIN engrams a ON a.eid = x.a JOIN engrams b ON b.eid = x.b")},
            "log": snap.query(
                "SELECT f.id, f.tick, f.reason, f.kind, f.collected, "
                "EXISTS (SELECT 1 FROM engrams e WHERE e.eid = f.eid) FROM forgotten f "
                "ORDER BY f.tick, f.reason, f.id"),
            "counters": counters,
            "last_turn": snap.query("SELECT id FROM engrams WHERE eid = ?", [turn])[0][0]
            if turn else None,
            "manifest": mem.manifest,
            "live": {h.id: h.text for h in mem.engrams(limit=1000)},
        }


def _assert_carried_over(a: dict[str, Any], b: dict[str, Any], ids: dict[str, str]) -> None:
    """``b`` (after) holds ``a`` (before) with every id mapped through ``ids``."""
    assert set(ids) == set(a["engrams"]) and set(ids.values()) == set(b["engrams"])
    for old, row in a["engrams"].items():
        assert b["engrams"][ids[old]] == {**row, "id": ids[old]}, row
    assert b["occurrences"] == [(ids[i], *rest) for i, *rest in a["occurrences"]]
    assert b["links"] == {frozenset(ids[x] for x in pair): v for pair, v in a["links"].items()}
    assert b["log"] == [(ids[i] if stored else i, *rest, stored)
                        for i, *rest, stored in a["log"]]
    keep = ("clock", "next_seq", "journal_seq")
    assert {k: b["counters"].get(k) for k in keep} == {k: a["counters"].get(k) for k in keep}
    assert b["last_turn"] == (a["last_turn"] and ids[a["last_turn"]])
    assert b["manifest"].settings == a["manifest"].settings
    assert b["manifest"].dtype == a["manifest"].dtype
    assert b["manifest"].user == a["manifest"].user
    assert b["live"] == {ids[i]: t for i, t in a["live"].items()}


def _files(path: Path) -> list[tuple[str, int, int, int]]:
    """Every file of a store with its size, mtime and inode, but LOCK (each open writes
    its pid there)."""
    return [f for f in rb._signature(path) if f[0] != "LOCK"]


def _side_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith("."))


def test_everything_but_vectors_and_ids_survives(tmp_path: Path) -> None:
    path = tmp_path / "alice.engram"
    _rich_store(path)
    before = _catalog(path)
    # The fixture must exercise what is checked: keys, pins, links, log entries collected
    # (tombstones) and not (the forgotten engram's id), a last turn.
    assert {o[6] for o in before["occurrences"]} >= {"pref:city", "doc:1", "doc:2"}
    assert any(r["pinned"] for r in before["engrams"].values()) and before["links"]
    assert {row[4] for row in before["log"]} == {True, False} and before["last_turn"]
    assert len(before["engrams"]) > len(before["live"])  # an expired row not yet collected

    ids = reembed(path, NEW)

    after = _catalog(path)
    _assert_carried_over(before, after, ids)
    assert after["manifest"].fingerprint == NEW.fingerprint and after["manifest"].dim == 48
    for old, new in ids.items():
        assert new == content_id(NEW.fingerprint, _text(before, old))
    header, written = load_id_map(path)
    assert written == ids and (path / ID_MAP_NAME).is_file()
    assert (header["from"], header["to"], header["count"]) == (
        OLD.fingerprint, NEW.fingerprint, len(ids))
    assert _side_dirs(path) == []
    with engramdb.open(path) as mem:  # the encoder is rebuilt from the new manifest
        assert mem.verify().ok
        live = sorted(after["live"])
        want = check_vectors(NEW.encode([after["live"][i] for i in live]), 48, len(live))
        np.testing.assert_array_equal(mem.vectors(live), want)
        assert mem.get(key="pref:city").text == "I moved to Nantes."
        hits = mem.recall("guinea pig Oscar", top_k=3)
        assert hits[0].text == "I adopted a guinea pig named Oscar."
        assert mem.recall(vector=want[0], top_k=1, associative=False)[0].id == live[0]
        turn = mem.integrate("Tell me about Oscar the guinea pig", top_k=2)
        assert turn.recalled and mem.verify().ok
    with pytest.raises(ModelMismatch):
        engramdb.open(path, encoder=OLD)


def _text(cat: dict[str, Any], ident: str) -> str:
    from engramdb.content import decompress_text

    return decompress_text(cat["engrams"][ident]["text"])


def test_recall_equals_a_store_built_with_the_new_encoder(tmp_path: Path) -> None:
    texts = [t for t, *_ in TURNS] + [f"note {i} about {w}" for i, w in
                                      enumerate("trains rain coffee piano guitar".split())]
    a, b = tmp_path / "a.engram", tmp_path / "b.engram"
    for path, enc in ((a, OLD), (b, NEW)):
        with engramdb.open(path, encoder=enc) as mem:
            mem.ingest_many(texts, sessions=["s"] * len(texts))
    reembed(a, NEW)
    with engramdb.open(a) as ma, engramdb.open(b) as mb:
        for q in ("guinea pig", "where does my sister live", "coffee", "Thursday meeting"):
            got = [(h.id, h.score) for h in ma.recall(q, top_k=5)]
            assert got == [(h.id, h.score) for h in mb.recall(q, top_k=5)], q


def test_turns_left_in_the_journal_are_folded_first(tmp_path: Path) -> None:
    """A handle dropped without close() leaves its turns in journal.bin only: the
    re-embedding's open replays and folds them, so they are in the new store."""
    path = tmp_path / "a.engram"
    mem = engramdb.open(path, encoder=OLD, settings={"journal_fold_turns": 500})
    texts = [f"journaled turn {i} about trains" for i in range(5)]
    for t in texts:
        mem.integrate(t, top_k=2)
    del mem
    gc.collect()
    assert (path / "journal.bin").stat().st_size > 0
    ids = reembed(path, NEW)
    with engramdb.open(path) as mem:
        assert [mem.get(content_id(NEW.fingerprint, t)).text for t in texts] == texts
        assert len(ids) == mem.count == 5 and mem.links(10)


def test_a_pool_store_keeps_its_user_and_dtype(tmp_path: Path) -> None:
    with engramdb.Pool(tmp_path, encoder=OLD, settings={"vector_dtype": "float16"}) as pool:
        with pool.session("alice") as mem:
            mem.ingest("I adopted a guinea pig named Oscar.")
        path = pool.path_for("alice")
    ids = reembed(path, NEW)
    with engramdb.Pool(tmp_path, encoder=NEW) as pool:
        assert pool.users() == ["alice"]
        with pool.session("alice") as mem:
            assert mem.manifest.dtype == "float16" and list(ids.values())[0] in mem


def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(NotAStore, match="no store") as exc:
        reembed(tmp_path / "missing.engram", NEW)
    assert exc.value.hint and not (tmp_path / "missing.engram").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("milk")
    with pytest.raises(NotAStore, match="not an engramdb store"):
        reembed(other, NEW)
    with pytest.raises(NotAStore):
        reembed(other / "todo.txt", NEW)
    assert sorted(p.name for p in other.iterdir()) == ["todo.txt"]
    path = tmp_path / "a.engram"
    with engramdb.open(path, encoder=OLD) as mem:
        mem.ingest("hello there")
    state = _files(path)
    with pytest.raises(InvalidInput, match="already under this encoder") as exc:
        reembed(path, HashingEncoder(dim=32))
    assert "nothing" in exc.value.message and exc.value.hint
    with pytest.raises(InvalidInput, match="Encoder"):
        reembed(path, "hashing")  # type: ignore[arg-type]
    with engramdb.open(path), pytest.raises(StoreLocked, match="open in this process"):
        reembed(path, NEW)
    monkeypatch.setattr(rb.os, "access", lambda p, mode: Path(p) != tmp_path)
    with pytest.raises(ReadOnlyStore, match="not writable") as exc:
        reembed(path, NEW)
    assert "writable" in exc.value.hint
    monkeypatch.undo()
    assert _files(path) == state and _side_dirs(path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_a_read_only_directory(tmp_path: Path) -> None:
    path = tmp_path / "ro" / "a.engram"
    with engramdb.open(path, encoder=OLD) as mem:
        mem.ingest("hello")
    os.chmod(path.parent, 0o555)
    try:
        with pytest.raises(ReadOnlyStore):
            reembed(path, NEW)
    finally:
        os.chmod(path.parent, 0o755)


def test_a_writer_during_the_switch_stops_it(tmp_path: Path, monkeypatch) -> None:
    """Between closing the old handle and taking its lock back, another writer got in: the
    run must stop (its copy lacks that write) and leave the store as the writer left it."""
    path = tmp_path / "a.engram"
    with engramdb.open(path, encoder=OLD) as mem:
        mem.ingest("before")
    real = rb._signature

    def intruder(store_dir: Path) -> Any:
        monkeypatch.setattr(rb, "_signature", real)
        with engramdb.open(store_dir) as other:
            other.ingest("written in the gap")
        return real(store_dir)

    monkeypatch.setattr(rb, "_signature", intruder)
    with pytest.raises(StoreLocked, match="while it was being re-embedded"):
        reembed(path, NEW)
    with engramdb.open(path) as mem:
        assert mem.fingerprint == OLD.fingerprint and mem.count == 2 and mem.verify().ok
    assert _side_dirs(path) == []


def test_fallback_switch_and_its_recovery(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.engram"
    with engramdb.open(path, encoder=OLD) as mem:
        mem.ingest_many(["one thing", "another thing"])
    monkeypatch.setattr(rb, "_rename_exchange", lambda a, b: False)
    reembed(path, NEW)  # two renames
    with engramdb.open(path) as mem:
        assert mem.fingerprint == NEW.fingerprint and mem.count == 2
    assert _side_dirs(path) == []

    # A kill between the two renames: no store at the path until settle() runs, which
    # moves the verified new store in (READY names its fingerprint) or else the old one back.
    previous = NEW
    real_rename = os.rename
    for ready, enc in ((True, OLD), (False, HashingEncoder(dim=24))):

        def rename(src: Any, dst: Any) -> None:
            if Path(dst) == path:  # the second rename: the new store into place
                raise KeyboardInterrupt  # stands for the SIGKILL
            real_rename(src, dst)

        monkeypatch.setattr(rb.os, "rename", rename)
        with pytest.raises(KeyboardInterrupt):
            reembed(path, enc)
        monkeypatch.setattr(rb.os, "rename", real_rename)
        assert not path.exists() and len(_side_dirs(path)) == 1
        if not ready:
            (path.parent / _side_dirs(path)[0] / "READY").unlink()
        assert settle(path) == ("new" if ready else "old")
        with engramdb.open(path) as mem:
            assert mem.fingerprint == (enc if ready else previous).fingerprint
            assert mem.count == 2 and mem.verify().ok
        assert _side_dirs(path) == [] and settle(path) is None
        previous = enc if ready else previous


def test_the_only_copies_of_a_memory_are_never_deleted(tmp_path: Path, monkeypatch) -> None:
    """A fallback switch killed between its renames, then an open that created an empty
    store at the path before settle() ran: the next reembed must not delete the work
    directory, which holds the memory's only copies."""
    path = tmp_path / "a.engram"
    with engramdb.open(path, encoder=OLD) as mem:
        mem.ingest_many(["one thing", "another thing"])
    monkeypatch.setattr(rb, "_rename_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(dst) == path:
            raise KeyboardInterrupt  # stands for the SIGKILL between the renames
        real_rename(src, dst)

    monkeypatch.setattr(rb.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        reembed(path, NEW)
    monkeypatch.setattr(rb.os, "rename", real_rename)
    engramdb.open(path, encoder=OLD).close()  # an app's open creates an empty store there
    reembed(path, NEW)
    [kept] = _side_dirs(path)
    with engramdb.open(path.parent / kept / "old") as mem:
        assert mem.count == 2 and mem.verify().ok


def test_leftovers_of_killed_runs_are_removed_but_live_runs_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.engram"
    with engramdb.open(path, encoder=OLD) as mem:
        mem.ingest("hello")
    dead = tmp_path / ".a.engram.reembed-0123abcd"
    (dead / "store").mkdir(parents=True)
    (dead / "export.jsonl").write_text("{}")
    alive = tmp_path / ".a.engram.reembed-89abcdef"
    alive.mkdir()
    lock = StoreLock(alive)
    lock.acquire(0)
    try:
        with engramdb.open(path) as mem:  # never mistaken for the store
            assert mem.count == 1
        reembed(path, NEW)
        assert _side_dirs(path) == [alive.name]
    finally:
        lock.release()


def test_cli_reembed(tmp_path: Path) -> None:
    path = tmp_path / "a.engram"
    with engramdb.open(path, encoder=OLD) as mem:
        mem.ingest_many(["I adopted a guinea pig named Oscar.", "My sister lives in Lisbon."])
    result = run("reembed", path, "--encoder", "hashing", "--dim", "48", "-q")
    assert result.exit_code == 0, result.output
    assert "re-embedded 2 engrams" in result.stdout and ID_MAP_NAME in result.stdout
    result = run("reembed", path, "--encoder", "hashing", "--dim", "40", "-q", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["engrams"] == 2 and doc["to"]["dim"] == 40 and doc["from"]["dim"] == 48
    assert doc["id_map"] == str(path / ID_MAP_NAME)
    assert run("verify", path).exit_code == 0

    same = run("reembed", path, "--encoder", "hashing", "--dim", "40", "-q")
    assert same.exit_code == 1 and "already under this encoder" in same.stderr
    missing = run("reembed", tmp_path / "nope", "--encoder", "hashing", "-q")
    assert missing.exit_code == 1 and "no store" in missing.stderr
    assert "Traceback" not in same.output + missing.output
    assert run("reembed", path, "-q").exit_code == 2  # --encoder is required

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, engramdb\n"
         "m = engramdb.open(sys.argv[1])\nprint('ready', flush=True)\ntime.sleep(60)",
         str(path)], stdout=subprocess.PIPE, env=python_env(), text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        locked = run("reembed", path, "--encoder", "hashing", "-q")
        assert locked.exit_code == 2 and f"process {holder.pid}" in locked.stderr
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert _side_dirs(path) == []
