"""The one exception hierarchy of engramdb.

Every error a user can cause or meet derives from :class:`EngramError` and carries a ``hint``:
one sentence that says what to do about it. Nothing from DuckDB, hnswlib or the file system
escapes the public API unwrapped.
"""

from __future__ import annotations


class EngramError(Exception):
    """Base class of every engramdb error; ``hint`` says what to do about it."""

    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        super().__init__(f"{message} (hint: {self.hint})" if self.hint else message)


class InvalidInput(EngramError, ValueError):
    """An argument was rejected before anything was written."""

    default_hint = "fix the argument; the store was not changed"


class DimensionMismatch(InvalidInput):
    """A vector does not have the store's dimension."""

    default_hint = "pass vectors of the store's dimension (see stats()['dim'])"


class NotFound(EngramError, KeyError):
    """No live engram has this id."""

    default_hint = "list ids with `engramdb ls PATH`; a forgotten or dead engram is gone"

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return Exception.__str__(self)


class NotAStore(EngramError):
    """The path exists but is not an engramdb store."""

    default_hint = "pass the directory of a store, or a path that does not exist yet"


class StoreLocked(EngramError):
    """Another process (or another handle in this one) has the store open for writing."""

    default_hint = "close the other handle, or pass lock_timeout=SECONDS to wait for it"

    def __init__(self, message: str, *, pid: int | None = None, hint: str | None = None) -> None:
        self.pid = pid
        super().__init__(message, hint=hint)


class StoreClosed(EngramError):
    """The store handle was closed (or belongs to the parent of a forked process)."""

    default_hint = "open the store again with engramdb.open(path)"


class CorruptStore(EngramError):
    """The store's files are damaged beyond what recovery on open can repair."""

    default_hint = (
        "run `engramdb verify PATH` to see what is damaged; restore from an export or backup"
    )


class FormatTooNew(EngramError):
    """The store was written by a newer engramdb with a format this version cannot read."""

    default_hint = "upgrade engramdb (pip install -U engramdb)"


class ModelMismatch(EngramError):
    """The encoder passed to open() is not the one the store was built with."""

    default_hint = (
        "open the store with the encoder it was built with, or export it and re-ingest the "
        "texts into a new store with the new encoder"
    )


class EncoderRequired(EngramError):
    """The operation needs an encoder, and none was given or could be rebuilt from the manifest."""

    default_hint = "pass encoder=... to engramdb.open(), or recall with vector=..."


class StorageError(EngramError, OSError):
    """Writing to disk failed; nothing from the failed call was acknowledged."""

    default_hint = (
        "check free disk space and permissions; earlier acknowledged writes are intact"
    )


class ReadOnlyStore(EngramError):
    """A write on a handle opened with ``read_only=True``, or a read-only open of a store
    that needs a writer first (recovery after a crash, a format upgrade)."""

    default_hint = (
        "open the store without read_only=True (recovery and upgrades run on a writable "
        "open; the CLI does that for `engramdb verify` and the other read commands)"
    )


class CommitUncertain(StorageError):
    """The catalog commit failed in a way that may have left it durable; the handle closed."""

    default_hint = (
        "open the store again: recovery on open settles what was committed; writes "
        "acknowledged before this one are intact"
    )


__all__ = [
    "CommitUncertain",
    "CorruptStore",
    "DimensionMismatch",
    "EncoderRequired",
    "EngramError",
    "FormatTooNew",
    "InvalidInput",
    "ModelMismatch",
    "NotAStore",
    "NotFound",
    "ReadOnlyStore",
    "StorageError",
    "StoreClosed",
    "StoreLocked",
]
