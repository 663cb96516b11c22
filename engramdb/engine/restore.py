"""Restoring a store: rows read from an export, written into a new, empty store.

Import (``engramdb/transfer``) reads and checks an export file; a :class:`Restorer` writes
what it read through the one commit primitive (:meth:`Committer.commit`), like every other
write: each batch's vectors are appended (and fsynced, unless "fast") before the one
transaction that inserts their engram and occurrence rows and moves ``next_eid``;
:meth:`Restorer.finish` writes the links, the forgetting log and the exported counters in
one last commit.

Derived state: a restore registers nothing with it (no ``add_engrams``), so this handle's
hot arrays, BM25, conversation context and vector index never see the restored engrams,
and nothing it saves on close can pass for them: the BM25 tables stay empty (the next open
re-derives them from the texts) and the saved vector index covers no engram. The store must
be closed after :meth:`Restorer.finish`, opened again and rebuilt (``Store.rebuild``), which
derives every structure from the restored rows, exactly as after a crash.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from engramdb.content import vector_checksum
from engramdb.engine.commit import Committer
from engramdb.engine.parts import Parts
from engramdb.errors import InvalidInput
from engramdb.storage import catalog as cat

#: The catalog tables a restore writes (and whose column types it reports).
RESTORED = ("engrams", "occurrences", "edges", "forgotten")


class Restorer:
    """Writes given rows (eids, kinds, expiries, occurrences, vectors) into an empty store.

    Raises InvalidInput if the store already holds engrams, occurrences, links or log
    entries, or has handed out an eid: a restore never merges into a store.
    """

    def __init__(self, parts: Parts, committer: Committer) -> None:
        self.parts = parts
        self.committer = committer
        self.finished = False
        self.next_eid = committer.counters.next_eid  # the eid the next engram must have
        # Restore commits never bump the generation: any other write does.
        self.generation = committer.counters.generation
        with self._writing():
            held = parts.query("SELECT " + " + ".join(
                f"(SELECT count(*) FROM {t})" for t in RESTORED))[0][0]
            if held or committer.counters.next_eid != 1:
                raise InvalidInput(f"{parts.path} is not empty",
                                   hint="restore only into a newly created store")

    @property
    def dtype(self) -> np.dtype:
        """The dtype vectors are stored in (and must be given in)."""
        return self.parts.segments.dtype

    def column_types(self, table: str) -> dict[str, str]:
        """The DuckDB type of each column of one of :data:`RESTORED`, in table order."""
        if table not in RESTORED:
            raise ValueError(f"a restore does not write {table!r}")
        return {str(r[0]): str(r[1]) for r in self.parts.query(f"DESCRIBE {table}")}

    def add_engrams(self, engrams: pa.Table, occurrences: pa.Table,
                    vectors: np.ndarray) -> None:
        """Commit one batch of engrams with their occurrences and vectors.

        ``engrams`` holds rows of the engrams table without the vector pointer and checksum
        (``seg``, ``row``, ``vec_sum``, filled in here), with eids :attr:`next_eid`,
        ``next_eid + 1``... in order; ``vectors`` has one row per engram in :attr:`dtype`,
        whose bytes are stored as they are.
        """
        n = engrams.num_rows
        eids = engrams.column("eid").to_numpy()
        if len(vectors) != n or vectors.dtype != self.dtype or not np.array_equal(
                eids, np.arange(self.next_eid, self.next_eid + n)):
            raise InvalidInput("engrams need consecutive eids from next_eid and one vector "
                               "each, in the store's dtype")
        with self._writing(), self.committer.commit(bump=False) as c:
            segs, rows = c.append_vectors(vectors)  # durable before the commit that uses them
            rows_table = engrams.append_column("seg", pa.array(segs, pa.int32()))
            rows_table = rows_table.append_column("row", pa.array(rows, pa.int64()))
            rows_table = rows_table.append_column(
                "vec_sum", pa.array([vector_checksum(v) for v in vectors], pa.int64()))
            cat.insert_arrow(c.con, "engrams", rows_table)
            cat.insert_arrow(c.con, "occurrences", occurrences)
            c.set(next_eid=self.next_eid + n)
        self.next_eid += n

    def finish(self, edges: pa.Table, forgotten: pa.Table, counters: dict[str, int],
               last_turn: int | None) -> None:
        """Commit the links, the forgetting log and the counters; the restore is complete.

        ``counters`` are the exported ones (generation and clock included) with ``next_eid``
        past every eid used (log entries of collected engrams have eids of their own);
        counters this store does not keep are carried over as they are. ``last_turn`` is the
        eid of the last integrated turn, if any.
        """
        with self._writing():
            # The generation is the exported one (no bump): nothing derived is saved for it.
            with self.committer.commit(bump=False) as c:
                cat.insert_arrow(c.con, "edges", edges)
                cat.insert_arrow(c.con, "forgotten", forgotten)
                known = {r[0] for r in c.con.execute("SELECT name FROM counters").fetchall()}
                # Counters a newer store keeps beyond the core ones are carried over as they are.
                for name in sorted(set(counters) - known):
                    c.con.execute("INSERT INTO counters VALUES (?, ?)", [name, counters[name]])
                c.set(**{k: v for k, v in counters.items() if k in known})
                if last_turn is not None:
                    c.set(last_turn=last_turn)
            self.finished = True

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The store's write lock, on an open handle and an unfinished restore."""
        parts = self.parts
        parts.check_open()
        with parts.write_lock:
            parts.check_open()
            if self.finished:
                raise InvalidInput("this restore is finished",
                                   hint="close the store and open it again")
            counters = self.committer.counters
            if (counters.next_eid, counters.generation) != (self.next_eid, self.generation):
                # Another write (or restorer) used the store meanwhile: the eids given would
                # collide with its engrams.
                raise InvalidInput(f"{parts.path} was written to during the restore",
                                   hint="restore into a new store that nothing else writes")
            yield
