"""The read and restore interfaces tools use: a snapshot only reads, a restore never merges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import engramdb
from engramdb.errors import InvalidInput


def test_snapshot_runs_one_read_statement(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "a.engram", dim=4) as mem:
        mem.ingest("x", vector=[1, 0, 0, 0])
        with mem.snapshot() as snap:
            assert snap.query("SELECT count(*) FROM engrams") == [(1,)]
            assert snap.query("FROM counters WHERE name = 'next_eid'") == [("next_eid", 2)]
            for sql in ("SELECT 1; DELETE FROM engrams", "DELETE FROM engrams",
                        "UPDATE counters SET value = 999", "FROM engrams; DROP TABLE edges",
                        "not sql at all"):
                with pytest.raises(InvalidInput):
                    snap.query(sql)
        assert len(mem) == 1 and mem.verify().ok


def test_a_restore_refuses_a_store_written_meanwhile(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "a.engram", dim=4) as mem:
        restorer = mem.restorer()
        mem.ingest("written beside the restore", vector=[1, 0, 0, 0])
        rows = pa.table({"eid": pa.array([1], pa.int64())})
        with pytest.raises(InvalidInput, match="written to during the restore"):
            restorer.add_engrams(rows, pa.table({}), np.zeros((1, 4), np.float32))
        assert len(mem) == 1 and mem.verify().ok

