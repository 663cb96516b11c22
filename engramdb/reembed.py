"""Re-embedding a store under a new encoder, switched into place atomically.

:func:`reembed` builds the store again beside the old one with new vectors and swaps the two
directories in one step. Everything but the vectors and the content ids carries over: texts,
occurrences (role, session, metadata, tick, key, order), kinds, lifespans, pins, links, the
forgetting log, the clock and the settings. Ids are hashes of the encoder fingerprint and the
text (docs/format.md), so every id changes: the map old id -> new id is returned and written
into the new store as ``reembed-ids.jsonl`` (:data:`ID_MAP_NAME`, read by :func:`load_id_map`).

How (docs/encoders.md, "Re-embedding a store"):

1. the old store is opened for writing, which runs its recovery and folds its turn journal,
   and keeps its lock: nobody writes to it until the switch;
2. a work directory ``.NAME.reembed-XXXXXXXX`` is made beside it (hidden, never a store
   name; it holds its own lock while its run lives). The old store is exported
   (``engramdb.transfer``), the texts are encoded with the new encoder in batches, and the
   rows are imported into a new store in the work directory, which then verifies;
3. the old handle is closed and its lock taken again at once (a bare flock on its ``LOCK``);
   if another process had it meanwhile (the lock file's pid was rewritten, or any file of the
   store changed), the run stops with StoreLocked and changes nothing;
4. ``renameat2(RENAME_EXCHANGE)`` swaps the two directories in one atomic step: PATH is the
   old store before it and the new one after it, and a SIGKILL anywhere leaves one complete
   store at PATH. The old store, now in the work directory, is deleted.

Where ``RENAME_EXCHANGE`` is missing (not Linux, or a file system without it), the switch is
two renames: PATH -> ``WORK/old``, then ``WORK/store`` -> PATH. A kill between them leaves no
store at PATH until :func:`settle` runs, which the next :func:`reembed` of that path does
first; it moves the verified new store in (or the old one back).

Leftover work directories of killed runs (their lock is free) are deleted by the next
:func:`reembed` of the same store, under the store's lock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from engramdb.content import check_bool, content_id
from engramdb.derived.metadata_text import dense_document, embedded_keys
from engramdb.encoders import Encoder
from engramdb.errors import (
    CorruptStore,
    EngramError,
    InvalidInput,
    NotAStore,
    ReadOnlyStore,
    StorageError,
    StoreLocked,
)
from engramdb.progress import progress_bar
from engramdb.settings import Settings
from engramdb.storage.fsio import atomic_write_bytes, fsync_dir, open_regular
from engramdb.storage.locking import LOCK_NAME, StoreLock
from engramdb.storage.manifest import MANIFEST_NAME, Manifest
from engramdb.store import Store
from engramdb.store import open as open_store
from engramdb.transfer import export_store, import_store
from engramdb.transfer.formats import JsonlWriter, open_source

log = logging.getLogger(__name__)

#: The file, inside the new store, that maps each old id to its new id (JSON lines).
ID_MAP_NAME = "reembed-ids.jsonl"
ID_MAP_FORMAT = "engramdb-reembed-ids"
#: Texts per encoder call (one step of the progress bar).
ENCODE_BATCH = 256
_WORK_TAG = ".reembed-"  # work directories: PARENT/.NAME.reembed-<8 hex>
_READY = "READY"  # in a work directory: the new store verified (holds its fingerprint)
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def reembed(path: str | os.PathLike[str], encoder: Encoder, *,
            progress: bool = False) -> dict[str, str]:
    """Rebuild the store at ``path`` under ``encoder`` and switch to it atomically.

    Every engram keeps its text, occurrences (role, session, metadata, tick, key), kind,
    lifespan, pin and links; the clock, settings and forgetting log carry over. Only the
    vectors (encoded again, in batches) and the ids change. Returns ``{old id: new id}`` for
    every engram the store holds (live or dead but not yet collected); the same map is written
    into the new store as ``reembed-ids.jsonl`` (:func:`load_id_map`). ``progress`` shows bars
    for the export, the encoding and the import.

    The old store's lock is held throughout (but for the instant between closing the old
    handle and flocking its ``LOCK`` again: a process that opens the store then stops the run
    with StoreLocked). A SIGKILL at any point leaves one complete store at ``path``, under the
    old encoder or the new one, with every acknowledged write (where ``RENAME_EXCHANGE`` is
    missing, a kill inside the switch leaves it to :func:`settle`).

    Raises NotAStore (``path`` is missing or not a store), InvalidInput (``encoder`` is not an
    Encoder, or is the store's own encoder: nothing to do), StoreLocked (another handle or
    process has the store open, or opened it during the run: nothing changed), ReadOnlyStore
    (the store or its directory is not writable), EncoderRequired / InvalidInput (the new
    encoder failed), CorruptStore (the old store is damaged: nothing is copied),
    StorageError (disk). On any error the store at ``path`` is left as it was.

    >>> ids = reembed("alice.engram", default())  # doctest: +SKIP
    """
    if not isinstance(encoder, Encoder):
        raise InvalidInput(f"encoder must be an engramdb Encoder, got {type(encoder).__name__}",
                           hint="pass e.g. engramdb.encoders.default() or HashingEncoder()")
    progress = check_bool(progress, "progress")
    store_dir = _resolve(path)
    settle(store_dir)
    _check_target(store_dir, encoder)
    old = open_store(store_dir, create=False)  # recovery runs, the journal is folded
    work: _Work | None = None
    try:
        if old.fingerprint == encoder.fingerprint:  # checked again under the lock
            raise _same_encoder(store_dir, old.fingerprint)
        _remove_leftovers(store_dir)
        work = _Work.create(store_dir)
        ids = _build(old, work, encoder, progress)
        _switch(old, work, store_dir)
    except BaseException:
        try:
            old.close()
        except EngramError:
            pass  # the first error is the one to report
        if work is not None:
            work.remove(store_dir)
        raise
    work.remove(store_dir)
    return ids


def load_id_map(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The header and the ``{old id: new id}`` map of the last :func:`reembed` of the store
    at ``path`` (its ``reembed-ids.jsonl``). The header names both encoders (``from``,
    ``to``: fingerprints; ``from_encoder``, ``to_encoder``: specs) and the ``count``.

    Raises InvalidInput when the store has no such file (it was never re-embedded),
    CorruptStore when the file is damaged.
    """
    file = Path(path) / ID_MAP_NAME
    try:
        with open(file, encoding="utf-8") as fh:
            header = json.loads(fh.readline())
            ids = dict(json.loads(line) for line in fh)
    except FileNotFoundError:
        raise InvalidInput(f"{path} holds no {ID_MAP_NAME}",
                           hint="only a store made by engramdb reembed has one") from None
    except (OSError, ValueError, TypeError) as exc:
        raise CorruptStore(f"{file} is damaged: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != ID_MAP_FORMAT or \
            header.get("count") != len(ids):
        raise CorruptStore(f"{file} is damaged (bad header or count)")
    return header, ids


def settle(path: str | os.PathLike[str]) -> str | None:
    """Put a store back at ``path`` if a re-embedding was killed between the two renames of
    its fallback switch (only where ``RENAME_EXCHANGE`` is missing); return ``"new"`` or
    ``"old"`` for the store moved there, None when there was nothing to do. :func:`reembed`
    runs it first; run it before opening a path that such a run may have left empty.
    """
    store_dir = _resolve(path)
    if os.path.lexists(store_dir):
        return None
    for work in _work_dirs(store_dir):
        lock = StoreLock(work)
        try:
            lock.acquire(0)
        except EngramError:
            continue  # a run is alive there
        try:
            moved = _settle_from(work, store_dir)
        finally:
            lock.release()
        if moved is not None:
            fsync_dir(store_dir.parent)
            shutil.rmtree(work, ignore_errors=True)
            return moved
    return None


def _settle_from(work: Path, store_dir: Path) -> str | None:
    """Move the verified new store (or else the old one) of ``work`` to ``store_dir``."""
    ready = work / _READY
    new = work / "store"
    try:
        fingerprint = ready.read_text(encoding="ascii").strip() if ready.exists() else None
        if fingerprint and Manifest.read(new).fingerprint == fingerprint:
            os.rename(new, store_dir)
            return "new"
        if (work / "old" / MANIFEST_NAME).exists():
            os.rename(work / "old", store_dir)
            return "old"
    except (OSError, EngramError) as exc:
        raise StorageError(f"cannot put the store back at {store_dir} from {work}: {exc}",
                           hint=f"move {new} (or {work / 'old'}) to {store_dir} by hand"
                           ) from exc
    return None


# -- checks -------------------------------------------------------------------------------------


def _resolve(path: str | os.PathLike[str]) -> Path:
    """The absolute store directory (links on the way resolved once, as open does)."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, TypeError) as exc:
        raise NotAStore(f"cannot resolve {path!r}: {exc}") from exc


def _check_target(store_dir: Path, encoder: Encoder) -> None:
    """A store (manifest present), writable with its directory, not under ``encoder``."""
    if not store_dir.exists():
        raise NotAStore(f"no store at {store_dir}",
                        hint="pass the directory of an existing store")
    if not store_dir.is_dir() or not (store_dir / MANIFEST_NAME).exists():
        raise NotAStore(f"{store_dir} is not an engramdb store (no {MANIFEST_NAME})",
                        hint="pass the directory of an existing store")
    fingerprint = Manifest.read(store_dir).fingerprint
    if fingerprint == encoder.fingerprint:
        raise _same_encoder(store_dir, fingerprint)
    for where in (store_dir, store_dir.parent):
        if not os.access(where, os.W_OK):
            raise _read_only(store_dir, where)


def _same_encoder(store_dir: Path, fingerprint: str) -> InvalidInput:
    return InvalidInput(f"{store_dir} is already under this encoder (fingerprint "
                        f"{fingerprint[:16]}); nothing to re-embed",
                        hint="pass a different encoder; the store was not changed")


def _read_only(store_dir: Path, where: Path) -> ReadOnlyStore:
    return ReadOnlyStore(f"cannot re-embed {store_dir}: {where} is not writable",
                         hint=f"re-embedding builds the new store in {store_dir.parent} and "
                              "swaps it in: make the store and its directory writable")


# -- the work directory -------------------------------------------------------------------------


def _work_dirs(store_dir: Path) -> list[Path]:
    """The work directories of re-embeddings of ``store_dir`` (live or left by a kill)."""
    parent = store_dir.parent
    prefix = f".{store_dir.name}{_WORK_TAG}"
    try:
        return sorted(parent / n for n in os.listdir(parent)
                      if n.startswith(prefix) and len(n) == len(prefix) + 8)
    except OSError:
        return []


def _remove_leftovers(store_dir: Path) -> None:
    """Delete the work directories killed runs left (their lock is free). Called under the
    store's lock, so no run of this store is between making its directory and locking it."""
    for work in _work_dirs(store_dir):
        lock = StoreLock(work)
        try:
            lock.acquire(0)
        except EngramError:
            continue  # a run is alive there (it took its lock before this one took the store's)
        try:
            if (work / "old" / MANIFEST_NAME).exists() and (work / _READY).exists() \
                    and (work / "store" / MANIFEST_NAME).exists():
                # A fallback switch killed between its renames, and something made a store
                # at the path since: these are the only copies of the memory. Never delete.
                log.warning("%s holds the store a re-embedding moved aside (old/) and its "
                            "re-embedded copy (store/); %s is another store. Move one of "
                            "them back by hand; it is left as it is", work, store_dir)
                continue
            shutil.rmtree(work, ignore_errors=True)
        finally:
            lock.release()


class _Work:
    """A run's work directory, locked while the run lives: the export, the re-encoded
    export, the new store (``store``) and, for the fallback switch, the old one (``old``)."""

    def __init__(self, path: Path, lock: StoreLock) -> None:
        self.path = path
        self.lock = lock
        self.export = path / "export.jsonl"
        self.encoded = path / "reembed.jsonl"
        self.store = path / "store"
        self.old = path / "old"

    @classmethod
    def create(cls, store_dir: Path) -> _Work:
        """Make and lock a fresh work directory beside ``store_dir``."""
        path = store_dir.parent / f".{store_dir.name}{_WORK_TAG}{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
        except PermissionError as exc:
            raise _read_only(store_dir, store_dir.parent) from exc
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise _read_only(store_dir, store_dir.parent) from exc
            raise StorageError(f"cannot create {path}: {exc}") from exc
        lock = StoreLock(path)
        try:
            lock.acquire(0)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path, lock)

    def mark_ready(self, fingerprint: str) -> None:
        """Record that ``store`` verified under ``fingerprint`` (what :func:`settle` trusts)."""
        atomic_write_bytes(self.path / _READY, fingerprint.encode("ascii") + b"\n")

    def remove(self, store_dir: Path) -> None:
        """Delete the directory (whatever it holds now), then release its lock; kept when
        no store is at ``store_dir`` (a switch that failed half way: :func:`settle`)."""
        try:
            if os.path.lexists(store_dir):
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self.lock.release()


# -- building the new store ---------------------------------------------------------------------


def _build(old: Store, work: _Work, encoder: Encoder, progress: bool) -> dict[str, str]:
    """Export ``old``, encode its texts anew, import them as ``work.store``, carry the
    manifest's user over, write the id map and verify the new store; return the map."""
    export_store(old, work.export, "jsonl", progress=progress)
    ids = _reencode(work.export, work.encoded, encoder, progress)
    work.export.unlink()
    import_store(work.store, work.encoded, encoder=encoder, progress=progress)
    work.encoded.unlink()
    new = open_store(work.store, encoder=encoder, create=False)
    try:
        if old.manifest.user is not None:  # a Pool's store: Pool.users() must still list it
            new.manifest.user = old.manifest.user
            new.manifest.write(new.path)
        _write_id_map(work.store / ID_MAP_NAME, old, encoder, ids)
        with new.snapshot() as snap:
            held = snap.query("SELECT count(*) FROM engrams")[0][0]
        report = new.verify()
        if held != len(ids) or not report.ok:
            raise CorruptStore(f"the re-embedded store does not verify ({held} engrams of "
                               f"{len(ids)}): " + "; ".join(report.problems[:3]),
                               hint="the old store was not changed; report this as a bug")
    finally:
        new.close()
    return ids


def _reencode(src: Path, dst: Path, encoder: Encoder, progress: bool) -> dict[str, str]:
    """Write the export ``src`` again as ``dst`` with ``encoder``'s spec, vectors and ids;
    return ``{old id: new id}``. Links, the log and the last turn are named by new ids."""
    reader = open_source(src)
    body = dst.with_name(dst.name + ".body")
    try:
        header = {k: v for k, v in reader.header.items() if k != "type"}
        fingerprint, dtype = encoder.fingerprint, np.dtype(header["dtype"])
        settings = Settings.from_stored(header.get("settings") or {})
        ids: dict[str, str] = {}
        writer = JsonlWriter(body, header)  # its header line is replaced below
        bar = progress_bar(header["counts"]["engrams"], progress, "reembed")
        try:
            for batch in reader.engram_batches():
                for start in range(0, len(batch), ENCODE_BATCH):
                    chunk = batch[start:start + ENCODE_BATCH]
                    vectors = encoder.encode_stored(
                        [embedded_text(r, settings) for r in chunk]).astype(dtype)
                    for rec, vec in zip(chunk, vectors, strict=True):
                        new_id = content_id(fingerprint, rec["text"])
                        ids[rec["id"]] = new_id
                        rec["id"] = new_id
                        rec["vector"] = vec.tobytes()
                    if bar is not None:
                        bar.update(len(chunk))
                writer.engrams(batch)
        finally:
            if bar is not None:
                bar.close()
        writer.links([{**r, "a": ids[r["a"]], "b": ids[r["b"]]} for r in reader.links()])
        writer.forgotten([{**r, "id": ids.get(r["id"], r["id"]) if r.get("stored") else r["id"]}
                          for r in reader.forgotten()])
        writer.close()
        turn = header.get("last_turn")
        header.update(encoder=encoder.spec(), fingerprint=fingerprint, dim=encoder.dim,
                      last_turn=None if turn is None else ids[turn])
        _with_header(body, dst, header)
    finally:
        reader.close()
        body.unlink(missing_ok=True)
    return ids


def embedded_text(rec: dict[str, Any], settings: Settings) -> str:
    """What a store embeds for an exported engram record: its text, with the metadata
    values ``settings`` names from its earliest occurrence when ``embed_metadata`` is on,
    as when it was written (``derived/metadata_text.py``)."""
    keys = embedded_keys(settings)
    if not keys:
        return rec["text"]
    occurrences = [o for o in rec.get("occurrences") or [] if isinstance(o, dict)]
    first = min(occurrences, key=lambda o: o.get("seq", 0), default={})
    meta = first.get("metadata")
    return dense_document(rec["text"], None if meta is None else json.dumps(meta), keys)


def _with_header(body: Path, dst: Path, header: dict[str, Any]) -> None:
    """``dst``: the JSONL file ``body`` with its first line replaced by ``header``'s."""
    with open(body, "rb") as src, open(dst, "wb") as out:
        src.readline()
        out.write(json.dumps({"type": "header", **header}, ensure_ascii=False,
                             allow_nan=False).encode("utf-8") + b"\n")
        shutil.copyfileobj(src, out, 1 << 20)


def _write_id_map(file: Path, old: Store, encoder: Encoder, ids: dict[str, str]) -> None:
    """Write the id map durably (``atomic_write_bytes``: temp file, fsync, rename)."""
    header = {"format": ID_MAP_FORMAT, "version": 1, "from": old.fingerprint,
              "to": encoder.fingerprint, "from_encoder": old.manifest.encoder_spec,
              "to_encoder": encoder.spec(), "count": len(ids)}
    lines = [json.dumps(header, sort_keys=True), *(json.dumps(pair) for pair in ids.items())]
    atomic_write_bytes(file, ("\n".join(lines) + "\n").encode("utf-8"))


# -- the switch ---------------------------------------------------------------------------------


def _switch(old: Store, work: _Work, store_dir: Path) -> None:
    """Close ``old``, take its lock back, and swap ``work.store`` with ``store_dir``."""
    lock_file = store_dir / LOCK_NAME
    before = os.stat(lock_file)  # ours: the pid in it was written when ``old`` was opened
    old.close()
    files = _signature(store_dir)
    fd = _relock(lock_file, before, store_dir)
    try:
        if _signature(store_dir) != files:
            raise _taken(store_dir)
        work.mark_ready(Manifest.read(work.store).fingerprint)
        _exchange(work, store_dir)
    finally:
        os.close(fd)  # releases the flock (the inode now sits in the work directory)


def _relock(lock_file: Path, before: os.stat_result, store_dir: Path) -> int:
    """Take the store's flock again on a new descriptor; StoreLocked if anyone else holds
    it, or held it since ``old`` closed (a writable open rewrites the pid: a new mtime)."""
    try:
        fd = open_regular(lock_file, os.O_RDWR)
    except OSError as exc:
        raise StorageError(f"cannot open {lock_file}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        now = os.fstat(fd)
    except BlockingIOError:
        os.close(fd)
        raise _taken(store_dir) from None
    same = (now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns)
    if not same:
        os.close(fd)
        raise _taken(store_dir)
    return fd


def _taken(store_dir: Path) -> StoreLocked:
    return StoreLocked(f"another process opened {store_dir} while it was being re-embedded; "
                       "nothing was switched", hint="run the re-embedding again when the "
                       "store is not in use")


def _signature(store_dir: Path) -> list[tuple[str, int, int, int]]:
    """Name, size, mtime and inode of every file of the store: any write changes it.
    Directories are left out: an open of a store without a catalog file may remove segment
    files an earlier handle left, which changes nothing but their directory."""
    out = []
    for p in sorted(store_dir.rglob("*")):
        st = p.lstat()
        if stat.S_ISDIR(st.st_mode):
            continue
        out.append((str(p.relative_to(store_dir)), st.st_size, st.st_mtime_ns, st.st_ino))
    return out


def _exchange(work: _Work, store_dir: Path) -> None:
    """Swap ``work.store`` (the new store) and ``store_dir`` atomically, or, without
    RENAME_EXCHANGE, by two renames (undone if the second fails; completed by
    :func:`settle` after a kill between them)."""
    try:
        if not _rename_exchange(work.store, store_dir):
            os.rename(store_dir, work.old)  # from here until the next rename: no store
            try:
                os.rename(work.store, store_dir)
            except OSError:
                os.rename(work.old, store_dir)
                raise
    except OSError as exc:
        raise StorageError(f"cannot switch {store_dir} to the re-embedded store: {exc}",
                           hint="the store was not changed") from exc
    try:
        fsync_dir(store_dir.parent)
        fsync_dir(work.path)
    except StorageError as exc:
        raise StorageError(f"{store_dir} was switched to the re-embedded store, but the "
                           f"switch may not be durable yet: {exc.message}") from exc


def _rename_exchange(a: Path, b: Path) -> bool:
    """``renameat2(a, b, RENAME_EXCHANGE)``; False where the system or file system lacks it."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # the call exists, the file system does not exchange
    raise OSError(err, os.strerror(err), str(b))


def _renameat2() -> Any:
    """The C library's renameat2, or None (not glibc >= 2.28, not Linux)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn
