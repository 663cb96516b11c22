"""Creating and opening a store, with recovery (docs/format.md, "Recovery").

Open reads the manifest, opens the catalog and its counters, settles what "fast" durability
may have lost, cuts torn segment tails, and loads the derived state (hot arrays, BM25,
context, vector index), reading the index files and the hot arrays on threads beside the
rest. A store without a manifest is an unfinished creation, which open safely redoes.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engramdb.derived.context import TurnContext
from engramdb.derived.hotstate import HOT_COLUMNS, HotState
from engramdb.derived.index import VectorIndex
from engramdb.derived.indexer import BackgroundIndexer
from engramdb.derived.lexical import LexicalIndex
from engramdb.derived.metadata_text import embedded_keys
from engramdb.encoders.base import Encoder
from engramdb.engine import turnlog
from engramdb.engine.commit import Committer, Counters
from engramdb.engine.derive import LEXICAL_SNAPSHOT, DerivedLoader
from engramdb.engine.mirror import TurnMirror
from engramdb.engine.parts import Parts
from engramdb.engine.upkeep import INDEX_DIR, IndexKeeper
from engramdb.engine.writer import Writer
from engramdb.errors import (
    CorruptStore,
    DimensionMismatch,
    InvalidInput,
    ModelMismatch,
    NotAStore,
    ReadOnlyStore,
    StorageError,
)
from engramdb.settings import Settings
from engramdb.storage import catalog as cat
from engramdb.storage.catalog import CATALOG_NAME, CATALOG_TEMP, Catalog, catalog_temp_files
from engramdb.storage.fsio import check_tree, fsync_dir
from engramdb.storage.journal import TurnJournal
from engramdb.storage.locking import LOCK_NAME
from engramdb.storage.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest
from engramdb.storage.schema import ADD_KEY_COLUMN
from engramdb.storage.scratch import make_scratch
from engramdb.storage.segments import SEGMENT_DIR, SegmentStore

# Files a half-created store may hold before its manifest (written last) exists.
_CREATION_FILES = {LOCK_NAME, CATALOG_NAME, CATALOG_NAME + ".wal", SEGMENT_DIR, INDEX_DIR,
                   "." + MANIFEST_NAME + ".tmp", LEXICAL_SNAPSHOT, CATALOG_TEMP,
                   CATALOG_TEMP + ".wal"}
_COUNTERS = {"generation", "clock", "next_eid", "next_seq"}
log = logging.getLogger(__name__)


class Background:
    """``fn(*args)`` running on a thread; :meth:`result` waits for it, returns or raises.

    Open runs reads on these (the vector index files, the catalog scan of the hot state)
    beside its other work; an open that fails waits for them (:meth:`wait`) before closing
    the catalog.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._out: Any = None
        self._exc: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True,
                                        name="engramdb-open")
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._out = fn(*args)
        except BaseException as exc:  # handed to the caller of result()
            self._exc = exc

    def result(self) -> Any:
        """Wait for ``fn`` and return what it returned (or raise what it raised)."""
        self._thread.join()
        if self._exc is not None:
            raise self._exc
        return self._out

    def wait(self) -> None:
        """Wait for ``fn`` to end, ignoring its outcome (an open that failed elsewhere)."""
        self._thread.join()


def store_path(path: Path) -> Path:
    """The absolute path of a store directory, resolved once on open: a later ``chdir``, or a
    change to the links on the way to it (the user's own path may be a link), does not move
    an open store."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of links
        raise NotAStore(f"cannot resolve {path}: {exc}") from exc


def prepare_directory(path: Path, create: bool) -> Path:
    """Check ``path`` is a store, or a place to make one (created here); return its absolute
    path (:func:`store_path`).

    A store holding a link or a special file (at its top, in ``segments/`` or ``index/``) is
    refused with CorruptStore before anything in it is touched: recovery deletes and
    truncates files there and the lock writes a pid, which through a link would happen
    outside the store. One directory listing per directory, no ``stat`` per file.
    """
    path = store_path(path)
    if path.exists() and not path.is_dir():
        raise NotAStore(f"{path} is a file, not a store directory")
    if os.path.lexists(path / MANIFEST_NAME):
        check_tree(path, (SEGMENT_DIR, INDEX_DIR))
        return path
    if path.exists():
        stray = {p.name for p in path.iterdir()} - _CREATION_FILES
        if stray:
            raise NotAStore(
                f"{path} is a directory without an engramdb manifest "
                f"(holds {', '.join(sorted(stray)[:3])})"
            )
        check_tree(path, (SEGMENT_DIR, INDEX_DIR))  # an unfinished creation, redone in it
    elif not create:
        raise NotAStore(f"no store at {path}", hint="pass create=True to make a new one")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc}") from exc
    return path


def create_store(path: Path, encoder: Encoder | None, dim: int | None,
                 settings: Settings) -> Catalog | None:
    """Write a new, empty store at ``path``: catalog (unless ``journal_only_turns`` leaves it
    to the first fold) and segments first, the manifest last. Returns the catalog, still
    open, for the open that follows (opening DuckDB costs tens of milliseconds), or None."""
    if encoder is not None:
        spec = encoder.spec()
        if dim is not None and dim != encoder.dim:
            raise DimensionMismatch(f"dim={dim} but the encoder produces {encoder.dim}")
        dim = encoder.dim
    elif dim is not None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise InvalidInput(f"dim must be a positive int, got {dim!r}")
        spec = {"kind": "vectors", "dim": dim}
    else:
        raise InvalidInput(
            f"{path} does not exist yet; creating a store needs encoder=... or dim=...",
            hint="engramdb.open(path, encoder=HashingEncoder()) or open(path, dim=384)",
        )
    # A store without a manifest is an unfinished creation, which the next open may redo.
    catalog_path = path / CATALOG_NAME
    journal_only = settings.journal_only_turns > 0
    try:
        for stale in (catalog_path, path / (CATALOG_NAME + ".wal"), path / LEXICAL_SNAPSHOT,
                      *catalog_temp_files(path)):
            stale.unlink(missing_ok=True)
        shutil.rmtree(path / SEGMENT_DIR, ignore_errors=True)
        shutil.rmtree(path / INDEX_DIR, ignore_errors=True)
        (path / SEGMENT_DIR).mkdir()
        catalog = None if journal_only else Catalog(catalog_path)
    except (OSError, CorruptStore) as exc:
        # A catalog made just now cannot be damaged: the disk failed (full, read-only).
        raise StorageError(f"cannot create a store in {path}: "
                           f"{getattr(exc, 'message', exc)}") from exc
    try:
        if catalog is not None:
            catalog.create_schema()
            catalog.checkpoint()
        fsync_dir(path)
        Manifest(encoder_spec=spec, dim=dim, dtype=settings.vector_dtype,
                 settings=settings.to_dict(), catalog=not journal_only).write(path)
    except BaseException:
        if catalog is not None:
            catalog.close()
        raise
    return catalog


def read_manifest(path: Path, encoder: Encoder | None, dim: int | None,
                  settings: Settings | None, *, record: bool = True
                  ) -> tuple[Manifest, dict[str, Any]]:
    """The store's manifest, checked against what the caller opened it with; new settings
    are recorded (with ``record``; else they apply to this handle only). Also returns the
    settings recorded before (journaled turns replay with them)."""
    manifest = Manifest.read(path)
    before = dict(manifest.settings)
    if encoder is not None and encoder.fingerprint != manifest.fingerprint:
        raise ModelMismatch(
            f"{path} was built with encoder {manifest.encoder_spec.get('kind')} "
            f"(fingerprint {manifest.fingerprint[:16]}), but was opened with "
            f"{encoder.spec().get('kind')} (fingerprint {encoder.fingerprint[:16]})"
        )
    if dim is not None and dim != manifest.dim:
        raise DimensionMismatch(f"{path} has dim {manifest.dim}, not {dim}")
    if settings is not None and settings.to_dict() != manifest.settings:
        if settings.vector_dtype != manifest.dtype:
            raise InvalidInput("vector_dtype cannot change after a store is created")
        manifest.settings = settings.to_dict()
        if record:
            _warn_embedding_change(path, before, settings)
            # A new lexical_metadata is recorded once the store is re-indexed under it
            # (Opening.replay): a crash before that leaves the old one, which the stored
            # BM25 documents still follow.
            changed = manifest.settings
            manifest.settings = {**changed, "lexical_metadata": before.get("lexical_metadata", "")}
            manifest.write(path)
            manifest.settings = changed
    return manifest, before


def _warn_embedding_change(path: Path, before: dict[str, Any], new: Settings) -> None:
    """Log that engrams written from now on embed other metadata with their text than the
    recorded settings ``before`` did: a vector is fixed at its engram's first write
    (docs/recall.md)."""
    try:
        old = embedded_keys(Settings.from_stored(before))
    except CorruptStore:  # a damaged record the settings given replace: nothing to compare
        return
    now = embedded_keys(new)
    if old != now:
        log.warning("%s: new engrams embed the metadata keys %r with their text (before: %r); "
                    "engrams already stored keep their vectors", path, now, old)


class Opening:
    """One open of a store: fills ``parts`` and builds its committer, loader and keeper.

    ``jobs`` are the reads it runs on threads; if the open fails, the caller waits for them
    (:meth:`Background.wait`) before closing the catalog.
    """

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        parts.path = store_path(parts.path)  # absolute: a later chdir must not move the store
        self.jobs: list[Background] = []
        self.recovered: list[str] = []
        self.committer: Committer
        self.loader: DerivedLoader
        self.keeper: IndexKeeper
        self._journaled: list[bytes] = []
        self._as_recorded: Settings | None = None
        self.replay_settings: dict[str, Any] = {}  # the settings before this open's

    def run(self, opened: tuple[Manifest, dict[str, Any]], index: dict[str, Any] | None,
            catalog: Catalog | None = None) -> None:
        """Open the catalog (or take the one a creation left open) and the segments,
        recover, and load the derived state."""
        parts = self.parts
        path = parts.path
        manifest, self.replay_settings = opened
        parts.manifest = manifest
        parts.settings = Settings.from_stored(manifest.settings)
        # The settings the journal's turns were written under: these, unless this open
        # records new ones (parsed again then; most opens change none).
        self._as_recorded = (copy.copy(parts.settings)
                             if self.replay_settings == manifest.settings else None)
        parts.dim = manifest.dim
        parts.fingerprint = manifest.fingerprint
        # The vector index files are read and checked on a thread while the catalog is
        # opened and queried below: the index's CRC pass and DuckDB's queries run without the
        # GIL, so on 2 cores they overlap (IndexKeeper.load waits for it).
        saved = None
        if (path / INDEX_DIR / "index.json").exists():
            saved = Background(VectorIndex.load, path / INDEX_DIR, manifest.dim)
            self.jobs.append(saved)
        read_only = parts.read_only
        fast = parts.settings.durability != "full" and not read_only
        if not read_only:
            # A catalog rewrite that died before its rename leaves this behind (collect.py).
            (path / (CATALOG_NAME + ".compact")).unlink(missing_ok=True)
        if catalog is None and not self._has_catalog(manifest):
            self._open_journal_only(saved, index, fast)
            return
        if catalog is None:
            catalog = Catalog(path / CATALOG_NAME, fast=fast, read_only=read_only)
        elif fast:
            parts.catalog = catalog  # closed by the caller if the switch fails
            catalog.set_fast(True)
        parts.catalog = catalog
        counters = self._counters()
        self._upgrade_format()
        self.committer = Committer(parts, Counters(
            generation=counters["generation"], clock=counters["clock"],
            next_eid=counters["next_eid"], next_seq=counters["next_seq"],
            last_turn=counters["last_turn"], journal_seq=counters["journal_seq"]), fast=fast)
        parts.segments = self._segments(path, not fast)
        if read_only:
            self._check_clean(counters)
        else:
            self.recovered.extend(self._settle_unsynced(counters["synced_eid"]))
            self.recovered.extend(parts.segments.recover(parts.catalog.segment_lengths()))
        parts.journal = TurnJournal(path, durable=not fast, read_only=read_only)
        self._journaled, torn = parts.journal.read()
        if torn:
            self.recovered.append(torn)
        if read_only:
            self._journaled = self._unfolded()
        self._load_derived(saved, index)

    def _segments(self, directory: Path, durable: bool) -> SegmentStore:
        manifest, settings = self.parts.manifest, self.parts.settings
        itemsize = 2 if manifest.dtype == "float16" else 4
        return SegmentStore(directory, manifest.dim, manifest.dtype,
                            settings.segment_bytes // (manifest.dim * itemsize), durable)

    def _has_catalog(self, manifest: Manifest) -> bool:
        """Whether the store has its catalog file: always, unless it was made without one
        (``Manifest.catalog``) and no fold has written it yet. CorruptStore if it is gone."""
        path = self.parts.path
        if os.path.lexists(path / CATALOG_NAME):
            if not manifest.catalog and not self.parts.read_only:
                # A first fold that died between its rename and the manifest: record it now,
                # so that the file going missing later is seen as damage.
                manifest.record_catalog(path)
            return True
        if manifest.catalog:
            raise CorruptStore(f"{path}: {CATALOG_NAME} is missing",
                               hint="restore the store from an export or backup")
        return False

    def _open_journal_only(self, saved: Background | None, index: dict[str, Any] | None,
                           fast: bool) -> None:
        """Open a store whose turns live in its journal alone (no catalog file yet): no DuckDB.
        Its state is that of an empty store plus the journal's turns, which :meth:`replay`
        applies, holding the vectors in memory. A read-only handle that needs a catalog
        makes it, and writes the vector files, in a temporary directory of its own (removed
        at close): the store's files are never written."""
        parts = self.parts
        start = {k: v for k, v in cat.START_COUNTERS.items() if k != "synced_eid"}
        self.committer = Committer(parts, Counters(**start), fast=fast)
        directory = parts.path
        if parts.read_only:
            parts.scratch = make_scratch(parts.path)
            directory = parts.scratch.path
        if not (directory / SEGMENT_DIR).is_dir():
            (directory / SEGMENT_DIR).mkdir()
            fsync_dir(directory)
        parts.segments = self._segments(directory, not fast)
        # The journal holds every vector: the replay puts them in memory until the first
        # fold writes the files. Files here were left by a handle that never closed (or an
        # older engramdb): only checked now (regular files, no links), removed after the
        # replay (Opening.replay).
        parts.segments.recover({}, dry_run=True)
        parts.segments.directory_unsynced()  # their names too were never fsynced
        parts.segments.hold_in_memory()
        parts.journal = TurnJournal(parts.path, durable=not fast, read_only=parts.read_only)
        self._journaled, torn = parts.journal.read()
        if torn:
            self.recovered.append(torn)
        self.loader = DerivedLoader(parts, self.committer, self.recovered)
        parts.hot = HotState()
        parts.lexical = LexicalIndex()
        parts.context = TurnContext(parts.lexical.tokenizer)
        parts.has_links = False
        parts.mirror = TurnMirror.empty()  # the turns' image of a catalog, which starts empty
        self._load_index(saved, index)

    def _check_clean(self, counters: dict[str, int]) -> None:
        """A read-only open writes nothing, so it can only open a store that needs no
        recovery: ReadOnlyStore names what a writable open would have to do first."""
        parts = self.parts
        needs = parts.segments.recover(parts.catalog.segment_lengths(), dry_run=True)
        if counters["synced_eid"] < counters["next_eid"]:
            needs.append("writes made in \"fast\" durability were never synced")
        if needs:
            raise ReadOnlyStore(f"{parts.path} needs recovery before a read-only open: "
                                + "; ".join(needs))

    def _unfolded(self) -> list[bytes]:
        """The journal's records a read-only open would have to replay: none allowed."""
        parts, seq = self.parts, self.committer.counters.journal_seq
        if any(turnlog.decode(p, parts.dim, parts.manifest.dtype).seq > seq
               for p in self._journaled):
            raise ReadOnlyStore(f"{parts.path} needs recovery before a read-only open: its "
                                "turn journal holds turns not folded into the catalog")
        return []

    def replay(self, writer: Writer) -> None:
        """Apply the turns journaled since the last fold (a crash or a dropped handle kept
        them there), then fold them into the catalog; a store without a catalog file keeps
        them in the journal until its first fold is due (``Settings.journal_only_turns``)."""
        parts, counters = self.parts, self.committer.counters
        records = [turnlog.decode(p, parts.dim, parts.manifest.dtype) for p in self._journaled]
        self._journaled = []
        todo = [r for r in records if r.seq > counters.journal_seq]
        expected = counters.journal_seq + 1
        # The turns are applied with the settings they were written under (an open may
        # have just recorded new ones).
        current, parts.settings = parts.settings, (
            self._as_recorded or Settings.from_stored(self.replay_settings))
        parts.replaying = True  # a read-only handle of a store without a catalog replays too
        try:
            # Vectors and BM25 postings are written once for all the replayed turns.
            with parts.segments.deferring(), parts.lexical.deferring():
                for record in todo:
                    if record.seq != expected:
                        raise CorruptStore(f"{parts.path}: turn journal record {record.seq} "
                                           f"follows record {expected - 1}",
                                           hint="restore the store from an export or backup")
                    writer.replay(record)
                    expected += 1
        finally:
            parts.settings = current
            parts.replaying = False
        journal_only = parts.catalog is None
        if journal_only and not parts.read_only:
            # Vector files a handle left behind (the journal holds their vectors) go.
            self.recovered.extend(parts.segments.recover(parts.segments.committed))
        if records and not parts.read_only and (not journal_only or self.committer.fold_due()):
            self.committer.fold()
        if todo and not journal_only:
            self.recovered.append(f"replayed {len(todo)} turns from the turn journal")
        # BM25 documents hold the metadata values the settings name (derived/lexical.py):
        # after the replayed turns, which were indexed under the settings they were written
        # with, every document is made again under the new names.
        stored = self.replay_settings.get("lexical_metadata", "")
        if stored != parts.settings.lexical_metadata and not parts.read_only:
            self.committer.fold()  # a store without a catalog gets it: the words are there
            self.loader.reindex_lexical()
            parts.manifest.write(parts.path)
        for action in self.recovered:  # the open's last step: everything recovery did
            log.warning("recovery of %s: %s", parts.path, action)

    def _load_derived(self, saved: Background | None, index: dict[str, Any] | None) -> None:
        parts = self.parts
        # The hot state is one DuckDB scan (GIL-free, on its own cursor): it runs beside the
        # BM25 load, which needs no part of it.
        # Bounds from the counters and segments: a tampered eid or row is refused before the
        # arrays sized by it are allocated.
        bounds = {"next_eid": self.committer.counters.next_eid,
                  "max_row": max(parts.segments.committed.values(), default=0)}
        hot = Background(lambda: HotState.from_arrow(
            parts.query_arrow(f"SELECT {HOT_COLUMNS} FROM engrams"), **bounds))
        self.jobs.append(hot)
        self.loader = DerivedLoader(parts, self.committer, self.recovered)
        parts.lexical = self.loader.load_lexical()
        parts.context = self.loader.load_context()
        parts.has_links = bool(parts.query("SELECT count(*) FROM edges")[0][0])
        parts.hot = hot.result()
        check_pointers(parts)
        self._load_index(saved, index)
        if not parts.read_only:
            self.keeper.fit_rotation()  # a store closed (or crashed) between its first writes

    def _load_index(self, saved: Background | None, index: dict[str, Any] | None) -> None:
        """The vector index keeper, the index (loaded, brought up to date, or none) and its
        background indexer; from here on commits update the derived state."""
        parts = self.parts
        self.keeper = IndexKeeper(parts, self.committer)
        self.committer.keeper = self.keeper
        parts.index = self.keeper.load(index, saved, self.recovered)
        if parts.index is not None and parts.indexer is None:  # a rebuild made one already
            parts.indexer = BackgroundIndexer(
                parts.index, max_pending_bytes=int(parts.settings.index_backlog_mb * 2**20))
        self.committer.derived_ready = True

    def _counters(self) -> dict[str, int]:
        """The catalog's counters, with those older stores lack added."""
        catalog = self.parts.catalog
        counters = catalog.counters()
        if not set(counters) >= _COUNTERS:
            raise CorruptStore(
                f"{self.parts.path}: catalog counters are incomplete ({sorted(counters)})")
        if self.parts.read_only:  # those older stores lack: their starting values, unwritten
            return {"last_turn": -1, "journal_seq": 0, "synced_eid": counters["next_eid"],
                    **counters}
        # Counters of stores written before integrate() (last_turn) and the turn journal.
        for name, start in (("last_turn", -1), ("journal_seq", 0)):
            if name not in counters:
                with catalog.transaction() as con:
                    con.execute("INSERT INTO counters VALUES (?, ?)", [name, start])
                counters[name] = start
        if "synced_eid" not in counters:  # stores written before "fast" durability: synced
            with catalog.durable(), catalog.transaction() as con:
                con.execute("INSERT INTO counters VALUES ('synced_eid', ?)",
                            [counters["next_eid"]])
            counters["synced_eid"] = counters["next_eid"]
        return counters

    def _upgrade_format(self) -> None:
        """Bring a store of an older format to this one: format 3 adds the occurrences' key
        column (an empty column: one catalog statement, once). The manifest is written after
        the catalog, so a crash between the two only repeats the idempotent statement."""
        manifest = self.parts.manifest
        if manifest.format_version >= 3:
            return
        if self.parts.read_only:
            raise ReadOnlyStore(
                f"{self.parts.path} is of format {manifest.format_version}; reading it needs "
                f"format {FORMAT_VERSION}, which a writable open upgrades it to")
        # Durable before the manifest says 3 ("fast" mode would leave the COMMIT unsynced).
        with self.parts.catalog.durable(), self.parts.catalog.transaction() as con:
            con.execute(ADD_KEY_COLUMN)
        manifest.format_version = FORMAT_VERSION
        manifest.write(self.parts.path)
        log.info("%s: upgraded to format %d (occurrence keys)", self.parts.path, FORMAT_VERSION)

    def _settle_unsynced(self, mark: int) -> list[str]:
        """Check the vectors written after the last sync point; drop the engrams they lost.

        In "fast" durability a power cut can keep catalog rows whose vector bytes never
        reached the disk. Every engram from ``mark`` (the ``synced_eid`` counter) on is
        checked against its checksum, read from the file. In one durable commit the engrams
        that fail are removed (logged with reason ``lost``), segments shorter on disk than
        their committed length are cut back, and the mark is advanced once the survivors are
        fsynced. A no-op after a clean close and in "full" mode, which keep the mark current.
        """
        parts, counters = self.parts, self.committer.counters
        if mark > counters.next_eid:
            # Not a mark of this store's eids (an import by an engramdb that copied counters
            # it did not know): every engram here was written with fsyncs, so all are synced.
            with self.committer.commit(durable=True, bump=False) as c:
                c.set(synced_eid=counters.next_eid)
        if mark >= counters.next_eid:
            return []
        rows = parts.query_arrow(
            'SELECT eid, seg, "row", vec_sum FROM engrams WHERE eid >= ? ORDER BY eid', [mark])
        segs = rows.column("seg").to_numpy()
        ok = parts.segments.verify_rows(segs, rows.column("row").to_numpy(),
                                        rows.column("vec_sum").to_pylist())
        lost = rows.column("eid").to_numpy()[~ok]
        committed = parts.catalog.segment_lengths()
        lengths = {s: min(n, parts.segments.rows_on_disk(s)) for s, n in committed.items()}
        lengths = {s: n for s, n in lengths.items() if n}  # a file that never reached the disk
        parts.segments.sync({int(s) for s in np.unique(segs[ok])})
        with self.committer.commit(durable=True, bump=bool(len(lost))) as c:
            c.set(synced_eid=counters.next_eid)
            if len(lost):
                c.delete_engrams(lost, "lost", tick=counters.clock)
                if counters.last_turn in set(lost.tolist()):
                    c.set(last_turn=-1)
            if lengths != committed:
                cat.set_segment_lengths(c.con, lengths, committed)
        return _settle_report(ok, lost, committed, lengths)


def _settle_report(ok: np.ndarray, lost: np.ndarray, committed: dict[int, int],
                   lengths: dict[int, int]) -> list[str]:
    actions = [f"checked {len(ok)} engrams written after the last sync point"] if len(ok) \
        else []
    if len(lost):
        actions.append(
            f"lost {len(lost)} engrams written after the last sync point: their vectors "
            "were not on disk (power loss or OS crash with durability 'fast'); the "
            "forgetting log lists them with reason 'lost'")
    for seg in sorted(s for s in committed if lengths.get(s, 0) != committed[s]):
        actions.append(f"cut segment {seg} from {committed[seg]} to {lengths.get(seg, 0)} "
                       "committed rows (the rest of it was not on disk)")
    return actions


def check_pointers(parts: Parts) -> None:
    """Every live pointer must fall inside a committed segment row."""
    committed = parts.segments.committed
    alive = np.nonzero(parts.hot.alive)[0]
    if len(alive) == 0:
        return
    segs, rows = parts.hot.seg[alive], parts.hot.row[alive]
    # One lookup table over segment numbers, not a dict lookup per engram (2 s at 1M).
    known = np.array(sorted(committed), np.int64)
    lengths = np.array([committed[s] for s in known.tolist()], np.int64)
    pos = np.minimum(np.searchsorted(known, segs), max(len(known) - 1, 0))
    hit = (known[pos] == segs) if len(known) else np.zeros(len(segs), bool)
    limits = np.where(hit, lengths[pos] if len(known) else 0, 0)
    bad = rows >= limits
    if bad.any():
        raise CorruptStore(
            f"{parts.path}: {int(bad.sum())} engrams point past the committed vectors")
