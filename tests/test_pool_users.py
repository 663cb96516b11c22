"""Pool.users(): user ids recorded in each store's manifest by the Pool, listed from the
manifests alone (no store opened, no lock taken); stores without a user, older stores, damaged
manifests, odd ids, a store held by another process; AsyncPool.users(); `engramdb users`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from engramdb.cli.main import main as cli

import engramdb
import engramdb.aio
from engramdb.encoders import HashingEncoder
from engramdb.errors import CorruptStore, StoreLocked
from engramdb.pool import Pool, user_dirname
from engramdb.storage.manifest import MANIFEST_NAME, Manifest
from tests.conftest import PYTHON, python_env

ODD_IDS = ["a/b", "../../etc/passwd", "/", "用户", "İstanbul", "ß", "a\x00b", "line\nbreak",
           "\ud800", "x" * 2_000, "Alice", "alice", " "]


def _pool(root: Path, **kwargs: object) -> Pool:
    return Pool(root, encoder=HashingEncoder(dim=32), **kwargs)  # type: ignore[arg-type]


def _make(root: Path, *users: str) -> None:
    with _pool(root) as pool:
        for user in users:
            with pool.session(user) as mem:
                mem.ingest(f"{user!r} was here")


def _no_duckdb(*args: object, **kwargs: object) -> None:
    raise AssertionError("a store or its catalog was opened")


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))


def _set_manifest(path: Path, doc: dict) -> None:
    (path / MANIFEST_NAME).write_text(json.dumps(doc), encoding="utf-8")


# -- recorded at creation, listed sorted ---------------------------------------------------------


def test_users_are_recorded_at_creation_and_listed_sorted(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "users"
    _make(root, "carol", "alice", "bob")
    with Pool(root) as pool, monkeypatch.context() as m:
        m.setattr("duckdb.connect", _no_duckdb)  # the listing never opens a catalog
        m.setattr("engramdb.pool.open_store", _no_duckdb)  # nor a store
        assert pool.users() == ["alice", "bob", "carol"]
        assert _manifest(pool.path_for("bob"))["user"] == "bob"
        assert pool.open_count == 0  # listing opened nothing
    # survives a reopen: a new Pool, the stores opened again, written to, closed
    _make(root, "bob", "dave")
    with Pool(root) as pool:
        assert pool.users() == ["alice", "bob", "carol", "dave"]
        listing = pool.user_listing()
        assert listing.unknown == [] and listing.damaged == {}
        with pool.session("alice") as mem:  # the store still opens and checks clean
            assert mem.manifest.user == "alice" and mem.verify().ok


def test_an_empty_or_fresh_root_lists_nobody(tmp_path: Path) -> None:
    with Pool(tmp_path / "new") as pool:
        assert pool.users() == []
        assert pool.user_listing().to_dict() == {"users": [], "unknown": [], "damaged": {}}


def test_users_lists_stores_this_pool_holds_open(tmp_path: Path) -> None:
    with _pool(tmp_path / "users") as pool, pool.session("alice"), pool.session("bob"):
        assert pool.users() == ["alice", "bob"]
        assert pool.open_count == 2


def test_the_user_survives_the_engines_manifest_rewrites(tmp_path: Path) -> None:
    root = tmp_path / "users"
    with _pool(root) as pool, pool.session("alice") as mem:
        # The pool updated the store's own manifest object: a rewrite by the engine (index
        # configuration, settings) writes it with the user.
        assert mem.manifest.user == "alice"
        mem.manifest.write(mem.path)
        mem.rebuild()
    # a settings change on open rewrites the manifest, from the one on disk
    with _pool(root, settings={"hybrid_pool": 50}) as pool, pool.session("alice") as mem:
        assert mem.settings.hybrid_pool == 50
    assert _manifest(Pool(root).path_for("alice"))["settings"]["hybrid_pool"] == 50
    assert Pool(root).users() == ["alice"]


# -- stores without a user -----------------------------------------------------------------------


def test_a_store_created_without_a_user_is_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "users"
    _make(root, "alice")
    with engramdb.open(root / "plain.engram", encoder=HashingEncoder(dim=32)) as mem:
        mem.ingest("made by engramdb.open")
    assert "user" not in _manifest(root / "plain.engram")  # the format is unchanged
    with Pool(root) as pool:
        assert pool.users() == ["alice"]
        listing = pool.user_listing()
        assert listing.unknown == ["plain.engram"] and listing.damaged == {}
    with engramdb.open(root / "plain.engram") as mem:  # and it still opens as before
        assert mem.manifest.user is None and mem.count == 1


def test_an_older_store_gains_its_user_at_the_next_pool_open(tmp_path: Path) -> None:
    root = tmp_path / "users"
    pool = _pool(root)
    # An older engramdb's Pool: a store at the user's directory, no user in its manifest.
    with engramdb.open(pool.path_for("olga"), encoder=HashingEncoder(dim=32)) as mem:
        mem.ingest("I keep bees.")
    _make(root, "alice")
    doc = _manifest(pool.path_for("alice"))
    del doc["user"]  # as an older engramdb wrote it
    _set_manifest(pool.path_for("alice"), doc)
    assert pool.users() == []
    assert sorted(pool.user_listing().unknown) == sorted(
        [user_dirname("olga"), user_dirname("alice")])
    with pool.session("olga") as mem:
        assert mem.recall("bees", top_k=1)[0].text == "I keep bees."
    assert pool.users() == ["olga"]  # recorded while the store is open
    pool.get("alice")
    assert pool.users() == ["alice", "olga"]
    pool.close()
    with Pool(root) as pool:
        assert pool.users() == ["alice", "olga"]
        assert pool.user_listing().unknown == []


def test_a_pool_without_encoder_records_the_user_of_an_existing_store(tmp_path: Path) -> None:
    root = tmp_path / "users"
    with engramdb.open(Pool(root).path_for("olga"), encoder=HashingEncoder(dim=32)):
        pass
    with Pool(root, create=False) as pool:  # reads existing stores only
        pool.get("olga")
        assert pool.users() == ["olga"]


def test_a_store_copied_under_another_users_name_is_not_listed_twice(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "users"
    _make(root, "alice")
    pool = Pool(root)
    shutil.copytree(pool.path_for("alice"), pool.path_for("bob"))
    assert pool.users() == ["alice"]
    assert "records user 'alice'" in pool.user_listing().damaged[user_dirname("bob")]
    with _pool(root) as pool2:  # opened for bob, it is bob's from now on
        pool2.get("bob")
        assert pool2.users() == ["alice", "bob"]


# -- damaged manifests ---------------------------------------------------------------------------


@pytest.mark.parametrize("user", [5, 1.5, True, None, [], ["alice"], {"id": "alice"}, ""])
def test_a_manifest_with_a_bad_user_is_refused_on_open_and_skipped(tmp_path: Path,
                                                                 user: object) -> None:
    root = tmp_path / "users"
    _make(root, "alice", "bob")
    path = Pool(root).path_for("bob")
    doc = _manifest(path)
    doc["user"] = user
    _set_manifest(path, doc)
    with pytest.raises(CorruptStore, match="invalid user"):
        Manifest.read(path)
    with pytest.raises(CorruptStore, match="invalid user"):
        engramdb.open(path)
    with _pool(root) as pool:
        assert pool.users() == ["alice"]
        assert "invalid user" in pool.user_listing().damaged[path.name]
        with pytest.raises(CorruptStore):
            pool.get("bob")
        assert pool.users() == ["alice"]  # the failed open recorded nothing


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "not-an-object",
                                    "no-magic", "bad-fingerprint", "too-new", "deep",
                                    "directory", "no-manifest"])
def test_a_damaged_manifest_is_skipped_not_fatal(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "users"
    _make(root, "alice", "bob", "carol")
    path = Pool(root).path_for("bob")
    manifest = path / MANIFEST_NAME
    raw = manifest.read_bytes()
    doc = json.loads(raw)
    if damage == "empty":
        manifest.write_bytes(b"")
    elif damage == "garbage":
        manifest.write_bytes(b"\xff\xfe not json \x00")
    elif damage == "truncated":
        manifest.write_bytes(raw[: len(raw) // 2])
    elif damage == "not-an-object":
        manifest.write_text('["engramdb"]')
    elif damage == "no-magic":
        manifest.write_text(json.dumps({**doc, "magic": "other"}))
    elif damage == "bad-fingerprint":
        manifest.write_text(json.dumps({**doc, "fingerprint": "0" * 64}))
    elif damage == "too-new":
        manifest.write_text(json.dumps({**doc, "format_version": 99}))
    elif damage == "deep":  # json.loads raises RecursionError, not ValueError
        manifest.write_text('{"magic": "engramdb", "format_version": 1, "encoder": '
                            + "[" * 200_000 + "]" * 200_000 + "}")
    elif damage == "directory":
        manifest.unlink()
        manifest.mkdir()
    elif damage == "no-manifest":  # an unfinished creation: no user known, not damage
        manifest.unlink()
    with Pool(root) as pool:
        assert pool.users() == ["alice", "carol"]
        listing = pool.user_listing()
        if damage == "no-manifest":
            assert listing.unknown == [path.name] and listing.damaged == {}
        else:
            assert list(listing.damaged) == [path.name] and listing.unknown == []
            assert listing.damaged[path.name]


def test_entries_that_are_not_store_directories(tmp_path: Path) -> None:
    root = tmp_path / "users"
    _make(root, "alice")
    (root / "notes.txt").write_text("not a store")  # not *.engram: not a pool's, ignored
    (root / "other").mkdir()
    (root / ".hidden.engram").mkdir()
    (root / "file.engram").write_text("a file")
    (root / "link.engram").symlink_to(Pool(root).path_for("alice"))
    with Pool(root) as pool:
        assert pool.users() == ["alice"]
        listing = pool.user_listing()
        assert sorted(listing.damaged) == ["file.engram", "link.engram"]
        assert listing.unknown == []


def test_an_unreadable_root_raises_storage_error(tmp_path: Path) -> None:
    root = tmp_path / "users"
    pool = Pool(root)
    root.rmdir()
    with pytest.raises(engramdb.errors.StorageError, match="cannot list"):
        pool.users()


# -- odd user ids --------------------------------------------------------------------------------


def test_unicode_slashes_and_other_odd_ids_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "users"
    _make(root, *ODD_IDS)
    with Pool(root) as pool:
        assert pool.users() == sorted(ODD_IDS)
        for user in ODD_IDS:  # each listed id opens its own store again
            assert pool.path_for(user).parent == pool.root
            with pool.session(user) as mem:
                assert mem.recall(repr(user), top_k=1)[0].text == f"{user!r} was here"
    assert [p.parent for p in root.iterdir()] == [root] * len(ODD_IDS)


# -- while other processes hold the stores -------------------------------------------------------

HOLDER = """
import sys
from engramdb.encoders import HashingEncoder
from engramdb.pool import Pool
pool = Pool(sys.argv[1], encoder=HashingEncoder(dim=32))
mem = pool.acquire(sys.argv[2])
mem.ingest("held by another process")
print("ready", flush=True)
sys.stdin.readline()
pool.release(mem)
pool.close()
"""


def test_users_works_while_another_process_holds_a_store(tmp_path: Path) -> None:
    root = tmp_path / "users"
    _make(root, "alice")
    holder = subprocess.Popen([PYTHON, "-c", HOLDER, str(root), "zoë/holder"],
                              env=python_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with Pool(root, lock_timeout=0) as pool:
            with pytest.raises(StoreLocked) as info:  # the store really is held
                pool.get("zoë/holder")
            assert info.value.pid == holder.pid
            start = time.monotonic()
            assert pool.users() == ["alice", "zoë/holder"]
            assert time.monotonic() - start < 1.0  # no waiting on the lock
        result = CliRunner().invoke(cli, ["users", str(root)])
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == ["alice", "zoë/holder"]
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
        holder.wait()


# -- AsyncPool -----------------------------------------------------------------------------------


def test_async_pool_users(tmp_path: Path) -> None:
    async def run() -> tuple[list[str], list[str]]:
        async with engramdb.aio.AsyncPool(tmp_path / "users",
                                          encoder=HashingEncoder(dim=32)) as pool:
            for user in ("bob", "alice"):
                async with pool.session(user) as mem:
                    await mem.ingest("hello")
            listing = await pool.user_listing()
            return await pool.users(), listing.users

    assert asyncio.run(run()) == (["alice", "bob"], ["alice", "bob"])


# -- the command ---------------------------------------------------------------------------------


def test_cli_users_prints_ids_and_counts_what_it_skipped(tmp_path: Path) -> None:
    root = tmp_path / "users"
    _make(root, "bob", "alice", "line\nbreak")
    with engramdb.open(root / "plain.engram", encoder=HashingEncoder(dim=32)):
        pass
    (root / "file.engram").write_text("a file")
    result = CliRunner().invoke(cli, ["users", str(root)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["alice", "bob", '"line\\nbreak"']
    assert "skipped 1 store without a recorded user" in result.stderr
    assert "skipped file.engram: not a directory" in result.stderr

    result = CliRunner().invoke(cli, ["users", str(root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "users": ["alice", "bob", "line\nbreak"], "unknown": ["plain.engram"],
        "damaged": {"file.engram": "not a directory (a file or a symbolic link)"}}

    result = CliRunner().invoke(cli, ["users", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "missing").exists()
    result = CliRunner().invoke(cli, ["users", str(root / "file.engram")])
    assert result.exit_code == 2 and "is a file" in result.output
    assert "Traceback" not in result.output
