"""The vector index on disk: an ``index.json`` manifest and the files it names.

An index directory holds one hnswlib graph file per level (``level<j>-<dim>.<token>.hnsw``),
each graph's element heights (``heights<j>``), the live and deleted labels and, with a prefix
level, the rotation (``.npy``). ``index.json`` records the format, the configuration, the
counts, the generation and each file's name, size and CRC-32. :class:`IndexWriter` writes a
new generation beside the old one and switches by renaming ``index.json``; :func:`read_index`
checks everything against the manifest and each other before hnswlib reads a byte, raising
:class:`IndexDamaged` (the store then rebuilds: the index is derived state).

Nothing here goes through a link: a save refuses an index directory that is a link
(CorruptStore: its cleanup deletes files there), and a read refuses any index file that is
not a regular file (IndexDamaged: the index is rebuilt, and the next save's cleanup removes
the link itself, never its target).

This module imports numpy, hnswlib, the standard library, the store's file checks
(:mod:`~engramdb.storage.fsio`) and the index modules below it
(:mod:`~engramdb.derived.index_checksums`, :mod:`~engramdb.derived.index_hnsw`,
:mod:`~engramdb.derived.index_config`, :mod:`~engramdb.derived.rotation`,
:mod:`~engramdb.derived.label_states`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import hnswlib
import numpy as np

from engramdb.derived.index_checksums import IndexDamaged, check_sum, file_crc32
from engramdb.derived.index_config import IndexConfig
from engramdb.derived.index_hnsw import file_heights, load_graph
from engramdb.derived.label_states import LabelStates
from engramdb.derived.rotation import Rotation
from engramdb.errors import InvalidInput
from engramdb.storage.fsio import check_directory

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "IndexWriter", "LoadedIndex", "read_index"]

FORMAT = "engramdb-index"
# 3: each graph's element heights are saved beside it ("heights<j>"), so a load slices the
# upper-level link lists out instead of walking them (0.3 s at 1M). 2 (still read): files
# carry a CRC-32 ("crc32"). 1 (still read): a sha256, which cost 2.6 s per open at 1M.
FORMAT_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "index.json"

# Every file this module writes in an index directory matches this, so cleanup after a save
# never touches a file it did not write.
_OWN_FILE = re.compile(
    r"^(level\d+-\d+|heights\d+|rotation|labels|deleted)\.g\d+-[0-9a-f]+\.(hnsw|npy)$")
_OWN_TMP = re.compile(r"^index\.json\.tmp-[0-9a-f]+$")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # platforms that cannot open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- writing ----------------------------------------------------------------------------------


class IndexWriter:
    """One save of an index into ``directory``: new files under fresh names, then the switch.

    Used as a context manager around the writes: :meth:`graph` and :meth:`array` write files
    (the caller holds its read lock meanwhile, so the graphs do not change), :meth:`commit`
    derives each graph's heights file, fsyncs every file, records each one's size and CRC-32
    in ``index.json`` (written to a temp name, fsynced, renamed over the old one) and fsyncs
    the directory. Leaving the block with an error before that rename deletes the files
    written; leaving it normally deletes the previous save's files, so a crash at any point
    leaves the old or the new index, whole. Raises ``OSError`` on I/O failure,
    ``InvalidInput`` for a negative generation and ``CorruptStore`` if ``directory`` is a
    link or not a directory.

    Example::

        with IndexWriter(d, generation=42, m=16) as out:
            out.graph(0, 384, graph)
            out.array("labels", live)
            out.array("deleted", dead)
            out.commit({"dim": 384, "levels": [384], ...})
    """

    def __init__(self, directory: Path, generation: int, m: int) -> None:
        if int(generation) < 0:
            raise InvalidInput(f"generation must be >= 0, got {generation}")
        self._dir = directory
        if not check_directory(directory):  # never write (nor clean up) through a link
            self._dir.mkdir(parents=True, exist_ok=True)
        self._generation = int(generation)
        self._token = f"g{self._generation}-{secrets.token_hex(4)}"
        self._m = m
        self._written: list[Path] = []
        self._files: dict[str, str] = {}  # manifest key -> file name
        self._levels = 0
        self._replaced = False

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:
            if not self._replaced:  # nothing references them: the old manifest still rules
                for p in self._written:
                    p.unlink(missing_ok=True)
            return
        keep = set(self._files.values())
        for entry in os.listdir(self._dir):
            if entry not in keep and (_OWN_FILE.match(entry) or _OWN_TMP.match(entry)):
                (self._dir / entry).unlink(missing_ok=True)

    def _new(self, key: str, name: str) -> Path:
        path = self._dir / name
        self._written.append(path)
        self._files[key] = name
        return path

    def graph(self, j: int, level_dim: int, g: hnswlib.Index) -> None:
        """Write level ``j``'s graph (levels in order, from 0)."""
        path = self._new(f"level{j}", f"level{j}-{level_dim}.{self._token}.hnsw")
        try:
            g.save_index(str(path))
        except RuntimeError as exc:  # hnswlib reports I/O errors this way
            raise OSError(f"could not write {path}: {exc}") from exc
        self._levels = j + 1

    def array(self, key: str, arr: np.ndarray) -> None:
        """Write ``arr`` as the ``.npy`` file ``key`` (``labels``, ``deleted``, ``rotation``)."""
        with open(self._new(key, f"{key}.{self._token}.npy"), "wb") as f:
            np.save(f, arr, allow_pickle=False)

    def commit(self, fields: dict[str, Any]) -> None:
        """Write ``index.json`` with ``fields`` (dim, levels, config, counts, capacity...) plus
        the format, the generation and every file written, and switch to it."""
        # Derived from the files just written (hnswlib has no call that returns them without
        # copying the whole graph), outside the caller's lock: writers need not wait.
        for j in range(self._levels):
            heights = file_heights(self._dir / self._files[f"level{j}"], self._m)
            with open(self._new(f"heights{j}", f"heights{j}.{self._token}.npy"), "wb") as f:
                np.save(f, heights, allow_pickle=False)
        manifest = {"format": FORMAT, "version": FORMAT_VERSION,
                    "generation": self._generation, **fields, "files": {}}
        for key, name in self._files.items():
            _fsync_file(self._dir / name)
            manifest["files"][key] = {
                "name": name,
                "bytes": (self._dir / name).stat().st_size,
                "crc32": file_crc32(self._dir / name),
            }
        tmp = self._dir / f"{MANIFEST}.tmp-{secrets.token_hex(4)}"
        self._written.append(tmp)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._dir / MANIFEST)
        self._replaced = True
        _fsync_dir(self._dir)


# ---- reading ----------------------------------------------------------------------------------


@dataclass
class LoadedIndex:
    """What :func:`read_index` read and checked: the parts of a ``VectorIndex``."""

    config: IndexConfig
    rotation: Rotation | None
    fitted_on: int | None  # rotation_fitted_on, when recorded
    graphs: list[hnswlib.Index]
    capacity: int
    labels: LabelStates
    generation: int
    stale_format: bool  # an older format: a save upgrades it


def read_index(directory: Path, dim: int, threads: int) -> LoadedIndex:
    """Read and check the index saved in ``directory`` for ``dim``-d vectors.

    Every file's size and CRC-32 (sha256 in format-1 manifests) are checked against the
    manifest *before* hnswlib reads it, then the graphs' headers, upper-level link lists and
    label sets are checked against each other; each graph file is read once, through a memory
    map (:func:`~engramdb.derived.index_hnsw.load_graph`), its graph set to use ``threads``.
    Raises :class:`IndexDamaged` for anything missing, damaged or inconsistent.

    Example: ``loaded = read_index(store_dir / "index", 384, threads=2)``
    """
    try:
        _check_regular(directory / MANIFEST)
        with open(directory / MANIFEST, encoding="utf-8") as f:
            man = json.load(f)
    except FileNotFoundError as exc:
        raise IndexDamaged(f"no {MANIFEST} in {directory}") from exc
    except (OSError, ValueError) as exc:
        raise IndexDamaged(f"unreadable {directory / MANIFEST}: {exc}") from exc
    try:
        return _load_checked(directory, man, dim, threads)
    except IndexDamaged:
        raise
    except (KeyError, TypeError, ValueError, OSError, RuntimeError, MemoryError) as exc:
        raise IndexDamaged(f"inconsistent index in {directory}: {exc!r}") from exc


def _load_checked(d: Path, man: Any, dim: int, threads: int) -> LoadedIndex:
    config = _checked_config(d, man, dim)
    levels = list(config.levels)
    paths = _checked_files(d, man, levels, dim)
    live, dead = _read_labels(paths, man)
    rotation = _read_rotation(paths, levels, dim)
    n_total = len(live) + len(dead)
    try:
        states = LabelStates.from_arrays(live, dead)
    except ValueError as exc:
        raise IndexDamaged(f"bad label files: {exc}") from exc
    fitted_on = man.get("rotation_fitted_on") if rotation is not None else None
    if fitted_on is not None and (not isinstance(fitted_on, int) or fitted_on < 0):
        raise IndexDamaged(f"bad rotation_fitted_on {fitted_on!r}")
    graphs = []
    for j, lv in enumerate(levels):
        heights = None
        if f"heights{j}" in paths:
            heights = np.load(paths[f"heights{j}"], allow_pickle=False)
            if heights.dtype != np.uint8 or heights.shape != (n_total,):
                raise IndexDamaged(f"heights file {j} has dtype {heights.dtype} and shape "
                                   f"{heights.shape}, expected uint8 ({n_total},)")
        g, ids = load_graph(paths[f"level{j}"], man["files"][f"level{j}"], lv, config.M,
                            n_total, threads, heights)
        if not states.holds_exactly(ids):
            raise IndexDamaged(f"level {j} graph holds other labels than the label files")
        g.set_ef(config.ef_search)
        g.set_num_threads(threads)
        graphs.append(g)
    capacities = {g.get_max_elements() for g in graphs}
    if len(capacities) != 1:
        raise IndexDamaged(f"the level graphs have different capacities {capacities}")
    _check_deleted_flags(graphs, live, dead)
    return LoadedIndex(config=config, rotation=rotation, fitted_on=fitted_on, graphs=graphs,
                       capacity=capacities.pop(), labels=states,
                       generation=int(man["generation"]),
                       stale_format=int(man["version"]) < FORMAT_VERSION)


def _checked_config(d: Path, man: Any, dim: int) -> IndexConfig:
    """The manifest's configuration, once its format, version, dimension and levels check."""
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise IndexDamaged(f"{d / MANIFEST} is not an engramdb index manifest")
    if man.get("version") not in _READABLE_VERSIONS:
        raise IndexDamaged(f"index format version {man.get('version')!r} is not supported")
    if int(man["dim"]) != dim:
        raise IndexDamaged(f"index is {man['dim']}-d, the store is {dim}-d")
    try:
        config = IndexConfig.from_dict(man["config"])
        config.validate(dim)
    except InvalidInput as exc:
        raise IndexDamaged(f"bad config in {d / MANIFEST}: {exc}") from exc
    if [int(x) for x in man["levels"]] != config.levels:
        raise IndexDamaged("manifest levels disagree with its config")
    return config


def _checked_files(d: Path, man: dict[str, Any], levels: list[int],
                   dim: int) -> dict[str, Path]:
    """Each file's path by manifest key, once the set of files, their names, their sizes and
    (but for the graphs, checked as they are mapped) their checksums agree with the manifest."""
    files = man["files"]
    expected = {f"level{j}" for j in range(len(levels))} | {"labels", "deleted"}
    if int(man["version"]) >= 3:
        expected |= {f"heights{j}" for j in range(len(levels))}
    if levels[0] < dim:
        expected.add("rotation")
    if set(files) != expected:
        raise IndexDamaged(f"manifest lists files {sorted(files)}, expected {sorted(expected)}")
    paths: dict[str, Path] = {}
    for key, info in files.items():
        name = str(info["name"])
        if not _OWN_FILE.match(name):
            raise IndexDamaged(f"manifest names a foreign file {name!r}")
        p = d / name
        try:
            size = _check_regular(p)
        except FileNotFoundError as exc:
            raise IndexDamaged(f"index file {name} is missing") from exc
        if size != int(info["bytes"]):
            raise IndexDamaged(f"index file {name} is {size} bytes, expected {info['bytes']}")
        if not key.startswith("level"):
            check_sum(p, info)
        paths[key] = p
    return paths


def _check_regular(path: Path) -> int:
    """The size of ``path``; IndexDamaged if it is a link or a special file (never read
    through: a link leads out of the store, a FIFO would hang the read)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise IndexDamaged(f"{path} is not a regular file (a link or a special file)")
    return st.st_size


def _read_labels(paths: dict[str, Path], man: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The live and deleted labels (sorted int64), checked against the manifest's counts."""
    live = np.load(paths["labels"], allow_pickle=False)
    dead = np.load(paths["deleted"], allow_pickle=False)
    for name, arr in (("labels", live), ("deleted", dead)):
        if arr.dtype != np.int64 or arr.ndim != 1:
            raise IndexDamaged(f"{name} file has dtype {arr.dtype} and shape {arr.shape}")
    if len(live) != int(man["count"]) or len(dead) != int(man["deleted"]):
        raise IndexDamaged("label files disagree with the manifest's counts")
    return live, dead


def _read_rotation(paths: dict[str, Path], levels: list[int], dim: int) -> Rotation | None:
    """The saved rotation (None without a prefix level), checked against the levels."""
    if "rotation" not in paths:
        return None
    try:
        rotation = Rotation.load(paths["rotation"])
    except ValueError as exc:
        raise IndexDamaged(f"bad rotation: {exc}") from exc
    if rotation.dim != dim or rotation.rows < levels[-1]:
        raise IndexDamaged(f"rotation is {rotation.rows} x {rotation.dim}, expected "
                           f"at least {levels[-1]} x {dim}")
    return rotation


def _check_deleted_flags(graphs: list[hnswlib.Index], live: np.ndarray,
                         dead: np.ndarray) -> None:
    """Spot-check that the deleted flags, which live in the graph files, agree with the label
    files (hnswlib's get_items refuses a deleted label)."""
    for j, g in enumerate(graphs):
        for x in dead[:32].tolist():
            try:
                g.get_items([x])
            except RuntimeError:
                continue
            raise IndexDamaged(f"label {x} is deleted in the manifest, live in level {j}")
        for x in live[:32].tolist():
            try:
                g.get_items([x])
            except RuntimeError as exc:
                raise IndexDamaged(f"label {x} is live in the manifest, not in level {j}") \
                    from exc
