"""Caller keys: ingest(key=), upsert, get(key=) / get_keys, forget(keys=), and listing."""

from __future__ import annotations

import gc
import json
import struct
import zlib
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engramdb
from engramdb.content import compress_text
from engramdb.encoders import HashingEncoder
from engramdb.errors import CorruptStore, EngramError, InvalidInput, NotFound
from engramdb.storage.journal import MAGIC
from engramdb.storage.manifest import FORMAT_VERSION
from engramdb.transfer import export_store, import_store


def _open(path: Path, **kw: object) -> engramdb.Store:
    return engramdb.open(path, encoder=HashingEncoder(dim=64), **kw)


def _keys_of(engram: engramdb.Engram) -> list[str | None]:
    return [o.key for o in engram.occurrences]


def test_keyed_ingest_get_and_refusals(tmp_path: Path) -> None:
    with _open(tmp_path / "m") as mem:
        a = mem.ingest("I adopted a guinea pig named Oscar.", key="pet", metadata={"n": 1})
        mem.ingest_many(["I live in Lyon.", "I adopted a guinea pig named Oscar."],
                        keys=["city", "pet-again"])
        oscar = mem.get(key="pet")
        assert oscar.id == a.id and oscar.refs == 2
        assert _keys_of(oscar) == ["pet", "pet-again"]
        assert oscar.occurrences[0].metadata == {"n": 1}
        assert oscar.to_dict()["occurrences"][0]["key"] == "pet"
        before = (len(mem), mem.get(key="pet").refs)
        with pytest.raises(InvalidInput, match="already stored"):
            mem.ingest_many(["brand new text", "another new one"], keys=["new", "city"])
        with pytest.raises(InvalidInput, match="twice"):
            mem.ingest_many(["one", "two"], keys=["k", "k"])
        for bad in ("", 7, "x" * 1025, "a\x00b"):
            with pytest.raises(InvalidInput):
                mem.ingest("text", key=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            mem.get("0" * 64, key="pet")
        with pytest.raises(InvalidInput):
            mem.get()
        with pytest.raises(NotFound):
            mem.get(key="nobody")
        # Nothing of the refused calls was written.
        assert (len(mem), mem.get(key="pet").refs) == before
        with pytest.raises(NotFound):
            mem.get(key="new")
        assert mem.get_keys(["pet", "nobody", "city"]).keys() == {"pet", "city"}


def test_upsert_same_text_keeps_the_engram(tmp_path: Path) -> None:
    with _open(tmp_path / "m") as mem:
        mem.ingest("My favourite colour is green.", key="colour", role="user")
        for text in ("What colour do I like?", "Tell me my favourite colour."):
            mem.integrate(text)  # recalls it: it earns recalls, lifespan and links
        before = mem.get(key="colour")
        links_before = mem.links(limit=100)
        assert before.recalls >= 1 and links_before
        r = mem.upsert("colour", "My favourite colour is green.", metadata={"v": 2},
                       role="assistant")
        after = mem.get(key="colour")
        assert r.id == before.id and not r.is_new
        assert (after.refs, after.recalls) == (before.refs, before.recalls)
        assert after.expires_at >= before.expires_at
        assert mem.links(limit=100) == links_before
        assert len(after.occurrences) == 1
        occ = after.occurrences[0]
        assert (occ.key, occ.role, occ.metadata) == ("colour", "assistant", {"v": 2})


def test_upsert_new_text_erases_the_old_engram(tmp_path: Path) -> None:
    path = tmp_path / "m"
    secret = "my door code is 4417-walrus-quince"
    with _open(path) as mem:
        mem.ingest_many([f"filler memory {i}" for i in range(50)])
        old = mem.ingest(secret, key="door", metadata={"tag": "walrus-quince-tag"})
        shared = mem.ingest("I like tea.", key="drink")
        mem.ingest("I like tea.", key="drink-2")
        new = mem.upsert("door", "my door code changed")
        assert new.is_new and new.id != old.id
        assert mem.get(key="door").text == "my door code changed"
        assert old.id not in mem
        log = mem.forgetting_log()
        assert log[0]["id"] == old.id and log[0]["reason"] == "forgotten"
        # The other content keeps living while one of its keys moves elsewhere.
        mem.upsert("drink", "I like coffee.")
        assert shared.id in mem and mem.get(shared.id).refs == 1
        assert _keys_of(mem.get(shared.id)) == ["drink-2"]
        mem.gc()
        assert mem.verify().ok
    needles = [secret.encode(), compress_text(secret), b"walrus-quince-tag"]
    for p in path.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            assert not any(n in blob for n in needles), p


def test_forget_keys(tmp_path: Path) -> None:
    with _open(tmp_path / "m") as mem:
        mem.ingest_many(["alpha text", "beta text", "alpha text"], keys=["a", "b", "a2"])
        alpha = mem.get(key="a").id
        with pytest.raises(NotFound):
            mem.forget(keys=["a", "missing"])
        assert mem.get(key="a").refs == 2  # nothing removed
        assert mem.forget(keys="a") == 1
        assert mem.get(alpha).refs == 1 and _keys_of(mem.get(alpha)) == ["a2"]
        assert mem.forget(keys=["a2", "b"]) == 2
        assert alpha not in mem and len(mem) == 0
        with pytest.raises(InvalidInput):
            mem.forget()
        with pytest.raises(InvalidInput):
            mem.forget([alpha], keys=["b"])
        with pytest.raises(InvalidInput):
            mem.forget(keys=["x", "x"])
        assert mem.verify().ok


def test_keyed_writes_after_turns_and_reopen(tmp_path: Path) -> None:
    """Turns waiting in the journal and keyed writes mix; all of it survives a reopen."""
    path = tmp_path / "m"
    with _open(path) as mem:
        mem.integrate("first turn about cats")
        mem.ingest("a keyed note about dogs", key="note")
        mem.integrate("second turn about dogs")
        mem.upsert("note", "a keyed note about birds")
        mem.integrate("third turn")
    with _open(path) as mem:
        assert mem.get(key="note").text == "a keyed note about birds"
        hit = mem.recall("keyed note birds", top_k=1)[0]
        assert [o.key for o in hit.occurrences] == ["note"]
        assert len(mem) == 4 and mem.verify().ok


def test_listing(tmp_path: Path) -> None:
    with _open(tmp_path / "m") as mem:
        texts = [f"memory number {i}" for i in range(10)]
        mem.ingest_many(texts, roles=["user", "bot"] * 5,
                        metadatas=[{"i": i} for i in range(10)])
        mem.ingest_many(["a long-term fact"], kind="long_term")
        assert [e.text for e in mem.engrams()] == [*texts, "a long-term fact"]
        assert [e.text for e in mem.engrams(order="-seq", limit=3)] == [
            "a long-term fact", texts[9], texts[8]]
        assert [e.text for e in mem.engrams(limit=2, offset=4)] == texts[4:6]
        assert [e.text for e in mem.engrams(where={"role": "bot"})] == texts[1::2]
        big = mem.engrams(where={"metadata": {"i": {"$gte": 7}}})
        assert [e.occurrences[0].metadata["i"] for e in big] == [7, 8, 9]
        assert [e.text for e in mem.engrams(kinds=["long_term"])] == ["a long-term fact"]
        assert [e.text for e in mem.iter_engrams(page=3)] == [*texts, "a long-term fact"]
        mem.forget(mem.engrams(limit=1)[0].id)
        assert len(mem.engrams()) == 10
        for bad in ({"order": "newest"}, {"limit": -1}, {"offset": 1.5},
                    {"where": {"metadata": {"i": {"$near": 1}}}}):
            with pytest.raises(InvalidInput):
                mem.engrams(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_import_keeps_keys(tmp_path: Path, fmt: str) -> None:
    with _open(tmp_path / "a") as mem:
        mem.ingest_many(["one", "two", "one"], keys=["k1", "k2", "k3"])
        mem.ingest("unkeyed")
        export_store(mem, tmp_path / "dump", fmt)
    import_store(tmp_path / "b", tmp_path / "dump", encoder=HashingEncoder(dim=64))
    with _open(tmp_path / "b") as mem:
        assert _keys_of(mem.get(key="k3")) == ["k1", "k3"]
        assert mem.get(key="k2").text == "two"
        with pytest.raises(InvalidInput):
            mem.ingest("again", key="k1")
    if fmt != "jsonl":
        return
    # A file where two occurrences hold one key is refused.
    lines = (tmp_path / "dump").read_text().splitlines()
    doctored = []
    for line in lines:
        rec = json.loads(line)
        for o in rec.get("occurrences") or []:
            if o.get("key") == "k2":
                o["key"] = "k1"
        doctored.append(json.dumps(rec))
    (tmp_path / "bad.jsonl").write_text("\n".join(doctored) + "\n")
    with pytest.raises(EngramError, match="two occurrences"):
        import_store(tmp_path / "c", tmp_path / "bad.jsonl", encoder=HashingEncoder(dim=64))


@pytest.mark.usefixtures("catalog_from_the_start")
def test_store_of_the_previous_format_gains_keys(tmp_path: Path) -> None:
    """A format-2 store (no key column) opens, gains the column once, and takes keys."""
    path = tmp_path / "m"
    with _open(path) as mem:
        mem.ingest_many(["old one", "old two"])
    con = duckdb.connect(str(path / "catalog.duckdb"))
    con.execute("DROP INDEX occurrences_eid")  # DuckDB alters no table an index depends on
    con.execute("ALTER TABLE occurrences DROP COLUMN key")
    con.execute("CREATE INDEX occurrences_eid ON occurrences(eid)")
    con.close()
    manifest = json.loads((path / "MANIFEST.json").read_text())
    manifest["format_version"] = 2
    (path / "MANIFEST.json").write_text(json.dumps(manifest))
    with _open(path) as mem:
        assert [o.key for e in mem.engrams() for o in e.occurrences] == [None, None]
        mem.ingest("new one", key="k")
        assert mem.get(key="k").text == "new one" and mem.verify().ok
    assert json.loads((path / "MANIFEST.json").read_text())["format_version"] == FORMAT_VERSION


_OPS = st.lists(st.tuples(st.sampled_from(["upsert", "forget", "ingest"]),
                          st.sampled_from(["k0", "k1", "k2", "k3"]),
                          st.sampled_from(["red", "green", "blue"])), max_size=25)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_keys_follow_a_dict(tmp_path_factory: pytest.TempPathFactory,
                            ops: list[tuple[str, str, str]]) -> None:
    """Any sequence of keyed writes leaves the store holding what a dict would, with each
    engram's refs equal to its occurrences and no engram left without one."""
    model: dict[str, str] = {}
    with _open(tmp_path_factory.mktemp("prop") / "m") as mem:
        for op, key, text in ops:
            if op == "upsert":
                mem.upsert(key, f"the colour is {text}")
                model[key] = f"the colour is {text}"
            elif op == "ingest":
                if key in model:
                    with pytest.raises(InvalidInput):
                        mem.ingest(f"the colour is {text}", key=key)
                else:
                    mem.ingest(f"the colour is {text}", key=key)
                    model[key] = f"the colour is {text}"
            elif key in model:
                assert mem.forget(keys=[key]) == 1
                del model[key]
            else:
                with pytest.raises(NotFound):
                    mem.forget(keys=[key])
        got = mem.get_keys(["k0", "k1", "k2", "k3"])
        assert {k: e.text for k, e in got.items()} == model
        listed = mem.engrams()
        assert sorted(k for e in listed for k in _keys_of(e)) == sorted(model)
        assert all(e.refs == len(e.occurrences) >= 1 for e in listed)
        assert mem.verify().ok


@pytest.mark.usefixtures("catalog_from_the_start")
def test_new_keys_take_the_journal_and_replay(tmp_path: Path) -> None:
    """Keyed ingests of new keys are turns: a dropped handle replays them, keys included,
    and a key journaled but not yet folded is already taken."""
    path = tmp_path / "m"
    mem = _open(path)
    mem.ingest("first keyed", key="k1")
    mem.upsert("k2", "second keyed", metadata={"a": 1})  # a new key: a turn too
    assert mem.stats()["files"].get("journal.bin", 0) > 0
    with pytest.raises(InvalidInput, match="already stored"):
        mem.ingest("again", key="k1")
    del mem
    gc.collect()
    with _open(path) as mem:
        assert any("replayed 2 turns" in r for r in mem.recovered)
        assert mem.get(key="k2").occurrences[0].metadata == {"a": 1}
        assert [o.key for o in mem.get(key="k1").occurrences] == ["k1"]
        assert mem.verify().ok


@pytest.mark.parametrize("keys", [["k", "k"], [""], [7], ["a", None, "b"]])
def test_forged_record_keys_refuse_the_open(tmp_path: Path, keys: list[object]) -> None:
    path = tmp_path / "m"
    mem = _open(path)
    mem.ingest_many(["one", "two"], keys=["a", "b"])
    journal = path / "journal.bin"
    raw = journal.read_bytes()
    del mem
    gc.collect()
    frame_head = 2 + 4 + 4  # magic, length, crc32
    (n,) = struct.unpack_from("<I", raw, frame_head)
    head = json.loads(raw[frame_head + 4:frame_head + 4 + n])
    head["y"] = keys
    body = json.dumps(head).encode()
    payload = struct.pack("<I", len(body)) + body + raw[frame_head + 4 + n:]
    journal.write_bytes(MAGIC + struct.pack("<II", len(payload), zlib.crc32(payload))
                        + payload)
    with pytest.raises(CorruptStore):
        _open(path)


def _context_of(mem: engramdb.Store, ident: str) -> tuple[str | None, str | None]:
    """The session and speaker recall's conversation context holds for an engram."""
    ctx = mem._parts.context
    eid = mem._writer.lookup_ids([ident])[ident]
    return ctx.label_of.get(int(ctx.session[eid])), ctx.label_of.get(int(ctx.role[eid]))


def test_context_follows_the_occurrences_a_key_replaces(tmp_path: Path) -> None:
    """An engram's conversation context comes from its first occurrence: when a keyed
    removal takes that one, the context goes too (or comes from the upsert's occurrence), so
    no session or speaker of a removed occurrence survives, even across gc and reopen."""
    path = tmp_path / "m"
    with _open(path) as mem:
        mem.ingest("hello", session="public", role="bob")
        ident = mem.upsert("K", "the project is bluebird", session="secret", role="alice").id
        mem.upsert("K", "the project is bluebird", session="public", role="bob")
        assert _context_of(mem, ident) == ("public", "bob")
        shared = mem.ingest("tea please", key="t1", session="secret", role="alice").id
        mem.ingest("tea please", key="t2")
        mem.forget(keys="t1")
        assert _context_of(mem, shared) == (None, None)
        mem.forget(mem.ingest("scratch").id)
        mem.gc()
        assert mem.verify().ok
    with _open(path) as mem:
        mem.ingest("unrelated", session="carol-session", role="carol")
        assert _context_of(mem, ident) == ("public", "bob")
        assert _context_of(mem, shared) == (None, None)
        assert mem.verify().ok


@pytest.mark.usefixtures("catalog_from_the_start")
def test_a_replayed_turn_takes_a_key_whose_removal_was_lost(tmp_path: Path) -> None:
    """In "fast" durability a power cut can lose a catalog commit that removed a key
    (unsynced) but keep the journaled turn that stored the key again: replay gives the key
    to that turn, the later write, and the store never holds one key twice. A removal that
    took the journal itself (``forget(keys=)``) is replayed before the turn."""
    for journaled in (False, True):
        path = tmp_path / f"m{journaled}"
        with _open(path) as mem:
            first = mem.ingest("a first", key="K").id
        before = (path / "catalog.duckdb").read_bytes()
        mem = _open(path)
        if journaled:
            mem.forget(keys="K")
        else:
            mem.forget(first)  # a catalog commit: the occurrence and its key go with it
        mem.ingest("b second", key="K")  # a turn: journaled
        del mem
        gc.collect()
        (path / "catalog.duckdb.wal").unlink(missing_ok=True)
        (path / "catalog.duckdb").write_bytes(before)  # the catalog lost what came after
        with _open(path) as mem:
            assert mem.get(key="K").text == "b second"
            texts = [e.text for e in mem.engrams()]
            # Lost with the catalog's commit, it stays without its key; journaled, it goes.
            assert ("a first" in texts) is not journaled
            assert mem.verify().ok
            assert mem.forget(keys="K") == 1
            with pytest.raises(NotFound):
                mem.get(key="K")


@pytest.mark.usefixtures("catalog_from_the_start")
def test_verify_reports_a_key_held_twice(tmp_path: Path) -> None:
    path = tmp_path / "m"
    with _open(path) as mem:
        mem.ingest_many(["one", "two"], keys=["a", "b"])
    con = duckdb.connect(str(path / "catalog.duckdb"))
    con.execute("UPDATE occurrences SET key = 'a' WHERE key = 'b'")
    con.close()
    with _open(path) as mem:
        assert any("keys held twice" in p for p in mem.verify().problems)


def test_a_key_that_is_not_unicode_is_bad_input(tmp_path: Path) -> None:
    with _open(tmp_path / "m") as mem:
        mem.ingest("warm the mirror")
        for call in (lambda: mem.ingest("x", key="\ud800"),
                     lambda: mem.upsert("\ud800", "x"),
                     lambda: mem.get(key="\ud800"),
                     lambda: mem.forget(keys=["\ud800"])):
            with pytest.raises(InvalidInput, match="Unicode"):
                call()
        assert len(mem) == 1 and mem.verify().ok


def test_an_export_of_version_1_still_imports(tmp_path: Path) -> None:
    """Exports are version 2 now (occurrences carry keys): an older engramdb refuses them
    instead of dropping keys; a version-1 file (no keys) still imports."""
    with _open(tmp_path / "a") as mem:
        mem.ingest_many(["one", "two"], roles=["user", "bot"])
        export_store(mem, tmp_path / "dump")
    lines = (tmp_path / "dump").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2
    header["version"] = 1
    old = [json.dumps(header)]
    for line in lines[1:]:
        rec = json.loads(line)
        for o in rec.get("occurrences") or []:
            o.pop("key", None)
        old.append(json.dumps(rec))
    (tmp_path / "v1.jsonl").write_text("\n".join(old) + "\n")
    import_store(tmp_path / "b", tmp_path / "v1.jsonl", encoder=HashingEncoder(dim=64))
    with _open(tmp_path / "b") as mem:
        assert sorted(e.text for e in mem.engrams()) == ["one", "two"]
        assert all(o.key is None for e in mem.engrams() for o in e.occurrences)
