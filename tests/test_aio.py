"""engramdb.aio: the event loop keeps running while a store works, and the async API gives
what the sync one gives (results and errors). Coroutines run under ``asyncio.run``."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engramdb
import engramdb.aio as aio
from engramdb.encoders import HashingEncoder
from engramdb.errors import InvalidInput, NotFound, StoreClosed, StoreLocked

TEXTS = [f"Turn {i}: I told you about my guinea pig Oscar and carrot number {i}."
         for i in range(20)]


def _open(path: Path) -> engramdb.Store:
    return engramdb.open(path, encoder=HashingEncoder(dim=64))


def _aopen(path: Path, **kwargs: Any) -> aio.Opener:
    return aio.open(path, encoder=HashingEncoder(dim=64), **kwargs)


async def _longest_gap(work: Callable[[], Awaitable[None]]) -> tuple[float, float, int]:
    """Run ``work`` (again, until it has taken 0.2 s: a fast disk must not make the gaps of
    thread switching look big) beside a coroutine that ticks every millisecond; return the
    longest gap between two ticks, the time the work took, and the number of ticks."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.005)  # the ticker is running
    start = time.perf_counter()
    while time.perf_counter() - start < 0.2:
        await work()
    total = time.perf_counter() - start
    done.set()
    await task
    return max(gaps), total, len(gaps)


def test_the_event_loop_keeps_running_while_20_ingests_run(tmp_path: Path) -> None:
    async def main() -> None:
        async with _aopen(tmp_path / "m") as mem:
            async def ingest_async() -> None:
                for text in TEXTS:
                    await mem.ingest(text, role="user", session="s1")

            async def ingest_blocking() -> None:  # what the issue measured
                for text in TEXTS:
                    mem.store.ingest(text + " again", role="user", session="s1")

            longest, total, ticks = await _longest_gap(ingest_async)
            assert longest < total / 4, (longest, total)
            assert ticks >= 20, ticks
            # The measure sees blocking when there is some: the same work called directly
            # stops the ticker for about all of it.
            longest, total, _ = await _longest_gap(ingest_blocking)
            assert longest > total / 2, (longest, total)
            assert (await mem.stats())["count"] == 40

    asyncio.run(main())


def _script_sync(mem: engramdb.Store) -> dict[str, Any]:
    out: dict[str, Any] = {"ingest": [mem.ingest(t, role="user", session="s1") for t in TEXTS]}
    out["many"] = mem.ingest_many(["Lyon was rainy.", "Oscar likes hay."], roles=["bot", None],
                                  metadatas=[{"k": 1}, None])
    out["tick"] = mem.tick(2)
    out["recall"] = [h.to_dict() for h in mem.recall("guinea pig Oscar carrots", top_k=5)]
    out["where"] = [h.to_dict() for h in mem.recall("Oscar", where={"role": "bot"})]
    out["turn"] = mem.integrate("What is my guinea pig called?", top_k=3).to_dict()
    ids = [r.id for r in out["ingest"]]
    mem.reinforce(ids[:2])
    out["get"] = mem.get(ids[0]).to_dict()
    out["forget"] = mem.forget(ids[5])
    out["contains"] = (ids[5] in mem, ids[6] in mem)
    out["vectors"] = mem.vectors(ids[:3])
    out["links"] = mem.links()
    out["log"] = [{k: v for k, v in e.items() if k != "id"} for e in mem.forgetting_log()]
    out["gc"] = {k: v for k, v in mem.gc(dry_run=True).items() if "bytes" not in k}
    out["verify"] = mem.verify().to_dict()
    stats = mem.stats()
    out["stats"] = {k: stats[k] for k in ("count", "kinds", "clock", "generation", "dim")}
    return out


async def _script_async(mem: aio.AsyncStore) -> dict[str, Any]:
    out: dict[str, Any] = {"ingest": [await mem.ingest(t, role="user", session="s1")
                                      for t in TEXTS]}
    out["many"] = await mem.ingest_many(["Lyon was rainy.", "Oscar likes hay."],
                                        roles=["bot", None], metadatas=[{"k": 1}, None])
    out["tick"] = await mem.tick(2)
    out["recall"] = [h.to_dict() for h in await mem.recall("guinea pig Oscar carrots", top_k=5)]
    out["where"] = [h.to_dict() for h in await mem.recall("Oscar", where={"role": "bot"})]
    out["turn"] = (await mem.integrate("What is my guinea pig called?", top_k=3)).to_dict()
    ids = [r.id for r in out["ingest"]]
    await mem.reinforce(ids[:2])
    out["get"] = (await mem.get(ids[0])).to_dict()
    out["forget"] = await mem.forget(ids[5])
    out["contains"] = (await mem.contains(ids[5]), await mem.contains(ids[6]))
    out["vectors"] = await mem.vectors(ids[:3])
    out["links"] = await mem.links()
    out["log"] = [{k: v for k, v in e.items() if k != "id"} for e in await mem.forgetting_log()]
    out["gc"] = {k: v for k, v in (await mem.gc(dry_run=True)).items() if "bytes" not in k}
    out["verify"] = (await mem.verify()).to_dict()
    stats = await mem.stats()
    out["stats"] = {k: stats[k] for k in ("count", "kinds", "clock", "generation", "dim")}
    return out


def test_results_equal_the_sync_api(tmp_path: Path) -> None:
    with _open(tmp_path / "sync") as mem:
        expected = _script_sync(mem)

    async def main() -> dict[str, Any]:
        async with _aopen(tmp_path / "async") as mem:
            got = await _script_async(mem)
            await mem.drain_index()
            await mem.sync()
            await mem.check()
            # Concurrent calls: writes take turns, reads run beside them.
            again = await asyncio.gather(*(mem.ingest(t) for t in TEXTS[:10]),
                                         *(mem.recall(t, top_k=2) for t in TEXTS[:10]))
            assert [r.id for r in again[:10]] == [r.id for r in got["ingest"][:10]]
            assert all(len(hits) == 2 for hits in again[10:])
            return got

    got = asyncio.run(main())
    np.testing.assert_array_equal(got.pop("vectors"), expected.pop("vectors"))
    assert got == expected
    assert got["forget"] == 1 and got["contains"] == (False, True) and got["verify"]["ok"]


def test_recalled_hits_need_no_store_after_close(tmp_path: Path) -> None:
    async def main() -> None:
        mem = await _aopen(tmp_path / "m")
        await mem.ingest("I adopted a guinea pig named Oscar.", role="user", session="s1",
                         metadata={"mood": "happy"})
        hits = await mem.recall("guinea pig")
        turn = await mem.integrate("What is my guinea pig called?")
        await mem.close()
        await mem.close()  # idempotent
        assert mem.closed
        # Loaded in the worker thread: nothing here touches the closed store.
        assert (hits[0].session, hits[0].role, hits[0].metadata) == ("s1", "user",
                                                                     {"mood": "happy"})
        json.dumps([h.to_dict() for h in hits] + [turn.to_dict()])

    asyncio.run(main())


def _raised(call: Callable[[], object]) -> BaseException:
    with pytest.raises(engramdb.errors.EngramError) as err:
        call()
    return err.value


def test_errors_propagate_as_the_same_exceptions(tmp_path: Path) -> None:
    unknown = "0" * 64
    mem = _open(tmp_path / "sync")
    cases: dict[str, tuple[Callable[[], object], Callable[[aio.AsyncStore], Awaitable[object]]]]
    cases = {
        "empty text": (lambda: mem.ingest(""), lambda a: a.ingest("")),
        "bad top_k": (lambda: mem.recall("x", top_k=0), lambda a: a.recall("x", top_k=0)),
        "not an id": (lambda: mem.get("nope"), lambda a: a.get("nope")),
        "unknown id": (lambda: mem.get(unknown), lambda a: a.get(unknown)),
        "forget unknown": (lambda: mem.forget([unknown]), lambda a: a.forget([unknown])),
        "bad tick": (lambda: mem.tick(-1), lambda a: a.tick(-1)),
    }
    expected = {name: _raised(sync) for name, (sync, _) in cases.items()}
    mem.close()
    assert isinstance(expected["unknown id"], NotFound)
    assert isinstance(expected["empty text"], InvalidInput)

    async def main() -> None:
        async with _aopen(tmp_path / "async") as amem:
            for name, (_, call) in cases.items():
                with pytest.raises(type(expected[name])) as err:
                    await call(amem)
                assert type(err.value) is type(expected[name]), name
                assert str(err.value) == str(expected[name]), name
            with pytest.raises(StoreLocked):  # a second handle on the same store
                await _aopen(tmp_path / "async")
        with pytest.raises(StoreClosed):
            await amem.ingest("after close")
        with pytest.raises(InvalidInput):
            await aio.open(tmp_path / "none", encoder="not an encoder")  # type: ignore[arg-type]

    asyncio.run(main())


def test_open_mirrors_engramdb_open_and_wraps_every_store_method(tmp_path: Path) -> None:
    sync_params = list(inspect.signature(engramdb.open).parameters.values())
    async_params = list(inspect.signature(aio.open).parameters.values())
    assert async_params[:-1] == sync_params and async_params[-1].name == "executor"

    public = {name for name in dir(engramdb.Store) if not name.startswith("_")}
    wrapped = {name for name in public if inspect.iscoroutinefunction(
        getattr(aio.AsyncStore, name, None))}
    assert inspect.iscoroutinefunction(aio.AsyncStore.contains)  # Store.__contains__
    listed = set(aio.NOT_WRAPPED)
    assert listed <= public, f"NOT_WRAPPED names what Store lacks: {sorted(listed - public)}"
    assert not wrapped & listed, sorted(wrapped & listed)
    # A new public Store method must be wrapped in AsyncStore or listed in NOT_WRAPPED.
    unsorted = public - wrapped - listed - {"path", "closed"}
    assert not unsorted, f"wrap these in engramdb.aio.AsyncStore or list them: {unsorted}"
    for name in wrapped - {"close"}:
        method = getattr(aio.AsyncStore, name)
        assert method.__doc__.startswith(f"Await :meth:`Store.{name}`"), name
        assert inspect.signature(method) == inspect.signature(getattr(engramdb.Store, name))

    async def main() -> None:
        async with _aopen(tmp_path / "m") as mem:
            assert isinstance(mem, aio.AsyncStore) and not mem.closed
            assert mem.path == (tmp_path / "m").resolve() and "open" in repr(mem)
            await mem.ingest("hello")
            assert await mem.run(lambda store, n: store.count + n, 1) == 2
        assert mem.closed and mem.store.closed
        wrapped_store = aio.AsyncStore(_open(tmp_path / "m"))
        async with wrapped_store as again:
            assert again is wrapped_store and again.store.count == 1
        assert wrapped_store.closed

    asyncio.run(main())


def test_a_cancelled_open_closes_the_store_it_opened(tmp_path: Path) -> None:
    opened: list[engramdb.Store] = []  # held here, so only a close() can release the store

    def opening() -> engramdb.Store:
        opened.append(_open(tmp_path / "m"))
        time.sleep(0.1)  # the caller is cancelled meanwhile
        return opened[-1]

    async def main() -> None:
        task = asyncio.create_task(aio.Opener(opening, None).__aenter__())
        while not opened:  # the store is open in a worker thread
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with _aopen(tmp_path / "m", lock_timeout=30) as mem:  # gets the lock
            assert await mem.stats()
        assert opened[0].closed

    asyncio.run(main())


def test_async_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with aio.AsyncPool(tmp_path / "pool", encoder=HashingEncoder(dim=64),
                                 max_open=2) as pool:
            assert pool.path_for("alice").parent == pool.pool.root
            async with pool.session("alice") as mem:
                assert isinstance(mem, aio.AsyncStore)
                await mem.ingest("I adopted a guinea pig named Oscar.", role="user")
            bob = await pool.acquire("bob")
            await bob.ingest("I live in Lyon.")
            await pool.release(bob)
            hits = await (await pool.get("alice")).recall("guinea pig")
            assert hits[0].text == "I adopted a guinea pig named Oscar."
            assert pool.open_count == 2 and await pool.close_idle() == 0
            with pytest.raises(InvalidInput):
                await pool.acquire("")
            async with aio.AsyncStore(_open(tmp_path / "elsewhere")) as stranger:
                with pytest.raises(InvalidInput):
                    await pool.release(stranger)
            # A lease taken for a cancelled caller is given back.
            released = threading.Event()
            release = pool.pool.release

            def spy(store: engramdb.Store) -> None:
                release(store)
                released.set()

            monkeypatch.setattr(pool.pool, "release", spy)
            task = asyncio.create_task(pool.acquire("carol"))
            await asyncio.sleep(0)  # the acquire is under way in a worker thread
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.to_thread(released.wait, 30)
            start = time.monotonic()
            await pool.close(wait=20)
            assert time.monotonic() - start < 10  # no lease left to wait for
        with pytest.raises(StoreClosed):
            await pool.acquire("alice")

    asyncio.run(main())
