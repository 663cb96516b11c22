"""A pool of per-user stores: open on demand, keep at most ``max_open``, close idle ones.

A server with 10,000 users must not hold 10,000 DuckDB handles (each store has its own
catalog, docs/format.md). A
:class:`Pool` maps each user id to its own store directory directly under ``root``, opens a
store the first time it is asked for, and closes the least recently used ones beyond
``max_open`` or idle for ``idle_seconds``. A store in use (leased through :meth:`Pool.session`
or :meth:`Pool.acquire`) is never closed under the thread using it.

User ids never become paths directly: :func:`user_dirname` keeps a short readable slug of
``[a-z0-9_-]`` plus a 128-bit hash of the exact id, so ``"../x"``, ``"/etc"``, ``"a\\0b"``,
``"Alice"`` vs ``"alice"`` (case-insensitive file systems) and 10 KB ids all land in distinct
directories that are always direct children of ``root``.

Directory names are one-way, so the Pool records each user id in its store's manifest (when it
creates the store, or the first time it opens an older one for that user), and
:meth:`Pool.users` lists them from the manifests alone: no store is opened or locked.

A Pool survives ``os.fork()`` (gunicorn ``--preload`` with a warm-up, multiprocessing): just
before the fork it closes the stores nobody holds, so the child can open them; the child drops
every handle it inherited, unclosed, and opens its own on demand.

Several worker processes may serve the same users from one root with ``multiprocess=True``
(each process its own Pool). A store is open in one process at a time (its ``LOCK`` flock),
so such a Pool closes a store as soon as its last lease in this process ends, and an open
waits its turn: it first takes a lock on the store's directory (an ``flock`` on the directory
itself, no extra file), which queues the processes wanting that user so that a process
releasing the store cannot take it straight back from one that has been waiting, then polls
the store's lock; both waits back off with jitter, within ``lock_timeout`` in all.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import random
import re
import threading
import time
import unicodedata
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from engramdb.encoders import Encoder
from engramdb.errors import (
    EngramError,
    InvalidInput,
    StorageError,
    StoreClosed,
    StoreLocked,
)
from engramdb.settings import Settings
from engramdb.storage.manifest import MANIFEST_NAME, Manifest
from engramdb.store import Store
from engramdb.store import open as open_store

SUFFIX = ".engram"
SLUG_MAX = 40  # readable prefix only; the hash carries the identity
HASH_HEX = 32  # 128 bits of sha256: collisions are out of reach for any user count

_NOT_SLUG = re.compile(r"[^a-z0-9_-]+")

LOCK_TIMEOUT = 10.0  # seconds an open waits for another process's hold: the default mode
MULTIPROCESS_LOCK_TIMEOUT = 30.0  # the same with multiprocess=True, where waiting is routine
# Polling another process's hold (multiprocess mode): the first pause, doubling up to the
# last, each drawn from [1/2, 1] of it so that waiters in step do not retry in step.
_POLL_FIRST, _POLL_MAX = 0.002, 0.025
_T = TypeVar("_T")

# Entry states. OPENING/CLOSING entries stay in the table so nobody opens a second handle on
# the same directory meanwhile (the store's flock would refuse it: StoreLocked).
_OPENING, _OPEN, _CLOSING = "opening", "open", "closing"

# Every Pool of this process, for the fork hooks at the end of this module.
_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()
# The handles a forked child inherited from its parent, kept alive until the process ends and
# past it: their lock and files are the parent's. Closing one would release the parent's lock
# and checkpoint its catalog under it; so does freeing one (DuckDB's destructor), which then
# crashes the child with SIGSEGV (measured), also at interpreter exit, when module globals are
# freed. Hence one reference that is never given back (their memory is the parent's pages,
# shared copy-on-write).
_INHERITED: list[Store] = []
ctypes.pythonapi.Py_IncRef(ctypes.py_object(_INHERITED))
# The directory descriptors open for a multiprocess wait (_turn), closed in a forked child: a
# copy there would keep the parent's place in the queue until the child exits.
_TURN_FDS: set[int] = set()
_TURN_FDS_LOCK = threading.Lock()


def user_dirname(user_id: str) -> str:
    """Return the directory name (not a path) that holds ``user_id``'s store.

    The name is ``<slug>-<hash>.engram``: ``slug`` is the id lower-cased, reduced to ASCII
    ``[a-z0-9_-]`` runs joined by ``-`` and cut to 40 characters (only for humans reading a
    listing); ``hash`` is 32 hex digits of sha256 over the exact id (UTF-8, lone surrogates
    kept), so distinct ids get distinct names even when their slugs agree, and names differ in
    lower-case characters only (safe on case-insensitive file systems). The result never
    contains a path separator, NUL, or a leading dot, and is at most 80 characters.

    Raises InvalidInput when ``user_id`` is not a non-empty str.

    >>> user_dirname("Alice")
    'alice-3bc51062973c458d5a6f2d8d64a02324.engram'
    >>> user_dirname("../../etc/passwd").startswith("etc-passwd-")
    True
    """
    if not isinstance(user_id, str):
        raise InvalidInput(f"user id must be a str, got {type(user_id).__name__}")
    if not user_id:
        raise InvalidInput("user id must not be empty")
    # surrogatepass: every Python str (even one with lone surrogates) has exactly one encoding,
    # so the hash input is injective in the id.
    digest = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX]
    ascii_form = unicodedata.normalize("NFKD", user_id).encode("ascii", "ignore").decode()
    slug = _NOT_SLUG.sub("-", ascii_form.lower()).strip("-_")[:SLUG_MAX].strip("-_")
    return f"{slug or 'u'}-{digest}{SUFFIX}"


@dataclass
class UserListing:
    """What :meth:`Pool.user_listing` found under a pool's root.

    ``users``: the recorded user ids, sorted. ``unknown``: the directory names of stores whose
    manifest records no user (made by :func:`engramdb.open` directly, or by an older engramdb
    and not opened by a Pool since; also a creation not finished yet). ``damaged``: directory
    name -> why it was skipped (a manifest that cannot be read or fails its checks, a newer
    format, a user whose directory would be another one: a copied or renamed store).
    """

    users: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"users": list(self.users), "unknown": list(self.unknown),
                "damaged": dict(self.damaged)}


class _Entry:
    """One user's slot: its store (once open), leases and last use."""

    __slots__ = ("leases", "last_used", "state", "store")

    def __init__(self) -> None:
        self.store: Store | None = None
        self.state = _OPENING
        self.leases = 0
        self.last_used = time.monotonic()


class Pool:
    """Per-user stores under one root directory, opened on demand; thread-safe.

    ``encoder``, ``settings`` and ``create`` are passed to :func:`engramdb.open` for every
    store (so settings also apply to existing stores, as ``open`` does); without an encoder
    only existing stores can be opened (their encoder is rebuilt from the manifest).

    At most ``max_open`` stores stay open: beyond that the least recently used
    store that nobody holds is closed, and any store unused for ``idle_seconds`` is closed at
    the next pool call (or by :meth:`close_idle`). Stores held by a session are never closed
    for either reason; if more than ``max_open`` users are held at once the pool briefly holds
    more, and closes the excess as sessions end (waiting instead could deadlock a thread that
    holds two sessions). ``lock_timeout`` is how long an open waits for another process
    holding the user's store before it raises StoreLocked (None: 10 s, 30 s in multiprocess
    mode).

    ``multiprocess=True`` is for several processes (gunicorn or uvicorn workers), each with its
    own Pool over the same root, serving the same users: a store is closed as soon as its last
    lease in this process ends, so the other processes can open it (``idle_seconds`` does not
    apply, and :meth:`get` is refused: use :meth:`session`), and an open waits its turn behind
    the processes already waiting for that user (see the module's docstring). Each session then
    pays for an open and a close of the store. Hold one user's store at a time (or take several
    in one fixed order, e.g. sorted ids): two processes each holding a store the other waits for
    wait until ``lock_timeout`` runs out. Threads of one process asking for the same user still
    share one open handle.

    Raises InvalidInput for bad arguments, StorageError if ``root`` cannot be created.

    >>> from engramdb.encoders import HashingEncoder
    >>> with Pool("memories", encoder=HashingEncoder()) as pool:  # doctest: +SKIP
    ...     with pool.session("alice") as mem:
    ...         mem.integrate("I adopted a guinea pig named Oscar.")
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
    ) -> None:
        if isinstance(max_open, bool) or not isinstance(max_open, int) or max_open < 1:
            raise InvalidInput(f"max_open must be an int >= 1, got {max_open!r}")
        if not isinstance(multiprocess, bool):
            raise InvalidInput(f"multiprocess must be True or False, got {multiprocess!r}")
        if lock_timeout is None:
            lock_timeout = MULTIPROCESS_LOCK_TIMEOUT if multiprocess else LOCK_TIMEOUT
        for name, value in (("idle_seconds", idle_seconds), ("lock_timeout", lock_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise InvalidInput(f"{name} must be a number of seconds >= 0, got {value!r}")
        if not isinstance(create, bool):
            raise InvalidInput(f"create must be True or False, got {create!r}")
        if encoder is not None and not isinstance(encoder, Encoder):
            raise InvalidInput(f"encoder must be an engramdb Encoder, got {type(encoder).__name__}")
        try:
            Path(root).mkdir(parents=True, exist_ok=True)
            self.root = Path(root).resolve()
        except OSError as exc:
            raise StorageError(f"cannot create pool root {root}: {exc}") from exc
        self.encoder = encoder
        self.settings = settings
        self.max_open = max_open
        self.idle_seconds = float(idle_seconds)
        self.lock_timeout = float(lock_timeout)
        self.create = create
        self.multiprocess = multiprocess
        self._cond = threading.Condition(threading.Lock())
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # LRU order: oldest first
        self._closed = False
        _POOLS.add(self)

    # -- naming -------------------------------------------------------------------------------

    def path_for(self, user_id: str) -> Path:
        """The directory of ``user_id``'s store: always a direct child of ``root``.

        Raises InvalidInput for an invalid id, or if the directory would resolve outside
        ``root`` (e.g. someone planted a symlink there).

        >>> pool.path_for("alice").parent == pool.root  # doctest: +SKIP
        True
        """
        path = self.root / user_dirname(user_id)
        # Defence in depth: the name cannot hold a separator, but a symlink planted under
        # root could still point elsewhere.
        if path.resolve().parent != self.root or path.parent != self.root:
            raise InvalidInput(f"the store directory for {user_id!r} resolves outside {self.root}")
        return path

    # -- leases -------------------------------------------------------------------------------

    def acquire(self, user_id: str) -> Store:
        """Open (or reuse) ``user_id``'s store and lease it; pair with :meth:`release`.

        The store is never closed by the pool while leased. Raises InvalidInput (bad id),
        StoreClosed (pool closed) and whatever :func:`engramdb.open` raises (StoreLocked,
        CorruptStore, InvalidInput when the store is new and the pool has no encoder, ...).

        >>> mem = pool.acquire("alice")  # doctest: +SKIP
        >>> try:  # doctest: +SKIP
        ...     mem.ingest("hello")
        ... finally:
        ...     pool.release(mem)
        """
        path = self.path_for(user_id)
        key = path.name
        with self._cond:
            while True:
                self._check_open()
                entry = self._entries.get(key)
                if entry is None:
                    entry = _Entry()
                    entry.leases = 1
                    self._entries[key] = entry
                    break  # this thread opens it, outside the pool lock
                if entry.state == _OPEN and entry.store is not None and not _is_closed(
                        entry.store):
                    entry.leases += 1
                    entry.last_used = time.monotonic()
                    self._entries.move_to_end(key)
                    return entry.store
                if entry.state == _OPEN and entry.leases == 0:
                    # The user closed it by hand; forget the dead handle and open afresh.
                    del self._entries[key]
                    continue
                if entry.state == _OPEN:
                    # Closed by hand while other threads still hold it: hand out the same
                    # (closed) handle, which raises StoreClosed like any closed handle; it is
                    # replaced by a fresh one once every holder has released it.
                    entry.leases += 1
                    return entry.store  # type: ignore[return-value]
                self._cond.wait()  # opening or closing elsewhere: wait for the outcome
        try:
            store = self._open(path, user_id)
        except BaseException:
            with self._cond:
                del self._entries[key]
                self._cond.notify_all()
            raise
        with self._cond:
            entry.store = store
            entry.state = _OPEN
            entry.last_used = time.monotonic()
            self._entries.move_to_end(key)
            self._cond.notify_all()
            if self._closed:  # closed while we were opening: do not leak the handle
                entry.state = _CLOSING
                victims = [(key, entry)]
            else:
                victims = self._pick_victims()
        self._close_victims(victims)
        if self._closed:
            # Closed while this thread made room: give the lease back, or close() would wait
            # its whole timeout for a session that never starts.
            self.release(store)
            raise StoreClosed("the pool was closed")
        return store

    def _open(self, path: Path, user_id: str) -> Store:
        """Open (or create) ``user_id``'s store at ``path`` and record the user in it.

        StoreLocked gets a hint about pools: another process holding the store is usually
        another worker's Pool.
        """
        try:
            if self.multiprocess:
                store = self._open_in_turn(path)
            else:
                store = self._open_store(path, self.lock_timeout)
        except StoreLocked as exc:
            raise StoreLocked(exc.message, pid=exc.pid, hint=self._locked_hint(exc.pid)) from None
        try:
            _record_user(store, user_id)
        except BaseException:
            store.close()
            raise
        return store

    def _open_store(self, path: Path, lock_timeout: float) -> Store:
        return open_store(path, self.encoder, settings=self.settings,
                          lock_timeout=lock_timeout, create=self.create)

    def _open_in_turn(self, path: Path) -> Store:
        """Open ``path`` in multiprocess mode: queue on its directory (:func:`_turn`), then
        poll the store's lock, both with jittered backoff, within ``lock_timeout`` in all."""
        start = time.monotonic()
        deadline = start + self.lock_timeout
        with _turn(path, self.create, deadline) as fd:
            if fd is None:
                raise StoreLocked(
                    f"{path} is wanted by other processes: no turn to open it came in "
                    f"{self.lock_timeout:g} s")
            refused: list[StoreLocked] = []

            def attempt() -> Store | None:
                try:
                    return self._open_store(path, 0.0)
                except StoreLocked as exc:
                    if exc.pid == os.getpid():  # a handle of this process outside this pool
                        left = max(0.0, deadline - time.monotonic())
                        return self._open_store(path, left)
                    refused[:] = [exc]
                    return None

            store = _until(deadline, attempt)
        if store is None:
            raise StoreLocked(f"{refused[0].message}; waited {time.monotonic() - start:.1f} s",
                              pid=refused[0].pid)
        return store

    def _locked_hint(self, pid: int | None) -> str:
        if pid == os.getpid():
            return ("this process holds the store outside this pool (engramdb.open or another "
                    "Pool on the same directory): close that handle, or use one Pool")
        if self.multiprocess:
            return ("another process kept this user's store for all of lock_timeout: keep "
                    "sessions short (a store is held for a whole session), hold one user at a "
                    "time, raise lock_timeout, or route each user to one worker")
        return ("another process has this user's store open (a Pool keeps idle stores open "
                "for idle_seconds): if several worker processes serve the same users from "
                "one root, create each Pool with multiprocess=True, or route each user to one "
                "process")

    def release(self, store: Store) -> None:
        """End one lease taken by :meth:`acquire`; the store may now be closed by the pool.

        Raises InvalidInput if ``store`` was not leased from this pool.
        """
        with self._cond:
            entry = self._entries.get(Path(store.path).name)
            if entry is None or entry.store is not store or entry.leases <= 0:
                if self._closed:
                    return  # close() gave up waiting and closed it already
                if any(s is store for s in _INHERITED):
                    return  # leased before a fork: this child dropped it (_forked_child)
                raise InvalidInput(f"{store!r} is not leased from this pool")
            entry.leases -= 1
            entry.last_used = time.monotonic()
            self._entries.move_to_end(entry.store.path.name)  # a use counts for the LRU
            victims = self._pick_victims()
            if entry.leases == 0:
                self._cond.notify_all()  # Pool.close() may be waiting for leases to end
        self._close_victims(victims)

    @contextmanager
    def session(self, user_id: str) -> Iterator[Store]:
        """Lease ``user_id``'s store for the duration of a ``with`` block.

        Raises as :meth:`acquire`.

        >>> with pool.session("alice") as mem:  # doctest: +SKIP
        ...     turn = mem.integrate("What is my guinea pig called?")
        """
        store = self.acquire(user_id)
        try:
            yield store
        finally:
            self.release(store)

    def get(self, user_id: str) -> Store:
        """Return ``user_id``'s store without holding a lease (for a quick call).

        The pool may close the returned store once other users push it out of the LRU or it
        idles; a later call on it then raises StoreClosed. Use :meth:`session` for anything
        that spans more than one call or runs alongside other threads. Raises as
        :meth:`acquire`.

        Raises InvalidInput in multiprocess mode, where the store would be closed at once.

        >>> pool.get("alice").recall("guinea pig")  # doctest: +SKIP
        """
        if self.multiprocess:
            raise InvalidInput(
                "Pool.get() is not available with multiprocess=True: the store would be "
                "closed (for the other processes) before it is used",
                hint="use `with pool.session(user_id) as mem:` instead")
        store = self.acquire(user_id)
        self.release(store)
        return store

    # -- listing ------------------------------------------------------------------------------

    def users(self) -> list[str]:
        """The user ids of the stores under ``root``, sorted.

        Read from the stores' manifests only: no store is opened and no lock is taken, so it
        works while other processes (or this pool) hold the stores open. A store whose
        manifest records no user (made by :func:`engramdb.open`, or by an older engramdb
        and not opened by a Pool since: the Pool records the user at that open) or whose
        manifest is damaged is skipped; :meth:`user_listing` says which. Works on a closed
        pool too. Raises StorageError only if ``root`` itself cannot be listed.

        >>> pool.users()  # doctest: +SKIP
        ['alice', 'bob']
        """
        return self.user_listing().users

    def user_listing(self) -> UserListing:
        """:meth:`users`, with the stores it skipped: those without a recorded user
        (``unknown``) and those with a damaged manifest (``damaged``, with the reason).

        Raises StorageError only if ``root`` itself cannot be listed.
        """
        listing = UserListing()
        try:
            with os.scandir(self.root) as entries:
                found = sorted((e.name, _is_real_dir(e)) for e in entries
                               if e.name.endswith(SUFFIX) and not e.name.startswith("."))
        except OSError as exc:
            raise StorageError(f"cannot list the pool root {self.root}: {exc}") from exc
        for name, is_dir in found:
            if not is_dir:  # a file, or a link: the pool never makes one (path_for refuses it)
                listing.damaged[name] = "not a directory (a file or a symbolic link)"
                continue
            try:
                user = _recorded_user(self.root / name)
            except _Skipped as why:
                listing.damaged[name] = str(why)
                continue
            if user is None:
                listing.unknown.append(name)
            elif user_dirname(user) != name:
                listing.damaged[name] = (f"its manifest records user {user!r}, whose store is "
                                         f"{user_dirname(user)} (a copied or renamed store)")
            else:
                listing.users.append(user)
        listing.users.sort()
        return listing

    # -- closing ------------------------------------------------------------------------------

    @property
    def open_count(self) -> int:
        """How many stores are open (or being opened) right now."""
        with self._cond:
            return sum(1 for e in self._entries.values() if e.state != _CLOSING)

    def close_idle(self) -> int:
        """Close the stores nobody holds that have been idle for ``idle_seconds``; return how
        many were closed. Pool calls do this anyway; call it from a timer to free handles
        while no request arrives. (In multiprocess mode there are none: a store closes when
        its last lease ends.)"""
        with self._cond:
            victims = self._pick_victims()
        self._close_victims(victims)
        return len(victims)

    def close(self, wait: float = 30.0) -> None:
        """Close every store (idempotent); later calls raise StoreClosed.

        Waits up to ``wait`` seconds for sessions in progress to end, then closes their
        stores anyway (a write in progress still completes: Store.close waits for it).
        """
        deadline = time.monotonic() + max(0.0, wait)
        with self._cond:
            self._closed = True
            while any(e.leases or e.state == _OPENING for e in self._entries.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            victims = [(k, e) for k, e in self._entries.items() if e.state == _OPEN]
            for _, e in victims:
                e.state = _CLOSING
        self._close_victims(victims)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.open_count} open"
        if self.multiprocess:
            state += ", multiprocess"
        return f"<engramdb.Pool {str(self.root)!r} {state}>"

    # -- internals (called with self._cond held, except _close_victims) -----------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the pool was closed", hint="create a new Pool")

    def _pick_victims(self) -> list[tuple[str, _Entry]]:
        """Mark for closing the idle entries and the LRU excess over ``max_open``."""
        now = time.monotonic()
        idle = 0.0 if self.multiprocess else self.idle_seconds  # free for the other processes
        live = [(k, e) for k, e in self._entries.items() if e.state != _CLOSING]
        excess = len(live) - self.max_open
        victims = []
        for key, entry in live:  # oldest first
            if entry.state != _OPEN or entry.leases:
                continue
            if excess > 0 or now - entry.last_used >= idle:
                entry.state = _CLOSING
                victims.append((key, entry))
                excess -= 1
        return victims

    def _before_fork(self) -> None:
        """Close the stores nobody holds, so that the child about to be forked can open them
        (a handle kept here would keep its lock: the child would get StoreLocked)."""
        with self._cond:
            victims = [(k, e) for k, e in self._entries.items()
                       if e.state == _OPEN and not e.leases]
            for _, entry in victims:
                entry.state = _CLOSING
        self._close_victims(victims)

    def _forked_child(self) -> None:
        """In a forked child (only this thread runs): drop every inherited handle unclosed
        (see _INHERITED) and start afresh; stores are opened again on demand."""
        # A parent thread may have held the lock at the fork; it never releases it here.
        self._cond = threading.Condition(threading.Lock())
        _INHERITED.extend(e.store for e in self._entries.values() if e.store is not None)
        self._entries = OrderedDict()

    def _close_victims(self, victims: list[tuple[str, _Entry]]) -> None:
        """Close stores outside the pool lock (a close may wait for a write), then drop them."""
        if not victims:
            return
        try:
            for _, entry in victims:
                try:
                    if entry.store is not None:
                        entry.store.close()
                except Exception:
                    pass  # the handle is gone either way; the next open recovers the files
        finally:
            with self._cond:
                for key, entry in victims:
                    if self._entries.get(key) is entry:
                        del self._entries[key]
                self._cond.notify_all()


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)  # from the listing itself: no extra stat
    except OSError:
        return False


class _Skipped(Exception):
    """A store directory the listing skips, and why."""


def _recorded_user(directory: Path) -> str | None:
    """The user recorded in ``directory``'s manifest, None when it records none (or there is
    no manifest yet: a creation in progress or interrupted); raises _Skipped, with the reason,
    when the manifest is damaged. One store's manifest never fails a whole listing."""
    try:
        return Manifest.read(directory).user
    except EngramError as exc:  # CorruptStore (unreadable included), FormatTooNew
        if not os.path.lexists(directory / MANIFEST_NAME):
            return None
        raise _Skipped(f"{type(exc).__name__}: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. RecursionError from absurdly nested JSON
        raise _Skipped(f"{type(exc).__name__}: {exc}") from None


def _record_user(store: Store, user_id: str) -> None:
    """Record ``user_id`` in the manifest of ``store``, just opened for that user by the pool,
    unless it is there already (a store made by this pool, or since an open by it).

    The store's own manifest object is updated and written (atomically), so the engine's later
    rewrites of it (settings, index configuration) keep the user. Called before anyone else
    holds the handle, under the store's file lock. Best effort: if the write fails (a full
    disk), the store still serves, is listed as unknown, and the next open tries again.
    """
    manifest = store.manifest
    if manifest.user == user_id:
        return
    # A different user can only be a copied or renamed directory: the name is a hash of the
    # id, so the id the pool opened it for is the one it serves.
    manifest.user = user_id
    try:
        manifest.write(store.path)
    except EngramError:
        pass


def _is_closed(store: Store) -> bool:
    # A handle the user closed by hand must not be reused.
    return store.closed


@contextmanager
def _turn(path: Path, create: bool, deadline: float) -> Iterator[int | None]:
    """Wait, until ``deadline`` (a ``time.monotonic()``), for this process's turn to open the
    store at ``path``: an exclusive ``flock`` on the store's directory, held for the ``with``.

    Yields the directory's descriptor, or None if the turn did not come in time. The lock is
    the queue of the processes opening that user (the store's ``LOCK`` flock is what keeps the
    store to one process; nothing else locks the directory): a process that has just closed
    the store cannot open it again while another process, which holds the turn, waits for
    it. The directory is made if missing and ``create`` (an empty directory is a store not
    made yet, which the open then makes); without it, or if it is missing, there is no queue
    (yields -1) and the open says what is wrong.
    """
    if create:
        try:
            path.mkdir(exist_ok=True)
        except OSError:
            pass  # the open below reports it
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            yield -1  # no directory (or not one): the open raises NotAStore
            return
        raise StorageError(f"cannot open the store directory {path}: {exc}") from exc
    with _TURN_FDS_LOCK:
        _TURN_FDS.add(fd)
    try:
        yield fd if _until(deadline, lambda: _try_flock(fd)) else None
    finally:
        with _TURN_FDS_LOCK:
            _TURN_FDS.discard(fd)
        os.close(fd)  # releases the flock


def _try_flock(fd: int) -> bool | None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return None


def _until(deadline: float, attempt: Callable[[], _T | None]) -> _T | None:
    """Call ``attempt`` until it returns something other than None, or ``deadline`` (a
    ``time.monotonic()``) passes (then return None). Between tries it sleeps 2 ms, doubling
    up to 25 ms, each pause drawn from [1/2, 1] of that (jitter: waiters do not retry in
    step, and none keeps losing the race to the same other one)."""
    pause = _POLL_FIRST
    while True:
        got = attempt()
        if got is not None:
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(left, pause * random.uniform(0.5, 1.0)))
        pause = min(pause * 2, _POLL_MAX)


def _before_fork() -> None:
    for pool in list(_POOLS):
        try:
            pool._before_fork()
        except Exception:  # noqa: BLE001 - an exception here would be printed and ignored
            pass  # the child then finds that store locked, as without this hook


def _after_fork_in_child() -> None:
    global _TURN_FDS_LOCK
    _TURN_FDS_LOCK = threading.Lock()  # a parent thread may have held it at the fork
    for fd in _TURN_FDS:  # the waits of the parent's threads: not this process's turns
        try:
            os.close(fd)
        except OSError:
            pass
    _TURN_FDS.clear()
    for pool in list(_POOLS):
        pool._forked_child()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


__all__ = ["Pool", "UserListing", "user_dirname"]
