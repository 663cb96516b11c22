"""verify: check every invariant of an open store and report what is wrong (never raises on
damage)."""

from __future__ import annotations

import json
import math

import numpy as np

from engramdb.content import content_id, decompress_text, vector_checksum
from engramdb.derived.hotstate import eid_problem
from engramdb.engine.parts import Parts
from engramdb.engine.upkeep import INDEX_DIR
from engramdb.errors import CorruptStore, EngramError
from engramdb.storage.fsio import check_tree
from engramdb.storage.manifest import Manifest
from engramdb.storage.segments import SEGMENT_DIR
from engramdb.types import KIND_NAMES, VerifyReport

# Counts of rows that point at no engram: (what they are, the query that counts them).
_DANGLING = (
    ("occurrences of no engram",
     "SELECT count(*) FROM occurrences WHERE eid NOT IN (SELECT eid FROM engrams)"),
    ("links to no engram",
     "SELECT count(*) FROM edges WHERE a NOT IN (SELECT eid FROM engrams) "
     "OR b NOT IN (SELECT eid FROM engrams)"),
    ("conversation-context rows of no engram",
     "SELECT count(*) FROM turns WHERE eid NOT IN (SELECT eid FROM engrams)"),
    ("duplicate engram ids", "SELECT count(*) - count(DISTINCT id) FROM engrams"),
    ("duplicate eids", "SELECT count(*) - count(DISTINCT eid) FROM engrams"),
    ("occurrence keys held twice",
     "SELECT count(key) - count(DISTINCT key) FROM occurrences"),
    ("conversation-context rows naming no label",
     "SELECT count(*) FROM turns t WHERE (t.session IS NOT NULL AND t.session NOT IN "
     "(SELECT code FROM labels)) OR (t.role IS NOT NULL AND t.role NOT IN "
     "(SELECT code FROM labels))"),
)
_CODES = ", ".join(str(code) for code in sorted(KIND_NAMES))
# Values recall, export or the forgetting log cannot read: (what they are, the query that
# counts them). A tampered catalog held each of these, and verify() said ok.
_UNREADABLE = (
    ("engrams with an unknown kind code",
     f"SELECT count(*) FROM engrams WHERE kind NOT IN ({_CODES})"),
    ("forgetting-log entries with an unknown kind code",
     f"SELECT count(*) FROM forgotten WHERE kind NOT IN ({_CODES})"),
    # NaN sorts above every number: a NaN-weighted link ranked first in association.
    ("links with a non-finite or negative weight",
     "SELECT count(*) FROM edges WHERE NOT isfinite(weight) OR weight < 0"),
    ("links not stored once as (a < b)", "SELECT count(*) FROM edges WHERE a >= b"),
    # JSON has no NaN or infinity: export refused them (NULL expires_at is a pinned engram).
    ("engrams with a non-finite expiry tick or earned lifespan",
     "SELECT count(*) FROM engrams WHERE NOT isfinite(expires_at) OR NOT isfinite(earned)"),
)


def verify(parts: Parts, next_eid: int) -> VerifyReport:
    """Check the manifest, segment files, every engram (pointer, vector checksum,
    finiteness, text and content hash, reference count) and the catalog's cross references.
    Runs under the write lock."""
    report = VerifyReport()
    problems = report.problems
    try:
        disk = Manifest.read(parts.path)
        if disk.fingerprint != parts.fingerprint:
            problems.append("manifest fingerprint changed while the store was open")
    except EngramError as exc:
        problems.append(f"manifest: {exc.message}")
    committed = parts.segments.committed
    row_bytes = parts.segments.row_bytes
    try:  # links or special files put into the store since it was opened
        check_tree(parts.path, (SEGMENT_DIR, INDEX_DIR))
    except EngramError as exc:
        problems.append(f"store files: {exc.message}")
    for seg, rows in committed.items():
        # The handle's own files (verify folds first, so they exist): a read-only handle of
        # a store without a catalog file wrote them into a scratch directory.
        p = parts.segments.directory / f"{seg:08d}.vec"
        size = p.lstat().st_size if p.is_file() and not p.is_symlink() else -1
        if size != rows * row_bytes:
            problems.append(f"segment {p.name}: {size} bytes, expected {rows * row_bytes}")
    try:
        rows = parts.query(
            'SELECT eid, id, seg, "row", vec_sum, text, refs, '
            "(SELECT count(*) FROM occurrences o WHERE o.eid = e.eid) FROM engrams e"
        )
    except CorruptStore as exc:
        problems.append(exc.message)
        return report
    seen_ptr: dict[tuple[int, int], int] = {}
    for row in rows:
        problems.extend(_engram_problems(parts, row, committed, seen_ptr))
    for what, sql in (*_DANGLING, *_UNREADABLE):
        count = parts.query(sql)[0][0]
        if count:
            problems.append(f"{count} {what}")
    eids = [row[0] for row in rows]
    problem = eid_problem(min(eids, default=0), max(eids, default=-1), next_eid)
    if problem is not None:
        problems.append(f"eids: {problem}")
    bad_meta = _bad_metadata(parts)
    if bad_meta:
        problems.append(f"{bad_meta} occurrences whose metadata is not a JSON object "
                        "(of finite numbers)")
    report.checked = {"engrams": len(rows), "segments": len(committed)}
    return report


def _bad_metadata(parts: Parts) -> int:
    """How many occurrences hold metadata that recall and export cannot read back: not
    JSON, not an object, or with NaN or infinite numbers (JSON has none; export refuses)."""
    table = parts.query_arrow(
        "SELECT metadata FROM occurrences WHERE metadata IS NOT NULL")
    bad = 0
    for chunk in table.column("metadata").chunks:
        for text in chunk.to_pylist():
            try:
                doc = _DECODER.decode(text)
            except (ValueError, RecursionError):
                bad += 1
                continue
            bad += not isinstance(doc, dict)
    return bad


def _refuse(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{text} is out of range")
    return value


# One decoder (json.loads with hooks builds one per call: 7 us a value instead of 1.4).
_DECODER = json.JSONDecoder(parse_constant=_refuse, parse_float=_finite)


def _engram_problems(parts: Parts, row: tuple, committed: dict[int, int],
                     seen_ptr: dict[tuple[int, int], int]) -> list[str]:
    """What is wrong with one engram's row (``seen_ptr``: pointers of the rows before)."""
    eid, ident, seg, r, vsum, blob, refs, n_occ = row
    name = f"engram {ident[:12]}"
    if not 0 <= r < committed.get(seg, 0):
        return [f"{name}: pointer ({seg}, {r}) past committed"]
    problems = []
    if (seg, r) in seen_ptr:
        problems.append(f"{name}: shares vector ({seg}, {r})")
    seen_ptr[(seg, r)] = eid
    try:
        vec = parts.segments.view(seg)[r]
    except (CorruptStore, IndexError, OSError) as exc:
        return [*problems, f"{name}: vector unreadable: {exc}"]
    if vector_checksum(vec) != vsum:
        problems.append(f"{name}: vector checksum mismatch")
    elif not np.isfinite(vec).all():
        problems.append(f"{name}: vector has non-finite values")
    try:
        text = decompress_text(blob)
        if content_id(parts.fingerprint, text) != ident:
            problems.append(f"{name}: text does not match its id")
    except Exception as exc:  # zstd or UTF-8 damage
        problems.append(f"{name}: text unreadable: {exc}")
    if refs != n_occ:
        problems.append(f"{name}: refs {refs} but {n_occ} occurrences")
    if not parts.stored(eid):
        problems.append(f"{name}: missing from the in-memory state")
    return problems
