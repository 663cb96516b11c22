"""Single writer: a second process gets StoreLocked with the holder's pid, quickly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engramdb
from engramdb.errors import StoreLocked
from tests.conftest import PYTHON, python_env

HOLDER = """
import sys, time, engramdb
from engramdb.encoders import HashingEncoder
mem = engramdb.open(sys.argv[1], encoder=HashingEncoder(dim=16))
mem.ingest("held")
print("ready", flush=True)
sys.stdin.readline()
mem.close()
print("closed", flush=True)
sys.stdin.readline()
"""


def test_second_process_gets_store_locked_with_pid_then_opens(store_path: Path) -> None:
    holder = subprocess.Popen(
        [PYTHON, "-c", HOLDER, str(store_path)], env=python_env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        start = time.monotonic()
        with pytest.raises(StoreLocked) as info:
            engramdb.open(store_path)
        assert time.monotonic() - start < 1.0
        assert info.value.pid == holder.pid
        assert str(holder.pid) in str(info.value)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "closed"
        with engramdb.open(store_path, lock_timeout=5) as mem:
            assert len(mem) == 1
    finally:
        holder.kill()
        holder.wait()


def test_waits_up_to_its_timeout(store_path: Path, encoder) -> None:
    with engramdb.open(store_path, encoder=encoder):
        start = time.monotonic()
        with pytest.raises(StoreLocked):
            engramdb.open(store_path, lock_timeout=0.3)
        # It waited its timeout and then gave up; the upper bound only says it did not hang
        # (a loaded 2-core CI machine took 2.2 s once).
        assert 0.25 < time.monotonic() - start < 15.0


def test_same_process_second_handle_is_refused(store_path: Path, encoder) -> None:
    with engramdb.open(store_path, encoder=encoder):
        with pytest.raises(StoreLocked, match="this process"):
            engramdb.open(store_path)


def test_threads_share_one_store(mem) -> None:
    import threading

    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                mem.ingest(f"thread {n} item {i}")
                mem.recall(f"thread {n}", top_k=3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(mem) == 80 and mem.verify().ok


@pytest.mark.skipif(sys.platform != "linux", reason="fork semantics")
def test_forked_child_cannot_use_parent_handle(mem) -> None:
    import os

    pid = os.fork()
    if pid == 0:  # child
        try:
            mem.ingest("from the child")
            os._exit(1)
        except engramdb.errors.StoreClosed:
            os._exit(0)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(mem) == 0


def test_a_waiter_locks_the_directory_that_replaced_the_one_it_waited_on(tmp_path: Path) -> None:
    """A store's directory swapped while an open waits (``engramdb.reembed`` does that in
    one rename): the waiter must end up holding the new store's LOCK, not the old file's."""
    import threading

    from engramdb.storage.locking import LOCK_NAME, StoreLock

    path, new = tmp_path / "s", tmp_path / "new"
    path.mkdir()
    new.mkdir()
    (new / LOCK_NAME).write_text("")
    holder = StoreLock(path)
    holder.acquire()
    waiter = StoreLock(path)
    done: list[BaseException | None] = []

    def wait() -> None:
        try:
            waiter.acquire(timeout=30)
            done.append(None)
        except BaseException as exc:  # pragma: no cover - reported below
            done.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    path.rename(tmp_path / "old")
    new.rename(path)
    holder.release()  # the old LOCK is free now; the waiter must not keep it
    thread.join(30)
    assert done == [None]
    held = os.fstat(waiter._fd)  # noqa: SLF001 - the file the lock is on
    assert (held.st_dev, held.st_ino) == (os.stat(path / LOCK_NAME).st_dev,
                                          os.stat(path / LOCK_NAME).st_ino)
    with pytest.raises(StoreLocked):
        StoreLock(path).acquire()
    waiter.release()
