"""Handles in real deployments: a Pool across fork(), a handle dropped without close(), and
the CLI when close() fails (issue 18, items 4-6).

The fork tests fork this process: the child runs a check, reports through its exit code and
always leaves with ``os._exit`` (it must never return into pytest). A child that exits the
normal way (interpreter shutdown) is tested in a fresh interpreter instead.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from engramdb.cli.main import main

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.errors import StorageError, StoreClosed, StoreLocked
from engramdb.pool import Pool
from tests.conftest import PYTHON, python_env

fork_only = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux",
                               reason="fork semantics")


def _in_child(check: Callable[[], None], timeout: float = 120.0) -> int:
    """Run ``check`` in a forked child; return its exit code (0: passed, 1: assertion, 2: any
    other exception, 3: StoreClosed, 4: StoreLocked)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 2
        try:
            check()
            code = 0
        except AssertionError:
            code = 1
        except StoreClosed:
            code = 3
        except StoreLocked:
            code = 4
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.01)


def _pool(root: Path) -> Pool:
    # A short lock wait: a child that finds the parent's lock fails in 1 s, not 10.
    return Pool(root, encoder=HashingEncoder(dim=32), lock_timeout=1.0)


# -- a Pool across fork() -----------------------------------------------------------------------


@fork_only
def test_pool_warmed_up_before_fork_serves_the_child(tmp_path: Path) -> None:
    """gunicorn --preload with a warm-up: the parent used the pool, then forked workers."""
    with _pool(tmp_path / "users") as pool:
        for user in ("alice", "bob"):
            with pool.session(user) as mem:
                mem.ingest(f"{user} adopted a guinea pig named Oscar.")

        def child() -> None:
            for user in ("alice", "bob", "alice"):
                with pool.session(user) as mem:
                    assert mem.recall("guinea pig", top_k=1)[0].text.startswith(user)
            with pool.session("alice") as mem:
                mem.ingest("written by the child")
            pool.close()

        assert _in_child(child) == 0
        with pool.session("alice") as mem:  # the parent opens it again, child's write included
            assert sorted(h.text for h in mem.recall("child guinea pig", top_k=5)) == [
                "alice adopted a guinea pig named Oscar.", "written by the child"]
            assert mem.verify().ok


@fork_only
def test_fork_inside_a_session_drops_the_inherited_handle(tmp_path: Path) -> None:
    """A store leased at the fork stays the parent's: the child's handle is refused, ending
    the session does not raise, other users open normally; the parent goes on unharmed."""
    with _pool(tmp_path / "users") as pool:
        with pool.session("bob") as mem:
            mem.ingest("bob's note")
        with pool.session("alice") as mem:
            mem.ingest("alice's first note")

            def child() -> None:
                with pytest.raises(StoreClosed):
                    mem.ingest("the child must not write through the parent's handle")
                # Still locked by the parent (it holds the lease): a clean StoreLocked.
                with pytest.raises(StoreLocked):
                    with pool.session("alice"):
                        pass
                with pool.session("bob") as bob:
                    bob.ingest("bob, from the child")
                pool.release(mem)  # what leaving this `with` does: a no-op in the child
                assert pool.open_count == 1  # bob, opened by the child
                pool.close()

            assert _in_child(child) == 0
            mem.ingest("alice's second note")  # the parent's handle still works
            assert mem.count == 2 and mem.verify().ok
        with pool.session("bob") as bob:
            assert bob.count == 2


_NORMAL_EXIT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from engramdb.encoders import HashingEncoder
    from engramdb.pool import Pool

    root = Path(sys.argv[1])
    pool = Pool(root, encoder=HashingEncoder(dim=32), lock_timeout=1.0)
    with pool.session("carol") as mem:
        mem.ingest_many([f"note {i}" for i in range(200)])
    with pool.session("alice") as mem:
        mem.ingest_many([f"note {i}" for i in range(200)])  # the WAL holds these
        store = mem.path

        def files():
            return {p.name: (p.stat().st_size, p.stat().st_mtime_ns)
                    for p in store.iterdir() if p.is_file()}

        before = files()
        pid = os.fork()
        if pid == 0:
            with pool.session("carol") as other:  # a handle of the child's own
                other.ingest("from the child")
            sys.exit(0)  # interpreter shutdown, with the inherited handle still referenced
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code == 0, f"the child exited with {code}"
        assert files() == before, "the child touched the parent's store"
        mem.ingest("after the fork")
        assert mem.count == 201 and mem.verify().ok
    with pool.session("carol") as mem:
        assert mem.count == 201 and mem.verify().ok
    pool.close()
    print("ok")
""")


@fork_only
def test_child_exiting_normally_leaves_the_parents_store_alone(tmp_path: Path) -> None:
    """A child's interpreter shutdown must not free the handles it inherited: DuckDB would
    checkpoint the parent's catalog and crash the child (SIGSEGV)."""
    out = subprocess.run([PYTHON, "-c", _NORMAL_EXIT, str(tmp_path / "users")],
                         capture_output=True, text=True, env=python_env(), timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# -- a handle dropped without close() -----------------------------------------------------------


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("engramdb")}


@pytest.mark.parametrize("durability", ["full", "fast"])
def test_dropped_handle_releases_its_lock(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "alice.engram"
    threads = _threads()
    mem = engramdb.open(path, encoder=HashingEncoder(dim=32),
                        settings={"durability": durability})
    ids = [r.id for r in mem.ingest_many([f"note {i}" for i in range(300)])]
    mem.integrate("what was note 7?")
    ref = weakref.ref(mem)
    del mem
    gc.collect()
    assert ref() is None  # nothing (thread, catalog, finalizer) kept the Store alive
    assert not _threads() - threads  # its indexer and prefault threads stopped
    with engramdb.open(path) as again:
        assert again.count == 301
        assert again.get(ids[7]).text == "note 7"
        assert again.verify().ok


def test_reopen_after_del_without_gc_collect(tmp_path: Path) -> None:
    """A notebook: ``del mem`` then ``mem = engramdb.open(p)`` works at once (a Store lives in
    reference cycles, so ``del`` alone does not free it; open collects it)."""
    path = tmp_path / "alice.engram"
    mem = engramdb.open(path, encoder=HashingEncoder(dim=32))
    mem.ingest("I adopted a guinea pig named Oscar.")
    del mem
    mem = engramdb.open(path)
    try:
        assert mem.recall("guinea pig")[0].text == "I adopted a guinea pig named Oscar."
    finally:
        mem.close()


_EXIT_OPEN = textwrap.dedent("""
    import sys
    import engramdb
    from engramdb.encoders import HashingEncoder

    mem = engramdb.open(sys.argv[1], encoder=HashingEncoder(dim=64))
    mem.ingest_many([f"note number {i}" for i in range(20_000)])
    # no close(): the interpreter exits while the background indexer is busy
""")


def test_process_exit_with_an_open_handle_is_clean(tmp_path: Path) -> None:
    """A script that never calls close() exits 0 (it died in hnswlib with SIGABRT, "terminate
    called without an active exception") and its writes are all there."""
    path = tmp_path / "alice.engram"
    out = subprocess.run([PYTHON, "-c", _EXIT_OPEN, str(path)], capture_output=True, text=True,
                         env=python_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    with engramdb.open(path) as mem:
        assert mem.count == 20_000 and mem.verify().ok


def test_a_live_handle_still_holds_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "alice.engram"
    with engramdb.open(path, encoder=HashingEncoder(dim=32)) as mem:
        with pytest.raises(StoreLocked):
            engramdb.open(path)
        mem.ingest("still mine")
        assert mem.count == 1


def test_close_after_collection_of_another_handle_is_clean(tmp_path: Path) -> None:
    """close() and the finalizer release once: a closed handle's later collection (and a
    second close) never releases a lock that a newer handle holds."""
    path = tmp_path / "alice.engram"
    first = engramdb.open(path, encoder=HashingEncoder(dim=32))
    first.close()
    second = engramdb.open(path)
    first.close()
    del first
    gc.collect()
    with pytest.raises(StoreLocked):
        engramdb.open(path)
    second.ingest("written after the old handle was collected")
    second.close()


# -- the CLI when close() fails -----------------------------------------------------------------


def _build(path: Path) -> str:
    with engramdb.open(path, encoder=HashingEncoder(dim=64)) as mem:
        mem.ingest_many(["I adopted a guinea pig named Oscar.", "My sister lives in Lisbon."])
        return mem.ingest("The meeting moved to Thursday.").id


def _failing_close(monkeypatch: pytest.MonkeyPatch) -> None:
    real_close = engramdb.Store.close

    def close(self: engramdb.Store) -> None:
        real_close(self)
        raise StorageError("cannot save the vector index: [Errno 28] No space left on device")

    monkeypatch.setattr(engramdb.Store, "close", close)


@pytest.mark.parametrize("command", ["inspect", "stats", "ls", "show", "recall", "recall-json",
                                     "forget", "gc", "rebuild", "verify", "report", "export",
                                     "ingest"])
def test_cli_close_failure_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            command: str) -> None:
    """A full disk when close() saves the index: one line and exit 1, never a traceback, and
    verify does not call the intact store damaged."""
    path = tmp_path / "alice.engram"
    ident = _build(path)
    _failing_close(monkeypatch)
    notes = tmp_path / "notes.txt"
    notes.write_text("a new note\n")
    args = {"show": [ident], "recall": ["guinea pig"], "recall-json": ["guinea pig", "--json"],
            "forget": [ident], "report": ["-o", str(tmp_path / "r.html")],
            "export": [str(tmp_path / "out.jsonl"), "-q"], "ingest": [str(notes), "-q"]}
    name = command.split("-")[0]
    result = CliRunner().invoke(main, [name, str(path), *args.get(command, [])],
                                env={"COLUMNS": "120"})
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output
    assert "Traceback" not in result.output and "damaged" not in result.output


def test_cli_command_error_wins_over_a_close_failure(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The command failed, then so did close(): the command's own error is the one shown."""
    path = tmp_path / "alice.engram"
    _build(path)
    _failing_close(monkeypatch)
    result = CliRunner().invoke(main, ["show", str(path), "ab" * 32], env={"COLUMNS": "120"})
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1 and "no live engram" in result.output, result.output
    assert "No space left" not in result.output


def test_a_closed_handle_keeps_no_segment_file_open(tmp_path: Path) -> None:
    """A closed Store may live on in a reference cycle until the garbage collector runs; its
    segment maps (a descriptor each) must go at close(), or a process that opens many stores
    runs out of descriptors (and a map that fails for that is a StorageError, not damage)."""
    def vec_fds() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}").endswith(".vec")
            except OSError:
                pass
        return n

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    path = tmp_path / "m"
    enc = HashingEncoder(dim=32)
    with engramdb.open(path, encoder=enc, settings={"segment_bytes": 4096}) as mem:
        mem.ingest_many([f"text {i}" for i in range(640)])  # 20 segment files
    gc.disable()  # stands in for a garbage collector that runs late
    try:
        for _ in range(3):
            with engramdb.open(path, encoder=enc) as mem:
                mem.recall("text 5", top_k=3)
            assert vec_fds() == 0
    finally:
        gc.enable()
