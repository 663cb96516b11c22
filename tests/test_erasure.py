"""forget + gc leave no byte of a forgotten engram's text or vector in any file of the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import engramdb
from engramdb.content import compress_text
from engramdb.encoders import HashingEncoder


def _all_bytes(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file()]


def test_forget_then_gc_erases_text_and_vector(store_path: Path) -> None:
    secret = "my bank PIN is 7304 and my password is hunter2-zebra-quartz"
    with engramdb.open(store_path, encoder=HashingEncoder(dim=64)) as mem:
        mem.ingest_many([f"ordinary memory number {i}" for i in range(500)])
        r = mem.ingest(secret, role="user", metadata={"note": "hunter2-zebra-quartz"})
        mem.ingest_many([f"later memory number {i}" for i in range(500)])
        vector = mem.vectors([r.id])[0].tobytes()
        needles = [secret.encode(), b"hunter2-zebra-quartz", compress_text(secret), vector,
                   r.id.encode()]
        assert any(vector in b for b in _all_bytes(store_path))  # the scan can see it
        mem.forget(r.id)
        mem.gc()
        for blob in _all_bytes(store_path):
            for needle in needles[:4]:
                assert needle not in blob
        assert len(mem) == 1000 and mem.verify().ok
        assert mem.recall("bank PIN password", top_k=3)[0].text != secret
    with engramdb.open(store_path) as mem:  # and it stays gone after reopening
        assert len(mem) == 1000 and mem.verify().ok
    for blob in _all_bytes(store_path):
        for needle in needles[:4]:
            assert needle not in blob
    assert np.frombuffer(vector, np.float32).shape == (64,)


def test_erasure_leaves_no_hash_of_the_text(tmp_path: Path) -> None:
    """The engram id is a hash of the fingerprint and the text: after gc the forgetting log
    keeps when, why and what kind under a random tombstone, and no file holds the id."""
    path = tmp_path / "a.engram"
    with engramdb.open(path, encoder=HashingEncoder(dim=32)) as mem:
        secret = mem.ingest("my bank PIN is 7304").id
        expiring = mem.ingest("a short-lived note").id
        mem.ingest("something else entirely", pin=True)
        mem.forget([secret])
        assert mem.forgetting_log()[0]["id"] == secret  # not erased yet: still the id
        mem.tick(int(mem.get(expiring).expires_at) + 1)
        mem.gc()
        log = mem.forgetting_log()
        assert {(e["reason"], e["collected"]) for e in log} == {("forgotten", True),
                                                               ("expired", True)}
        tombstones = [e["id"] for e in log]
        assert all(t.startswith("erased-") and len(t) == 39 for t in tombstones)
        assert len(set(tombstones)) == 2
    for ident in (secret, expiring):
        assert not any(ident.encode() in blob for blob in _all_bytes(path)), ident


def test_gc_reports_the_store_bytes_without_the_lock_file(tmp_path: Path) -> None:
    """The LOCK file holds the pid of the process that has the store open: the sizes gc
    reports leave it out, so they do not depend on which process ran it."""
    path = tmp_path / "m"
    with engramdb.open(path, encoder=HashingEncoder(dim=32)) as mem:
        mem.ingest_many([f"note {i}" for i in range(5)])
        report = mem.gc(dry_run=True)
        files = sum(p.stat().st_size for p in path.rglob("*")
                    if p.is_file() and p.name != "LOCK")
        assert report["bytes_before"] == files
        (path / "LOCK").write_text("1234567890\n")  # another pid: the figure is unchanged
        assert mem.gc(dry_run=True)["bytes_before"] == files
