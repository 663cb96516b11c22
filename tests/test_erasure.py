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
