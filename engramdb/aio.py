"""asyncio wrappers: :class:`AsyncStore` and :class:`AsyncPool` await every blocking call of a
:class:`~engramdb.store.Store` or :class:`~engramdb.pool.Pool` in a worker thread.

A write waits for an fsync and a DuckDB commit, a recall for the encoder and the catalog:
called straight from a coroutine they stop the event loop (20 ``ingest`` calls: about 0.3 to
0.6 s in which no other request is served). Here each call runs in the loop's default
executor (or the ``executor`` given), so the loop keeps serving while it waits::

    import engramdb.aio
    from engramdb.encoders import HashingEncoder

    async with engramdb.aio.open("memories/alice.engram", encoder=HashingEncoder()) as mem:
        await mem.ingest("I adopted a guinea pig named Oscar.", role="user")
        hits = await mem.recall("what pets do I have?", top_k=5)

The Store does the work and its guarantees hold unchanged: it is thread-safe, writes take
turns on its write lock, recalls run beside them. What differs:

- results never touch the store again: ``recall`` and ``integrate`` load the hits'
  occurrences in the worker thread (one query per recall, about 2 ms), so reading
  ``hit.session`` on the loop does no I/O and still works after the store is closed;
- cancelling the task that awaits a call does not stop the call: the worker thread finishes
  it (a write is then acknowledged as it would be without asyncio) and its result is
  dropped; a store opened, or a pool lease taken, for a cancelled caller is closed or
  released again;
- each call that waits (for the write lock, a slow encoder) holds one executor thread
  meanwhile: with many concurrent writers to one store, pass an ``executor`` of your own so
  the loop's default one (also used for DNS lookups) is not used up.

Instance attributes and in-memory reads (``count``, ``clock``, ``settings``...) are not
wrapped: read them on :attr:`AsyncStore.store`. :data:`NOT_WRAPPED` lists every public name
of Store without an async twin, and why.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from engramdb.encoders import Encoder
from engramdb.pool import Pool, UserListing
from engramdb.settings import Settings
from engramdb.store import Store
from engramdb.store import open as open_store
from engramdb.types import Recall, Turn

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# Every public name of Store that AsyncStore does not wrap, and why (tests/test_aio.py checks
# that each public name of Store is either wrapped or listed here).
_IN_MEMORY = "in memory, no I/O and no lock: read it on AsyncStore.store"
NOT_WRAPPED: dict[str, str] = {
    **{name: _IN_MEMORY for name in (
        "catalog", "clock", "context", "count", "dim", "fingerprint", "hot", "index", "indexer",
        "lexical", "manifest", "segments", "settings")},
    "encoder": "built from the manifest on first use (may load a model): read it in run()",
    "snapshot": "holds the write lock on one thread for a with-block: run the whole block "
                "in run()",
    "iter_engrams": "a generator that reads page by page: await engrams(limit=, offset=) "
                    "for each page instead",
    "restorer": "the machinery of engramdb.transfer.import_store: run that in a worker thread",
}


async def _in_thread(executor: Executor | None, fn: Callable[P, T], *args: P.args,
                     **kwargs: P.kwargs) -> T:
    """Await ``fn(*args, **kwargs)`` run in ``executor`` (None: the loop's default one), with
    the caller's context variables, as ``asyncio.to_thread`` does."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await loop.run_in_executor(executor, call)


async def _undone_if_cancelled(executor: Executor | None, fn: Callable[[], T],
                               undo: Callable[[T], object]) -> T:
    """Await ``fn()`` in a worker thread; if the caller is cancelled meanwhile, ``undo`` its
    result once it arrives (close a store just opened, end a lease just taken)."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(executor, functools.partial(contextvars.copy_context().run,
                                                              fn))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        def later(done: asyncio.Future[T]) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            try:
                loop.run_in_executor(executor, undo, done.result())
            except RuntimeError:  # the executor or the loop is shutting down
                undo(done.result())

        future.add_done_callback(later)
        raise


def _loaded(hits: list[Recall]) -> list[Recall]:
    """``hits`` with their occurrences loaded (one query for all of them), so that reading
    them later does no I/O and needs no open store."""
    for hit in hits:
        _ = hit.occurrences
    return hits


def _turn_loaded(turn: Turn) -> Turn:
    _loaded(turn.recalled)
    return turn


def _in_worker(
    method: Callable[Concatenate[Store, P], R],
    after: Callable[[R], R] | None = None,
    name: str | None = None,
) -> Callable[Concatenate[AsyncStore, P], Coroutine[Any, Any, R]]:
    """An async method of AsyncStore that awaits ``method`` (a method of Store) in a worker
    thread, with the same parameters; ``after`` runs on the result in that thread too."""

    def work(store: Store, *args: Any, **kwargs: Any) -> R:
        result = method(store, *args, **kwargs)
        return result if after is None else after(result)

    async def call(self: AsyncStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await _in_thread(self._executor, work, self._store, *args, **kwargs)

    call.__name__ = name or method.__name__
    call.__qualname__ = f"AsyncStore.{call.__name__}"
    call.__doc__ = (f"Await :meth:`Store.{method.__name__}` in a worker thread; same "
                    f"parameters, result and errors.\n\n{inspect.cleandoc(method.__doc__ or '')}")
    call.__wrapped__ = method  # type: ignore[attr-defined] - help() shows Store's parameters
    return call


class AsyncStore:
    """A :class:`~engramdb.store.Store` for asyncio: every method that can block is a
    coroutine that runs the Store's method in a worker thread.

    Get one from :func:`open` (or wrap an open Store: ``AsyncStore(store)``). The methods
    take the Store's parameters and return or raise what it does (the same
    :mod:`engramdb.errors` exceptions). ``async with`` closes the store at the end.
    """

    def __init__(self, store: Store, *, executor: Executor | None = None) -> None:
        """Wrap ``store``; calls run in ``executor`` (None: the running loop's default)."""
        self._store = store
        self._executor = executor

    @property
    def store(self) -> Store:
        """The wrapped synchronous Store (for its in-memory attributes, or a thread's use)."""
        return self._store

    @property
    def path(self) -> Path:
        """The store's directory."""
        return self._store.path

    @property
    def closed(self) -> bool:
        """Whether the store is closed."""
        return self._store.closed

    # The wrapped methods, each a conscious choice (NOT_WRAPPED lists the rest): writes...
    ingest = _in_worker(Store.ingest)
    ingest_many = _in_worker(Store.ingest_many)
    upsert = _in_worker(Store.upsert)
    upsert_many = _in_worker(Store.upsert_many)
    integrate = _in_worker(Store.integrate, after=_turn_loaded)
    forget = _in_worker(Store.forget)
    tick = _in_worker(Store.tick)
    reinforce = _in_worker(Store.reinforce)
    sync = _in_worker(Store.sync)
    # ... maintenance ...
    gc = _in_worker(Store.gc)
    rebuild = _in_worker(Store.rebuild)
    drain_index = _in_worker(Store.drain_index)
    verify = _in_worker(Store.verify)
    check = _in_worker(Store.check)
    # ... and reads.
    recall = _in_worker(Store.recall, after=_loaded)
    get = _in_worker(Store.get)
    get_keys = _in_worker(Store.get_keys)
    engrams = _in_worker(Store.engrams)
    contains = _in_worker(Store.__contains__, name="contains")
    vectors = _in_worker(Store.vectors)
    links = _in_worker(Store.links)
    forgetting_log = _in_worker(Store.forgetting_log)
    stats = _in_worker(Store.stats)

    async def run(self, fn: Callable[Concatenate[Store, P], R], *args: P.args,
                  **kwargs: P.kwargs) -> R:
        """Await ``fn(store, *args, **kwargs)`` in a worker thread: for what has no async
        twin (a ``snapshot()`` block, an export, a report).

        >>> from engramdb.transfer import export_store
        >>> await mem.run(export_store, "alice.jsonl")  # doctest: +SKIP
        """
        return await _in_thread(self._executor, fn, self._store, *args, **kwargs)

    async def close(self) -> None:
        """Close the store (idempotent), in a worker thread: it syncs and saves the indexes."""
        await _in_thread(self._executor, self._store.close)

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<engramdb.aio.AsyncStore {str(self.path)!r} {state}>"


class Opener:
    """What :func:`open` returns: ``await`` it for an :class:`AsyncStore`, or use it in
    ``async with`` to have the store closed at the end of the block."""

    def __init__(self, opening: Callable[[], Store], executor: Executor | None) -> None:
        """``opening`` opens the Store (it runs in a worker thread)."""
        self._opening = opening
        self._executor = executor
        self._store: AsyncStore | None = None

    async def _open(self) -> AsyncStore:
        store = await _undone_if_cancelled(self._executor, self._opening, Store.close)
        return AsyncStore(store, executor=self._executor)

    def __await__(self) -> Generator[Any, None, AsyncStore]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncStore:
        self._store = await self._open()
        return self._store

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            await self._store.close()


def open(  # noqa: A001 - mirrors engramdb.open
    path: str | os.PathLike[str],
    encoder: Encoder | None = None,
    *,
    dim: int | None = None,
    settings: Settings | dict[str, Any] | None = None,
    lock_timeout: float = 0.0,
    create: bool = True,
    index: dict[str, Any] | None = None,
    read_only: bool = False,
    executor: Executor | None = None,
) -> Opener:
    """:func:`engramdb.open` for asyncio: the same parameters and errors, the store opened
    (and recovered, if need be) in a worker thread. ``executor`` runs this store's calls
    (None: the running loop's default executor).

    >>> async with engramdb.aio.open(path, encoder=HashingEncoder()) as mem:  # doctest: +SKIP
    ...     await mem.ingest("I adopted a guinea pig named Oscar.")
    >>> mem = await engramdb.aio.open(path)  # doctest: +SKIP
    >>> await mem.close()  # doctest: +SKIP
    """
    return Opener(functools.partial(
        open_store, path, encoder, dim=dim, settings=settings, lock_timeout=lock_timeout,
        create=create, index=index, read_only=read_only), executor)


class AsyncPool:
    """A :class:`~engramdb.pool.Pool` for asyncio: per-user stores opened on demand, each
    handed out as an :class:`AsyncStore`; opening, leasing and closing run in worker threads.

    The parameters are Pool's (see there), plus ``executor`` for every call (None: the
    running loop's default executor). Creating the pool makes ``root`` if needed (one mkdir).

    >>> async with AsyncPool("memories", encoder=HashingEncoder()) as pool:  # doctest: +SKIP
    ...     async with pool.session("alice") as mem:
    ...         turn = await mem.integrate("I adopted a guinea pig named Oscar.")
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        encoder: Encoder | None = None,
        settings: Settings | dict[str, Any] | None = None,
        max_open: int = 64,
        idle_seconds: float = 300.0,
        lock_timeout: float | None = None,
        create: bool = True,
        multiprocess: bool = False,
        executor: Executor | None = None,
    ) -> None:
        """Make the Pool (see :class:`~engramdb.pool.Pool`); calls run in ``executor``."""
        self._pool = Pool(root, encoder=encoder, settings=settings, max_open=max_open,
                          idle_seconds=idle_seconds, lock_timeout=lock_timeout, create=create,
                          multiprocess=multiprocess)
        self._executor = executor

    @property
    def pool(self) -> Pool:
        """The wrapped synchronous Pool."""
        return self._pool

    @property
    def open_count(self) -> int:
        """How many stores are open (or being opened) right now."""
        return self._pool.open_count

    def path_for(self, user_id: str) -> Path:
        """The directory of ``user_id``'s store (see :meth:`Pool.path_for`)."""
        return self._pool.path_for(user_id)

    async def acquire(self, user_id: str) -> AsyncStore:
        """Open (or reuse) ``user_id``'s store and lease it; pair with :meth:`release`.

        Raises as :meth:`Pool.acquire`. If the caller is cancelled while the store opens,
        the lease is ended once it is taken.
        """
        store = await _undone_if_cancelled(
            self._executor, functools.partial(self._pool.acquire, user_id), self._pool.release)
        return AsyncStore(store, executor=self._executor)

    async def release(self, store: AsyncStore) -> None:
        """End one lease taken by :meth:`acquire` (see :meth:`Pool.release`)."""
        await _in_thread(self._executor, self._pool.release, store.store)

    @asynccontextmanager
    async def session(self, user_id: str) -> AsyncIterator[AsyncStore]:
        """Lease ``user_id``'s store for an ``async with`` block; raises as :meth:`acquire`."""
        store = await self.acquire(user_id)
        try:
            yield store
        finally:
            await self.release(store)

    async def get(self, user_id: str) -> AsyncStore:
        """``user_id``'s store without a lease, for a quick call (see :meth:`Pool.get`)."""
        return AsyncStore(await _in_thread(self._executor, self._pool.get, user_id),
                          executor=self._executor)

    async def users(self) -> list[str]:
        """The user ids of the stores under ``root``, sorted, read from their manifests
        without opening or locking any store (see :meth:`Pool.users`)."""
        return await _in_thread(self._executor, self._pool.users)

    async def user_listing(self) -> UserListing:
        """:meth:`users` with the stores it skipped (see :meth:`Pool.user_listing`)."""
        return await _in_thread(self._executor, self._pool.user_listing)

    async def close_idle(self) -> int:
        """Close the stores idle for ``idle_seconds`` that nobody holds; return how many."""
        return await _in_thread(self._executor, self._pool.close_idle)

    async def close(self, wait: float = 30.0) -> None:
        """Close every store (idempotent), waiting up to ``wait`` seconds for sessions in
        progress (see :meth:`Pool.close`)."""
        await _in_thread(self._executor, self._pool.close, wait)

    async def __aenter__(self) -> AsyncPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<engramdb.aio.AsyncPool {str(self._pool.root)!r}>"


__all__ = ["NOT_WRAPPED", "AsyncPool", "AsyncStore", "Opener", "open"]
