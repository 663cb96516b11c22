"""Index upkeep: keeps the vector index (derived state) in step with the committed engrams.

Loads the saved index on open and replays what it lacks, or rebuilds it; hands committed
vectors to the background indexer; marks removed engrams deleted; fits the PCA rotation once
a store is big enough; saves the index with the generation it covers.

A small store has no index at all (``parts.index`` is None, no files under ``index/``):
up to the configuration's ``exact_threshold`` stored vectors every search is an exact scan
of the segments anyway (``recall.dense.scan_is_cheaper``), so a graph would only cost
time on every write, open and close, and disk. The index is built the first time a commit
takes the store past that size, or at once when the caller set an index configuration.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from engramdb.derived.hotstate import NEVER
from engramdb.derived.index import IndexConfig, IndexDamaged, VectorIndex
from engramdb.derived.indexer import BackgroundIndexer
from engramdb.engine.commit import Committer
from engramdb.engine.parts import Parts
from engramdb.errors import StorageError
from engramdb.progress import progress_bar
from engramdb.storage.fsio import check_directory

log = logging.getLogger(__name__)
INDEX_DIR = "index"
# Saved again once this many changes (or a quarter of the index) are not on disk.
_SAVE_EVERY = 50_000
_REPLAY_BATCH = 50_000
# A rebuild this large shows a progress bar even when none was asked for.
_LOUD_BUILD = 50_000


class IndexKeeper:
    """The vector index's upkeep for one open store (its index lives in ``parts.index``)."""

    def __init__(self, parts: Parts, committer: Committer) -> None:
        self.parts = parts
        self.committer = committer
        self.unsaved = 0  # changes the saved index files do not hold
        self.config: IndexConfig  # as chosen on open (the index's own once it exists)

    # -- open ---------------------------------------------------------------------------------

    def choose_config(self, override: dict[str, Any] | None) -> IndexConfig:
        """The index configuration: recorded in the manifest, chosen for the store's size,
        or the caller's ``override`` over either; recorded in the manifest if it changed."""
        parts = self.parts
        manifest = parts.manifest
        recorded = manifest.index.get("config")
        if override is not None:
            base = recorded or IndexConfig.choose(parts.dim, int(parts.hot.alive.sum())).to_dict()
            cfg = IndexConfig.from_dict({**base, **override})
        elif recorded:
            cfg = IndexConfig.from_dict(recorded)
        else:
            cfg = IndexConfig.choose(parts.dim, int(parts.hot.alive.sum()))
        cfg.validate(parts.dim)
        if cfg.to_dict() != recorded or (override is not None) != bool(
            manifest.index.get("user_override")
        ):
            manifest.index = {"config": cfg.to_dict(),
                              "user_override": override is not None or bool(
                                  manifest.index.get("user_override"))}
            manifest.write(parts.path)
        return cfg

    def rebuild_config(self, live: int) -> IndexConfig:
        """The configuration a rebuild uses: the caller's if they set one, else chosen again
        for ``live`` engrams (and recorded in the manifest)."""
        parts = self.parts
        manifest = parts.manifest
        if manifest.index.get("user_override"):
            cfg = parts.index.config
        else:
            cfg = IndexConfig.choose(parts.dim, live)
        if cfg.to_dict() != manifest.index.get("config"):
            manifest.index = {**manifest.index, "config": cfg.to_dict()}
            manifest.write(parts.path)
        return cfg

    def wants_index(self, cfg: IndexConfig) -> bool:
        """Whether the store is past the size where an index pays (or the caller set one)."""
        parts = self.parts
        if parts.manifest.index.get("user_override"):
            return True
        limit = cfg.exact_threshold
        if self.committer.counters.next_eid - 1 <= limit:  # eids are never reused: a bound
            return False
        stored = sum(parts.segments.committed.values())
        return stored > limit or len(parts.hot.live_eids(self.committer.counters.clock)) > limit

    def drop_files(self) -> None:
        """Remove the saved index files of a store that keeps no index."""
        directory = self.parts.path / INDEX_DIR
        if not check_directory(directory):
            return
        try:
            for entry in directory.iterdir():
                if entry.is_file() and not entry.is_symlink():
                    entry.unlink()
        except OSError as exc:
            raise StorageError(f"removing {INDEX_DIR}/ failed: {exc}") from exc

    def load(self, override: dict[str, Any] | None, saved: Any, recovered: list[str]
             ) -> VectorIndex | None:
        """Load the vector index and bring it up to date with the catalog, or rebuild it.

        ``saved`` is the background read of the index files (None: there are none). A
        missing, damaged or ahead-of-catalog index is rebuilt; one that lags is brought up to
        date by replaying the engrams it lacks. What was done is appended to ``recovered``.
        """
        parts = self.parts
        cfg = self.config = self.choose_config(override)
        live = parts.hot.live_eids(self.committer.counters.clock)
        if not self.wants_index(cfg):
            if saved is not None:
                saved.wait()
                if not parts.read_only:
                    self.drop_files()
            parts.hot.next_death = float(parts.hot.expires[live].min()) if len(live) else NEVER
            return None
        try:
            if saved is None:
                raise IndexDamaged(f"no {INDEX_DIR}/index.json")
            idx, generation = saved.result()
            if not idx.config.same_graphs(cfg):
                raise IndexDamaged("its graphs were built with another configuration")
            if generation > self.committer.counters.generation:
                raise IndexDamaged("it is ahead of the catalog")
        except IndexDamaged as exc:
            if parts.read_only:  # nothing to save it to: recall scans exactly (same answers)
                recovered.append(f"read-only: the vector index is unusable ({exc}); recall "
                                 "scans every vector")
                parts.hot.next_death = (float(parts.hot.expires[live].min()) if len(live)
                                        else NEVER)
                return None
            recovered.append(f"rebuilt the vector index ({exc})")
            return self.build(cfg, live)
        if idx.config != cfg:  # only search settings changed: no rebuild needed
            idx.set_search_config(cfg)
        if idx.stale_format:  # saved by an older engramdb: close() saves it in today's format
            self.unsaved += 1
        self._catch_up(idx, live, recovered)
        parts.hot.next_death = float(parts.hot.expires[live].min()) if len(live) else NEVER
        return idx

    def _catch_up(self, idx: VectorIndex, live: np.ndarray, recovered: list[str]) -> None:
        """Replay the live engrams a saved index lacks; mark deleted those it has too many."""
        have = idx.labels()
        if np.array_equal(have, live):  # after a clean close: nothing to replay (no sorts)
            missing = extra = have[:0]
        else:
            missing = np.setdiff1d(live, have, assume_unique=True)
            extra = np.setdiff1d(have, live, assume_unique=True)
        if len(missing):
            for start in range(0, len(missing), _REPLAY_BATCH):
                part = missing[start:start + _REPLAY_BATCH]
                idx.add(part, self.parts.fetch_vectors(part))
            recovered.append(f"replayed {len(missing)} engrams into the vector index")
            self.unsaved = len(missing)
        if len(extra):
            idx.mark_deleted(extra)
            self.unsaved += len(extra)

    # -- build and save -----------------------------------------------------------------------

    def build(self, cfg: IndexConfig, live: np.ndarray, progress: bool = False
              ) -> VectorIndex | None:
        """Build the index over ``live`` from the stored vectors, install it and save it (a
        small store drops its index instead: see the module docstring)."""
        parts = self.parts
        if not self.wants_index(cfg):
            if parts.indexer is not None:
                parts.indexer.close()
            parts.index = parts.indexer = None
            self.drop_files()
            self.unsaved = 0
            parts.hot.next_death = float(parts.hot.expires[live].min()) if len(live) else NEVER
            return None
        bar = progress_bar(len(live), progress or len(live) > _LOUD_BUILD, "index")
        try:
            idx = VectorIndex.build(
                live, parts.fetch_vectors, cfg, dim=parts.dim,
                progress=None if bar is None else lambda done, total: bar.update(done - bar.n),
            )
        finally:
            if bar is not None:
                bar.close()
        if parts.indexer is not None:
            parts.indexer.reset(idx)
        else:
            parts.indexer = BackgroundIndexer(
                idx, max_pending_bytes=int(parts.settings.index_backlog_mb * 2**20))
        parts.index = idx
        self.save()
        parts.hot.next_death = float(parts.hot.expires[live].min()) if len(live) else NEVER
        return idx

    def save(self) -> None:
        """Persist the vector index (derived state) with the generation it covers."""
        parts = self.parts
        # "fast": the index must not cover writes a power cut could still take back (their
        # eids would be handed out again, and the saved graph would hold the old vectors).
        self.committer.sync()
        if parts.indexer is not None:
            parts.indexer.drain()  # a saved index must hold every row its generation covers
        try:
            parts.index.save(parts.path / INDEX_DIR, self.committer.counters.generation)
        except OSError as exc:
            raise StorageError(f"saving the vector index failed: {exc}") from exc
        self.unsaved = 0

    def save_if_unsaved(self) -> None:
        """Save the index if it holds changes its files do not (and indexing has not failed:
        a failed indexer's rows are replayed on the next open instead)."""
        parts = self.parts
        if parts.index is not None and self.unsaved and not (
                parts.indexer is not None and parts.indexer.failed):
            self.save()

    def fit_rotation(self) -> bool:
        """Rebuild the index with a PCA rotation once it has enough vectors to fit one.

        An index built while the store was empty starts with a random rotation, whose prefix
        levels are only random projections. When the store first holds ``index.fit_size``
        live engrams (2,048 at the 4,096-d default), the rotation is fitted on them and every
        level rebuilt, once: a rebuild of ~2k vectors, about a second at 4,096-d. Later drift
        is the user's call (``rebuild()`` refits on the whole store). Returns whether it ran.
        """
        idx = self.parts.index
        if idx is None:
            return False
        fitted = idx.rotation_fitted_on
        if fitted is None or fitted >= idx.fit_size:  # no prefix level, unknown, or done
            return False
        live = self.parts.hot.live_eids(self.committer.counters.clock)
        if len(live) < idx.fit_size:
            return False
        self.build(idx.config, live)
        return True

    # -- after commits ------------------------------------------------------------------------

    def added(self, eids: np.ndarray, vectors: np.ndarray) -> None:
        """Committed new vectors: indexed behind on the background indexer."""
        parts = self.parts
        if parts.index is None:
            if self.wants_index(self.config):  # the store just outgrew exact scans
                self._start_index()
            return
        if parts.indexer is not None:
            parts.indexer.submit(eids, vectors)  # acknowledged already; indexed behind
        else:
            parts.index.add(eids, vectors)
        self.unsaved += len(eids)
        if self.fit_rotation():
            return
        # Saving drains the backlog first: only save when that costs no waiting.
        if self.unsaved >= max(_SAVE_EVERY, len(parts.index) // 4) and (
                parts.indexer is None or parts.indexer.idle()):
            self.save()

    def _start_index(self) -> None:
        """Install an empty index and queue every live engram on the background indexer:
        the write that crossed the threshold does not wait for the graph (searches scan the
        backlog exactly until it is in)."""
        parts = self.parts
        live = parts.hot.live_eids(self.committer.counters.clock)
        log.info("%s outgrew exact scans (%d live engrams): indexing them in the background",
                 parts.path, len(live))
        idx = VectorIndex.build(live[:0], parts.fetch_vectors, self.config, dim=parts.dim)
        parts.indexer = BackgroundIndexer(
            idx, max_pending_bytes=int(parts.settings.index_backlog_mb * 2**20))
        parts.index = idx
        for start in range(0, len(live), _REPLAY_BATCH):
            part = live[start:start + _REPLAY_BATCH]
            parts.indexer.submit(part, parts.fetch_vectors(part))
        self.unsaved += len(live)

    def removed(self, eids: np.ndarray) -> None:
        """Engrams removed by a commit: deleted from the index and its backlog."""
        parts = self.parts
        if parts.index is not None and len(eids):
            if parts.indexer is not None:
                parts.indexer.discard(eids)
            parts.index.mark_deleted(eids)
            self.unsaved += len(eids)

    def revive(self, eids: np.ndarray) -> None:
        """Content said again after it expired lives again: back into the index."""
        parts = self.parts
        if parts.index is None:
            return
        ix = parts.indexer
        back = np.array([x for x in eids.tolist() if x not in parts.index
                         and not (ix is not None and ix.is_pending(x))], np.int64)
        if len(back):
            parts.index.add(back, parts.fetch_vectors(back))

    def drain(self, save: bool) -> int:
        """Wait until every acknowledged engram is indexed; with ``save``, persist the index
        (under the write lock). Returns how many were waited for."""
        parts = self.parts
        waiting = len(parts.indexer) if parts.indexer is not None else 0
        if parts.indexer is not None:
            parts.indexer.drain()
        if save:
            with parts.write_lock:
                parts.check_open()
                if self.unsaved:
                    self.save()
        return waiting
