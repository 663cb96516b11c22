"""A handle's lifecycle beyond open: taking the store's lock, and releasing a handle once
(by close(), by the finalizer of a handle dropped without close(), or at exit)."""

from __future__ import annotations

import gc
import os
import threading

from engramdb.engine.parts import Parts
from engramdb.errors import StoreLocked
from engramdb.storage.locking import StoreLock

_EXIT_WAIT = 10.0  # seconds release_handle waits for a write in flight


def take_lock(lock: StoreLock, timeout: float) -> None:
    """Take the store's lock. Held by this process, it may be a handle dropped without close()
    and not collected yet (a Store lives in reference cycles): collect it (its finalizer,
    release_handle, frees the lock) before waiting."""
    try:
        lock.acquire(0.0)
        return
    except StoreLocked as exc:
        if exc.pid == os.getpid():
            gc.collect()
    lock.acquire(timeout)


def release_handle(parts: Parts, lock: StoreLock, stop: threading.Event,
             prefault: threading.Thread | None) -> None:
    """Stop a handle's threads, close its catalog and release its lock: run once, by close(),
    when a handle dropped without close() is collected (on whatever thread collects it), or at
    exit."""
    if os.getpid() != parts.pid:
        return  # a forked child: the lock, the files and the threads are the parent's
    # close() holds the write lock already; at exit a daemon thread may be mid-write: let its
    # commit end (or give up on one that never does: the OS releases the lock at exit).
    if not parts.write_lock.acquire(timeout=_EXIT_WAIT):
        return
    try:
        parts.closed = True
        stop.set()
        if prefault is not None and prefault is not threading.current_thread():
            prefault.join()  # within one chunk's madvise
        if parts.indexer is not None:
            parts.indexer.close()
        if parts.catalog is not None:
            parts.catalog.close()
        segments = getattr(parts, "segments", None)
        if segments is not None:
            segments.close()  # its maps hold descriptors; a dropped handle may linger
        journal = getattr(parts, "journal", None)
        if journal is not None:
            journal.close()  # turns not folded stay in it: the next open replays them
        if parts.scratch is not None:  # a read-only handle's replayed vectors and catalog
            parts.scratch.remove()
    finally:
        lock.release()
        parts.write_lock.release()
