"""verify: check every invariant of an open store and report what is wrong (never raises on
damage)."""

from __future__ import annotations

import numpy as np

from engramdb.content import content_id, decompress_text, vector_checksum
from engramdb.engine.parts import Parts
from engramdb.errors import CorruptStore, EngramError
from engramdb.storage.manifest import Manifest
from engramdb.storage.segments import SEGMENT_DIR
from engramdb.types import VerifyReport

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
    for seg, rows in committed.items():
        p = parts.path / SEGMENT_DIR / f"{seg:08d}.vec"
        size = p.stat().st_size if p.exists() else -1
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
    max_eid = 0
    for row in rows:
        max_eid = max(max_eid, row[0])
        problems.extend(_engram_problems(parts, row, committed, seen_ptr))
    for what, sql in _DANGLING:
        count = parts.query(sql)[0][0]
        if count:
            problems.append(f"{count} {what}")
    if rows and max_eid >= next_eid:
        problems.append("next_eid counter is behind the stored engrams")
    report.checked = {"engrams": len(rows), "segments": len(committed)}
    return report


def _engram_problems(parts: Parts, row: tuple, committed: dict[int, int],
                     seen_ptr: dict[tuple[int, int], int]) -> list[str]:
    """What is wrong with one engram's row (``seen_ptr``: pointers of the rows before)."""
    eid, ident, seg, r, vsum, blob, refs, n_occ = row
    name = f"engram {ident[:12]}"
    if r >= committed.get(seg, 0):
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
