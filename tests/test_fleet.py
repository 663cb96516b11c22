"""Fleet maintenance (engramdb.fleet, `engramdb fleet`): one operation over every store of a
Pool root, on a local process pool and on a local Ray, with a damaged store, one held open by
another process, crash isolation and resume."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from engramdb.cli.main import main as cli

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.errors import InvalidInput, StoreLocked
from engramdb.fleet import FleetResult, RayUnavailable, run_fleet
from engramdb.pool import Pool, user_dirname
from engramdb.transfer import import_store
from tests.conftest import PYTHON, python_env

USERS = ["alice", "bob", "carol", "dave", "erin", "frank"]
GOOD = {"alice", "bob", "dave"}  # plus "direct.engram", a store with no recorded user
DAMAGED = {"carol", "frank"}  # a garbled manifest, a truncated catalog
HELD = "erin"  # held open by another process in the shared root
DIRECT = "direct.engram"

HOLDER = """
import sys
from engramdb.pool import Pool
pool = Pool(sys.argv[1])
mem = pool.acquire(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
pool.release(mem)
pool.close()
"""


def _texts(user: str) -> list[str]:
    return [f"{user} adopted a guinea pig.", f"{user} lives in Lyon.", "The weather is nice."]


def _build(root: Path) -> None:
    with Pool(root, encoder=HashingEncoder(dim=32)) as pool:
        for user in USERS:
            with pool.session(user) as mem:
                mem.ingest_many(_texts(user))
    with engramdb.open(root / DIRECT, encoder=HashingEncoder(dim=32)) as mem:
        mem.ingest_many(_texts("direct"))
    (root / user_dirname("carol") / "MANIFEST.json").write_text('{"format_version": 1, ')
    with engramdb.open(root / user_dirname("frank")) as mem:
        assert mem.catalog is not None  # its first fold: frank's store gets its catalog
    catalog = root / user_dirname("frank") / "catalog.duckdb"
    os.truncate(catalog, catalog.stat().st_size // 2)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet") / "template"
    _build(root)
    return root


@pytest.fixture
def root(template: Path, tmp_path: Path) -> Path:
    """A private copy of the template: nobody holds any store."""
    copy = tmp_path / "root"
    shutil.copytree(template, copy)
    return copy


@pytest.fixture(scope="module")
def shared(template: Path, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the template whose erin store another process holds open (a server)."""
    copy = tmp_path_factory.mktemp("shared") / "root"
    shutil.copytree(template, copy)
    holder = subprocess.Popen([PYTHON, "-c", HOLDER, str(copy), HELD], env=python_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield copy, holder.pid
    finally:
        holder.kill()
        holder.wait()


def _by_user(result: FleetResult) -> dict[str, object]:
    """Rows by user (by directory name for direct.engram; carol's garbled manifest records
    no readable user, so her row is found by her directory)."""
    names = {user_dirname(u): u for u in USERS}
    rows = {names.get(row.store, row.store): row for row in result.rows}
    for user, row in rows.items():
        assert row.user == (None if user in (DIRECT, "carol") else user)
    return rows


def _failures(result: FleetResult) -> list[tuple[str, str, str | None]]:
    """The rows that did not succeed, with their errors (for an assertion's message)."""
    return [(row.store, row.status, row.error) for row in result.rows if row.status != "ok"]


def _check_report(result: FleetResult, holder_pid: int) -> dict[str, object]:
    """The damaged and held stores are reported; every other store succeeded."""
    rows = _by_user(result)
    assert set(rows) == set(USERS) | {DIRECT}
    assert {u for u, r in rows.items() if r.status == "ok"} == GOOD | {DIRECT}
    assert {u for u, r in rows.items() if r.status == "failed"} == DAMAGED
    assert rows[HELD].status == "locked"
    assert str(holder_pid) in rows[HELD].error
    assert rows[HELD].seconds < 2.0  # refused at once, never waited on
    assert "MANIFEST.json" in rows["carol"].error
    assert "CorruptStore" in rows["frank"].error
    assert result.counts() == {"ok": 4, "failed": 2, "locked": 1, "skipped": 0}
    assert not result.ok and result.exit_code == 1
    return rows


# -- local process pool -------------------------------------------------------------------------


def test_verify_stats_gc_report_damaged_and_locked_stores(shared, tmp_path: Path) -> None:
    root, pid = shared
    for op in ("verify", "stats", "gc"):
        result = run_fleet(root, op, workers=2, state_dir=tmp_path / op)
        assert result.backend == "processes" and result.workers == 2
        rows = _check_report(result, pid)
        if op == "verify":
            assert rows["alice"].result["checked"]["engrams"] == 3
            assert rows["alice"].result["ok"] is True
        elif op == "stats":
            assert rows[DIRECT].result["count"] == 3 and rows[DIRECT].user is None
            assert rows["bob"].result["bytes"] > 0 and rows["bob"].result["files"] >= 3
        else:
            assert rows["dave"].result["erased"] == 0 and "bytes_after" in rows["dave"].result
    assert not (root / ".fleet").exists()  # state_dir moved the progress logs


def test_export_one_file_per_store(shared, tmp_path: Path) -> None:
    root, pid = shared
    dest = tmp_path / "exports"
    result = run_fleet(root, "export", dest=dest, workers=2, state_dir=tmp_path / "state")
    rows = _check_report(result, pid)
    files = sorted(p.name for p in dest.iterdir())
    assert files == sorted(f"{rows[u].store[:-len('.engram')]}.jsonl" for u in GOOD | {DIRECT})
    assert rows["alice"].result["engrams"] == 3
    copy = tmp_path / "alice-copy.engram"
    import_store(copy, rows["alice"].result["file"])
    with engramdb.open(copy) as mem:
        assert sorted(e.text for e in mem.engrams()) == sorted(_texts("alice"))


def test_rerun_resumes_and_redoes_changed_stores(root: Path) -> None:
    first = run_fleet(root, "verify", workers=2)
    assert first.counts() == {"ok": 5, "failed": 2, "locked": 0, "skipped": 0}, \
        _failures(first)
    assert Path(first.log).parent == root / ".fleet"
    again = run_fleet(root, "verify", workers=2)
    assert again.counts() == {"ok": 0, "failed": 2, "locked": 0, "skipped": 5}
    assert again.exit_code == 1  # the damaged stores are tried again, and still fail
    assert _by_user(again)["bob"].result == _by_user(first)["bob"].result
    with Pool(root) as pool, pool.session("alice") as mem:  # alice changes since
        mem.ingest("alice has a new cat.")
    third = run_fleet(root, "verify", workers=2)
    rows = _by_user(third)
    assert rows["alice"].status == "ok" and rows["alice"].result["checked"]["engrams"] == 4
    assert {u for u, r in rows.items() if r.status == "skipped"} == {"bob", "dave", DIRECT, "erin"}
    # A run killed while appending alice's line leaves it torn (and nothing after it): alice
    # is redone, as her last whole line is from before she changed; no other store is.
    log = Path(third.log)
    data = log.read_bytes()
    line = data.rindex(f'"store": "{rows["alice"].store}"'.encode())
    log.write_bytes(data[:line])
    fourth = _by_user(run_fleet(root, "verify", workers=2))
    assert fourth["alice"].status == "ok"
    assert {u for u, r in fourth.items() if r.status == "skipped"} == {"bob", "dave", DIRECT,
                                                                       "erin"}
    assert run_fleet(root, "verify", workers=2, resume=False).counts()["ok"] == 5
    # Another operation, or the same with other arguments, has a log of its own.
    assert run_fleet(root, "stats", workers=1).counts()["skipped"] == 0
    # The log's folder is never a store or a user.
    with Pool(root) as pool:
        listing = pool.user_listing()
    assert listing.users == sorted(set(USERS) - {"carol"})
    assert not any(".fleet" in name for name in [*listing.unknown, *listing.damaged])


def test_export_rerun_replaces_only_its_own_files(root: Path, tmp_path: Path) -> None:
    dest = tmp_path / "exports"
    first = run_fleet(root, "export", dest=dest, workers=2)
    assert first.counts()["ok"] == 5, _failures(first)
    with Pool(root) as pool, pool.session("bob") as mem:
        mem.ingest("bob moved to Nantes.")
    result = run_fleet(root, "export", dest=dest, workers=2)
    again = _by_user(result)
    assert again["bob"].status == "ok" and again["bob"].result["engrams"] == 4
    assert again["alice"].status == "skipped"
    # A run killed after alice's file was renamed into place, before its log line: the
    # next run of the same export finds the file and replaces it.
    log = Path(result.log)
    kept = [line for line in log.read_text().splitlines()
            if not json.loads(line).get("store", "").startswith("alice-")]
    log.write_text("\n".join(kept) + "\n")
    leftover = dest / ".carol-0.jsonl.fleet-0123abcd"  # a killed worker's temporary file
    leftover.write_text("{}")
    resumed = _by_user(run_fleet(root, "export", dest=dest, workers=2))
    assert resumed["alice"].status == "ok" and resumed["bob"].status == "skipped"
    assert not leftover.exists()
    # Starting over forgets which files this export made: it refuses to overwrite them.
    restarted = _by_user(run_fleet(root, "export", dest=dest, workers=2, resume=False))
    assert restarted["alice"].status == "failed" and "already exists" in restarted["alice"].error


def test_a_second_run_of_the_same_operation_is_refused(root: Path) -> None:
    log = Path(run_fleet(root, "stats", workers=1).log)
    with open(log, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(StoreLocked) as info:
            run_fleet(root, "stats", workers=1)
    assert "in progress" in info.value.message


def crash_on_bob(path: Path, marker: str) -> dict[str, object]:
    """A custom operation that kills its worker process on bob's store (a native crash)."""
    if path.name.startswith("bob-"):
        os._exit(7)
    with engramdb.open(path, create=False, read_only=True) as mem:
        return {"count": mem.count, "marker": marker}


def test_a_worker_crash_fails_that_store_only(root: Path) -> None:
    result = run_fleet(root, crash_on_bob, kwargs={"marker": "m"}, workers=2)
    rows = _by_user(result)
    assert rows["bob"].status == "failed" and "died" in rows["bob"].error
    assert {u for u, r in rows.items() if r.status == "ok"} == {"alice", "dave", "erin", DIRECT}
    assert rows["alice"].result == {"count": 3, "marker": "m"}
    assert result.op == "custom" and result.exit_code == 1


def test_reembed_every_store(root: Path) -> None:
    target = HashingEncoder(dim=16)
    result = run_fleet(root, "reembed", encoder="hashing", dim=16, workers=2)
    rows = _by_user(result)
    assert {u for u, r in rows.items() if r.status == "ok"} == GOOD | {DIRECT, "erin"}
    assert rows["alice"].result["engrams"] == 3
    with engramdb.open(root / user_dirname("alice"), create=False) as mem:
        assert mem.fingerprint == target.fingerprint
        assert [h.text for h in mem.recall("guinea pig", top_k=1)] == [_texts("alice")[0]]
    with Pool(root) as pool:  # the users are still listed, from the new stores' manifests
        assert pool.users() == sorted(set(USERS) - {"carol"})
    again = run_fleet(root, "reembed", encoder=target, workers=2)  # same spec: same run
    assert again.counts()["skipped"] == 5
    fresh = _by_user(run_fleet(root, "reembed", encoder=target, workers=2, resume=False))
    assert fresh["alice"].status == "ok" and fresh["alice"].result == {"engrams": 0,
                                                                       "already": True}


def test_bad_input_is_refused(root: Path, tmp_path: Path, monkeypatch) -> None:
    cases = [
        (tmp_path / "missing", "verify", {}),
        (root / user_dirname("alice"), "verify", {}),  # a store, not a root
        (root, "vacuum", {}),
        (root, "export", {}),
        (root, "verify", {"dest": tmp_path}),
        (root, "reembed", {}),
        (root, "reembed", {"encoder": "word2vec"}),
        (root, "verify", {"workers": 0}),
        (root, lambda path: {}, {}),
    ]
    for where, op, kwargs in cases:
        with pytest.raises(InvalidInput) as info:
            run_fleet(where, op, **kwargs)
        assert info.value.hint
    connected = sys.modules.get("ray") is not None and sys.modules["ray"].is_initialized()
    if importlib.util.find_spec("ray") is not None and not connected:  # nobody listens there
        with pytest.raises(RayUnavailable) as info:
            run_fleet(root, "verify", ray_address="127.0.0.1:1")
        assert "cannot reach" in info.value.message
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(RayUnavailable) as info:
        run_fleet(root, "verify", ray_address="local")
    assert "engramdb[ray]" in info.value.hint


# -- the command line ---------------------------------------------------------------------------


def test_cli_json_table_and_exit_codes(shared, root: Path, tmp_path: Path) -> None:
    held_root, pid = shared
    state = ["--state-dir", str(tmp_path / "state")]
    out = CliRunner().invoke(cli, ["fleet", str(held_root), "verify", "--json", *state])
    assert out.exit_code == 1, out.output
    data = json.loads(out.stdout)
    assert data["counts"] == {"ok": 4, "failed": 2, "locked": 1, "skipped": 0}
    assert {s["user"] for s in data["stores"] if s["status"] == "locked"} == {HELD}
    table = CliRunner().invoke(cli, ["fleet", str(held_root), "stats", "-q", *state])
    assert table.exit_code == 1
    assert "locked" in table.stdout and "failed" in table.stdout and "7 stores" in table.stdout
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    for user in DAMAGED:
        shutil.rmtree(clean / user_dirname(user))
    ok = CliRunner().invoke(cli, ["fleet", str(clean), "gc", "-q"])
    assert ok.exit_code == 0, ok.output
    assert "5 ok" in ok.stdout
    again = CliRunner().invoke(cli, ["fleet", str(clean), "gc", "-q"])
    assert again.exit_code == 0 and "5 skipped" in again.stdout
    for args in (["export"], ["verify", str(tmp_path / "x")], ["reembed"],
                 ["stats", "--encoder", "hashing"]):
        bad = CliRunner().invoke(cli, ["fleet", str(clean), *args])
        assert bad.exit_code == 2 and "Traceback" not in bad.output, args


def test_cli_exits_2_when_stores_are_only_locked(root: Path) -> None:
    for user in DAMAGED:
        shutil.rmtree(root / user_dirname(user))
    # This process holds alice open: to the fleet's worker processes, another process.
    with engramdb.open(root / user_dirname("alice"), create=False):
        out = CliRunner().invoke(cli, ["fleet", str(root), "verify", "-q"])
        assert out.exit_code == 2, out.output
        assert "1 locked" in out.stdout and "0 failed" in out.stdout
    after = CliRunner().invoke(cli, ["fleet", str(root), "verify", "-q"])
    assert after.exit_code == 0, after.output  # the locked store is picked up on the re-run
    assert "5 stores: 1 ok, 0 failed, 0 locked, 4 skipped" in after.stdout


# -- Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module: 2 CPUs, no dashboard, a small object store."""
    ray = pytest.importorskip("ray")
    import logging

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20,
                 logging_level=logging.WARNING, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


def test_on_ray_same_report_as_locally(shared, ray_cluster, tmp_path: Path) -> None:
    root, pid = shared
    for op in ("verify", "stats", "gc"):
        local = run_fleet(root, op, workers=2, state_dir=tmp_path / f"local-{op}")
        on_ray = run_fleet(root, op, ray_address="local", state_dir=tmp_path / f"ray-{op}")
        assert on_ray.backend == "ray" and on_ray.workers == 2
        _check_report(on_ray, pid)
        for user, row in _by_user(on_ray).items():
            if op != "stats" and row.status == "ok":  # stats' results hold the clock etc.
                assert row.result == _by_user(local)[user].result, (op, user)
    dest = tmp_path / "exports"
    exported = run_fleet(root, "export", dest=dest, ray_address="local",
                         state_dir=tmp_path / "ray-export")
    _check_report(exported, pid)
    assert len(list(dest.iterdir())) == 4
    assert ray_cluster.is_initialized()  # a connection it did not make is left running


def test_on_ray_resume_and_cli(root: Path, ray_cluster) -> None:
    first = run_fleet(root, "verify", ray_address="local")
    assert first.counts() == {"ok": 5, "failed": 2, "locked": 0, "skipped": 0}
    out = CliRunner().invoke(cli, ["fleet", str(root), "verify", "--json", "--ray"])
    assert out.exit_code == 1, out.output
    data = json.loads(out.stdout)
    assert data["backend"] == "ray"
    assert data["counts"] == {"ok": 0, "failed": 2, "locked": 0, "skipped": 5}
