"""Pool(multiprocess=True): several worker processes, each with its own Pool over one root,
serving the same users: no errors, no lost turns, no starvation, clear errors and hints."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

import engramdb
import engramdb.aio
from engramdb.encoders import HashingEncoder
from engramdb.errors import InvalidInput, NotAStore, StoreLocked
from engramdb.pool import LOCK_TIMEOUT, MULTIPROCESS_LOCK_TIMEOUT, Pool
from tests.conftest import PYTHON, python_env

LONG_LIFE = {"short_term_lifespan": 1e9}  # no acknowledged turn expires before the check

# One worker process: THREADS threads, each doing REQUESTS sessions of one integrate turn on a
# user drawn at random; every acknowledged (user, id) is written to OUT as a JSON line at once,
# every error too. argv: root, worker index, users (comma-separated), threads, requests, out.
WORKER = """
import json, random, sys, threading, time
from engramdb.encoders import HashingEncoder
from engramdb.pool import Pool

root, index, users, threads, requests, out = sys.argv[1:7]
index, threads, requests = int(index), int(threads), int(requests)
users = users.split(",")
lock = threading.Lock()
log = open(out, "a", buffering=1)

def work(pool, thread):
    rng = random.Random(index * 1000 + thread)
    for n in range(requests):
        user = rng.choice(users)
        try:
            with pool.session(user) as mem:
                turn = mem.integrate(f"worker {index} thread {thread} request {n} for {user}")
            line = {"user": user, "id": turn.id}
        except Exception as exc:
            line = {"user": user, "error": f"{type(exc).__name__}: {exc}"}
        with lock:
            log.write(json.dumps(line) + "\\n")

with Pool(root, encoder=HashingEncoder(dim=64), settings={"short_term_lifespan": 1e9},
          multiprocess=True) as pool:
    workers = [threading.Thread(target=work, args=(pool, t)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert pool.open_count == 0, pool.open_count
"""

# Opens one user's store through a Pool in a loop, as fast as it can, until stdin closes; says
# "ready" once it holds the store the first time. argv: root, user, multiprocess (0/1).
LOOPER = """
import sys, threading
from engramdb.encoders import HashingEncoder
from engramdb.pool import Pool

stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
with Pool(sys.argv[1], encoder=HashingEncoder(dim=64),
          multiprocess=sys.argv[3] == "1") as pool:
    n = 0
    while not stop.is_set():
        with pool.session(sys.argv[2]) as mem:
            mem.ingest(f"loop {n}")
            if n == 0:
                print("ready", flush=True)
        n += 1
"""

# Holds a store open with engramdb.open (no Pool) until told: "ready", then on a line from
# stdin closes it and says "closed". argv: path.
HOLDER = """
import sys, engramdb
from engramdb.encoders import HashingEncoder
mem = engramdb.open(sys.argv[1], encoder=HashingEncoder(dim=64))
print("ready", flush=True)
sys.stdin.readline()
mem.close()
print("closed", flush=True)
sys.stdin.readline()
"""


def _spawn(code: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-c", code, *map(str, args)], env=python_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _run_workers(root: Path, users: list[str], processes: int, threads: int,
                 requests: int) -> tuple[dict[str, list[str]], list[str]]:
    """Run the worker processes to the end; return the acknowledged ids per user and every
    error any of them met."""
    outs = [root.parent / f"worker-{i}.jsonl" for i in range(processes)]
    procs = [_spawn(WORKER, root, i, ",".join(users), threads, requests, out)
             for i, out in enumerate(outs)]
    codes = [p.wait(timeout=120) for p in procs]
    acked: dict[str, list[str]] = {u: [] for u in users}
    errors = [f"worker exit codes {codes}"] if any(codes) else []
    for out in outs:
        for line in out.read_text().splitlines():
            record = json.loads(line)
            if "error" in record:
                errors.append(f"{record['user']}: {record['error']}")
            else:
                acked[record["user"]].append(record["id"])
    return acked, errors


def _check_stores(root: Path, acked: dict[str, list[str]]) -> None:
    """Every store verifies clean and holds every acknowledged turn."""
    with Pool(root) as pool:
        for user, ids in acked.items():
            with pool.session(user) as mem:
                assert mem.verify().ok, user
                missing = [i for i in ids if i not in mem]
                assert not missing, f"{user}: {len(missing)} acknowledged turns missing"


def test_four_processes_share_users_without_errors_or_lost_turns(tmp_path: Path) -> None:
    root = tmp_path / "users"
    users = ["alice", "bob", "carol"]
    start = time.monotonic()
    acked, errors = _run_workers(root, users, processes=4, threads=2, requests=6)
    assert not errors, errors[:5]
    assert sum(len(ids) for ids in acked.values()) == 4 * 2 * 6
    assert time.monotonic() - start < 60  # about 10 s on 2 busy cores
    _check_stores(root, acked)
    with Pool(root) as pool:
        assert pool.users() == sorted(u for u in users if acked[u])


def test_two_processes_alternating_on_one_user_get_no_store_locked(tmp_path: Path) -> None:
    # The old failure: a Pool kept the store open while idle, so the other process waited its
    # whole lock_timeout and got StoreLocked. Now each session closes the store behind it.
    root = tmp_path / "users"
    acked, errors = _run_workers(root, ["alice"], processes=2, threads=1, requests=6)
    assert not errors, errors[:5]
    assert len(acked["alice"]) == 12
    _check_stores(root, acked)


def test_a_process_reopening_a_user_in_a_loop_does_not_starve_a_waiting_one(
        tmp_path: Path) -> None:
    root = tmp_path / "users"
    looper = _spawn(LOOPER, root, "alice", 1)
    try:
        assert looper.stdout.readline().strip() == "ready"
        with Pool(root, encoder=HashingEncoder(dim=64), multiprocess=True,
                  lock_timeout=10) as pool:
            for n in range(3):  # the looper gets it back in between, and gives it up again
                start = time.monotonic()
                with pool.session("alice") as mem:
                    mem.ingest(f"waited for my turn {n}")
                assert time.monotonic() - start < 5
    finally:
        looper.stdin.close()
        assert looper.wait(timeout=30) == 0
    with engramdb.open(Pool(root).path_for("alice")) as mem:
        assert mem.verify().ok and mem.count >= 4


def test_default_mode_store_locked_hint_points_at_multiprocess(tmp_path: Path) -> None:
    root = tmp_path / "users"
    looper = _spawn(LOOPER, root, "alice", 0)  # the default mode keeps the store open
    try:
        assert looper.stdout.readline().strip() == "ready"
        with Pool(root, lock_timeout=0.2) as pool, pytest.raises(StoreLocked) as info:
            pool.acquire("alice")
        assert info.value.pid == looper.pid
        assert "multiprocess=True" in info.value.hint and "route each user" in info.value.hint
    finally:
        looper.stdin.close()
        looper.wait(timeout=30)


def test_multiprocess_waits_for_a_holder_then_times_out_with_a_hint(tmp_path: Path) -> None:
    root = tmp_path / "users"
    path = Pool(root).path_for("alice")
    holder = _spawn(HOLDER, path)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with Pool(root, multiprocess=True, lock_timeout=0.3) as pool:
            start = time.monotonic()
            with pytest.raises(StoreLocked) as info:
                pool.acquire("alice")
            assert 0.3 <= time.monotonic() - start < 2
            assert info.value.pid == holder.pid and "waited" in info.value.message
            assert "lock_timeout" in info.value.hint and "one worker" in info.value.hint
            assert pool.open_count == 0
        # A waiter within its timeout gets the store once the holder lets go.
        with Pool(root, multiprocess=True, lock_timeout=20) as pool:
            def let_go() -> None:
                holder.stdin.write("\n")
                holder.stdin.flush()

            threading.Timer(0.5, let_go).start()
            start = time.monotonic()
            with pool.session("alice") as mem:
                mem.ingest("after the holder")
            assert 0.4 < time.monotonic() - start < 10
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_threads_share_one_handle_which_closes_with_the_last_lease(tmp_path: Path) -> None:
    root = tmp_path / "users"
    with Pool(root, encoder=HashingEncoder(dim=64), multiprocess=True) as pool:
        barrier = threading.Barrier(4)
        seen: list[engramdb.Store] = []

        def work(n: int) -> None:
            with pool.session("alice") as mem:
                barrier.wait(timeout=30)  # all four hold a lease at once
                mem.ingest(f"thread {n}")
                seen.append(mem)
                barrier.wait(timeout=30)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(seen) == 4 and len({id(s) for s in seen}) == 1
        assert seen[0].closed and pool.open_count == 0 and pool.close_idle() == 0
        with engramdb.open(pool.path_for("alice")) as mem:  # the lock is free: closed at once
            assert mem.count == 4


def test_arguments_are_checked(tmp_path: Path) -> None:
    root = tmp_path / "users"
    assert Pool(root).lock_timeout == LOCK_TIMEOUT == 10
    assert Pool(root, multiprocess=True).lock_timeout == MULTIPROCESS_LOCK_TIMEOUT == 30
    assert Pool(root, multiprocess=True, lock_timeout=0).lock_timeout == 0
    assert "multiprocess" in repr(Pool(root, multiprocess=True))
    for kwargs in ({"multiprocess": "yes"}, {"multiprocess": 1}, {"multiprocess": None},
                   {"lock_timeout": -1}, {"lock_timeout": "30"}, {"lock_timeout": True},
                   {"lock_timeout": float("nan")}, {"create": "no"},
                   {"multiprocess": True, "lock_timeout": -0.5}):
        with pytest.raises(InvalidInput):
            Pool(root, **kwargs)
    with Pool(root, encoder=HashingEncoder(dim=64), multiprocess=True) as pool:
        with pytest.raises(InvalidInput) as info:
            pool.get("alice")
        assert "session" in info.value.hint
        with pytest.raises(InvalidInput):
            pool.acquire("")
    with Pool(root, multiprocess=True, create=False) as pool:
        with pytest.raises(NotAStore):
            pool.acquire("nobody")
        assert not pool.path_for("nobody").exists() and pool.open_count == 0


def test_async_pool_takes_multiprocess(tmp_path: Path) -> None:
    async def main() -> None:
        async with engramdb.aio.AsyncPool(tmp_path / "users", encoder=HashingEncoder(dim=64),
                                          multiprocess=True) as pool:
            assert pool.pool.multiprocess and pool.pool.lock_timeout == 30
            async with pool.session("alice") as mem:
                await mem.ingest("hello")
            assert pool.open_count == 0
        with pytest.raises(InvalidInput):
            engramdb.aio.AsyncPool(tmp_path / "users", multiprocess="yes")

    asyncio.run(main())
