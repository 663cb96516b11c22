"""Per-user, per-turn benchmark: engramdb against a hand-built SQLite memory and peers.

Run by hand (not in CI). The workload is a chatbot's: one small memory per user, written one
turn at a time, most users cold. Every system runs in its own subprocesses (one per phase, so
a "cold" or "returning" user is one the process has not touched yet), on the same texts and
the same 384-d vectors (engramdb's ``HashingEncoder(dim=384)``):

* ``engramdb``: a store per user (``engramdb.open`` / ``engramdb.Pool``); a turn is
  ``mem.integrate(text, top_k=5)``; ``recall`` + ``ingest`` are also timed separately.
* ``sqlite``: a hybrid memory written by hand on stdlib ``sqlite3`` the way a careful
  developer would: a file per user, WAL, ``synchronous=FULL``, a ``turns`` table (text, role,
  time, float32 vector blob) with an FTS5 index kept by a trigger; on open the user's vectors
  are loaded into a numpy matrix; recall is BM25 (FTS5) and exact cosine (numpy) top 20
  each, fused by reciprocal rank, top 5 texts fetched; one transaction per turn. It encodes
  with the same ``HashingEncoder`` inside the turn, as engramdb does.
* ``lancedb``: one LanceDB database, a table per user (no vector index: flat search).
* ``chromadb``: one ``PersistentClient``, a collection per user (cosine HNSW).
* ``sqlite-vec``: a file per user, a ``vec0`` table (cosine, brute force) and a text table,
  WAL + ``synchronous=FULL``, one transaction per turn (via ``pysqlite3``: the stdlib
  ``sqlite3`` here cannot load extensions).

The peers get the precomputed vectors (they run in another virtualenv, without engramdb; the
encoder costs ~0.12 ms a text, which engramdb and the SQLite memory pay inside the turn) and
recall by vector only. For every system a turn is "recall 5, then append the turn".

Rows: warm turn p50 (store open), recall and append p50 apart, cold turn p50 (open, one turn,
close, on a 10-turn user), bytes of an empty store, disk of one user after 10/40/100 turns
(written turn by turn, measured at rest), a pool of 20 users x 10 turns with 32 open at most
(engramdb's ``Pool``; the others an LRU of open handles; one thread, turns interleaved across
users, each user's in order), bulk ingest of N users x 100 turns (time, bytes per user),
returning-user p50 (open, turn, close on one of those users), a warm turn on a 5,000-turn user,
one user of ``--big`` turns (vector recall top 10: p50, recall@10 against exact cosine, disk per
turn), and (when ``strace`` is on the PATH) the fsync-family system calls per warm turn and per
close, counted under strace in a separate process.

Texts are LoCoMo turns read at run time from ``../shared/data/locomo/locomo-dev.json`` (never
copied into the repository; CC BY-NC 4.0) and its questions as recall queries; long users
(5,000 and ``--big`` turns) join two turns; without the file, synthetic chat-like sentences.

The peers live in a separate virtualenv (not engramdb's)::

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install lancedb chromadb sqlite-vec pysqlite3-binary numpy pyarrow
    PYTHONPATH=. .venv/bin/python benchmarks/bench_turns.py --peer-python /tmp/peers-venv/bin/python

``--quick`` is a smoke run (~2 minutes); the defaults (1,000 bulk users, a 100,000-turn user)
took 13 minutes on the loaded 2-core machine, ``--users 2000`` (the issue's size) adds ~6;
``--big 0`` skips the 100k row (~4 minutes of it). Without ``--peer-python`` only engramdb and
the SQLite memory run. Every phase of a run uses a copy of ``engramdb/`` taken when it starts
(under ``OUT/src``), so edits to the working tree during a run do not mix code versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))
if os.environ.get("BENCH_TURNS_SRC"):  # a worker of a run that snapshotted engramdb/
    sys.path.insert(0, os.environ["BENCH_TURNS_SRC"])

DIM = 384
K = 5  # recall top k of a turn
BIG_K = 10  # recall@10 on the big user
LOCOMO = HERE.parent.parent.parent / "shared" / "data" / "locomo" / "locomo-dev.json"
SYSTEMS = ["engramdb", "sqlite", "lancedb", "chromadb", "sqlite-vec"]
PEERS = {"lancedb", "chromadb", "sqlite-vec"}
PHASES = ["growth", "pool", "cold", "ingest", "returning", "long", "big", "fsync"]
LABELS = {"engramdb": "engramdb", "sqlite": "SQLite by hand", "lancedb": "LanceDB",
          "chromadb": "chromadb", "sqlite-vec": "sqlite-vec"}
MARK = "/engramdb-bench-turns-mark-"  # os.access() of these paths marks the strace log


# -- texts and vectors (driver) ---------------------------------------------------------------


def locomo_turns(path: Path) -> tuple[list[str], list[str], list[str]]:
    """The turns (text, role) of every conversation in order, deduplicated, and questions."""
    data = json.loads(path.read_text())
    texts, roles, seen, questions = [], [], set(), []
    for item in data:
        conv = item["conversation"]
        numbers = sorted(int(k.split("_")[1]) for k in conv
                         if re.fullmatch(r"session_\d+", k))
        for n in numbers:
            for turn in conv[f"session_{n}"]:
                text = " ".join(turn.get("text", "").split())
                if not text or text in seen:
                    continue
                seen.add(text)
                texts.append(text)
                roles.append("user" if turn["speaker"] == conv["speaker_a"] else "assistant")
        questions += [q["question"] for q in item.get("qa", []) if q.get("question")]
    return texts, roles, questions


def synthetic_turns(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Chat-like sentences when LoCoMo is absent (deterministic)."""
    rng = random.Random(seed)
    subjects = ["my sister", "my dog Max", "the new job", "our trip to Lisbon", "the garden",
                "my guitar lessons", "the kids", "a sourdough recipe", "my running plan",
                "the book club", "my grandmother", "the apartment", "a painting class",
                "the camping weekend", "my manager", "the concert", "learning Spanish"]
    verbs = ["I keep thinking about", "Yesterday I told you about", "Can you remind me of",
             "I'm so excited about", "I had a rough week with", "We finally talked about",
             "Guess what happened with", "I'm worried about", "I took photos of"]
    tails = ["and it went better than expected.", "but I'm not sure what to do next.",
             "so I bought a new notebook for it.", "which reminded me of last summer.",
             "and my friend Ana loved it.", "although it rained the whole day.",
             "and I want to try again next month.", "it cost more than I planned."]
    texts: dict[str, None] = {}
    while len(texts) < n:
        texts[f"{rng.choice(verbs)} {rng.choice(subjects)} {rng.choice(tails)} "
              f"({rng.randrange(10**6)})"] = None
    out = list(texts)
    questions = [f"What did I say about {s}?" for s in subjects] * 20
    return out, ["user" if i % 2 == 0 else "assistant" for i in range(n)], questions


def encode(texts: list[str]) -> np.ndarray:
    from engramdb.encoders import HashingEncoder

    enc = HashingEncoder(dim=DIM)
    out = np.empty((len(texts), DIM), np.float32)
    for i in range(0, len(texts), 4096):
        out[i:i + 4096] = enc.encode(texts[i:i + 4096])
    return out


def prepare(args: argparse.Namespace) -> Path:
    """Write the texts, vectors and ground truth every worker reads; return the data dir."""
    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    if LOCOMO.exists() and not args.synthetic:
        texts, roles, questions = locomo_turns(LOCOMO)
        source = f"LoCoMo ({LOCOMO.name}, read at run time)"
    else:
        texts, roles, questions = synthetic_turns(1500)
        source = "synthetic sentences"
    questions = questions[:args.queries]
    n_long = max(args.long, args.big)
    rng = np.random.default_rng(args.seed)
    pairs: dict[tuple[int, int], None] = {}
    while len(pairs) < n_long:
        a, b = (int(x) for x in rng.integers(len(texts), size=2))
        # unordered: "A B" and "B A" hash to the same vector (a tie no search can break)
        if a != b and (b, a) not in pairs:
            pairs[(a, b)] = None
    long_texts = [f"{texts[a]} {texts[b]}" for a, b in pairs]
    meta = {"source": source, "texts": texts, "roles": roles, "questions": questions,
            "long_texts": long_texts}
    key = f"{len(texts)}-{len(long_texts)}-{len(questions)}-{args.seed}-{source[:6]}"
    stamp = data / "key.txt"
    if not stamp.exists() or stamp.read_text() != key:
        t0 = time.perf_counter()
        np.save(data / "vecs.npy", encode(texts))
        np.save(data / "long.npy", encode(long_texts))
        np.save(data / "questions.npy", encode(questions))
        print(f"encoded {len(texts) + len(long_texts) + len(questions):,} texts in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        stamp.write_text(key)
    (data / "texts.json").write_text(json.dumps(meta))
    enc_ms = []
    from engramdb.encoders import HashingEncoder

    enc = HashingEncoder(dim=DIM)
    for t in texts[:300]:
        t0 = time.perf_counter()
        enc.encode([t])
        enc_ms.append(ms(t0))
    args.encode_ms = float(np.median(enc_ms[50:]))
    return data


def exact_scores(data: Path, n: int) -> np.ndarray:
    """Every question's cosine against the first ``n`` long texts (the big user's turns)."""
    x = np.asarray(np.load(data / "long.npy", mmap_mode="r")[:n])
    return np.load(data / "questions.npy") @ x.T


def recall_at(scores: np.ndarray, got: list[list[int]], k: int) -> float:
    """Recall@k against exact cosine, counting ties: a returned row whose exact score reaches
    the k-th best score (within float32 rounding) is a true neighbour."""
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    hits = [sum(1 for j in set(g) if scores[i, j] >= kth[i] - 1e-6) for i, g in enumerate(got)]
    return float(np.mean([min(h, k) / k for h in hits]))


# -- the systems (workers) ---------------------------------------------------------------------


class Data:
    """What a worker reads: texts, roles, vectors, questions."""

    def __init__(self, path: Path) -> None:
        meta = json.loads((path / "texts.json").read_text())
        self.texts: list[str] = meta["texts"]
        self.roles: list[str] = meta["roles"]
        self.questions: list[str] = meta["questions"]
        self.long_texts: list[str] = meta["long_texts"]
        self.vecs = np.load(path / "vecs.npy")
        self.long_vecs = np.load(path / "long.npy", mmap_mode="r")
        self.qvecs = np.load(path / "questions.npy")

    def window(self, user: int, n: int) -> list[int]:
        """Indices of ``n`` consecutive turns for user number ``user`` (distinct for n <= P)."""
        p = len(self.texts)
        if n > p:
            raise SystemExit(f"{n} turns per user but only {p} distinct texts")
        start = (user * 131) % p
        return [(start + i) % p for i in range(n)]


def dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class EngramDB:
    """engramdb: a store directory per user."""

    name = "engramdb"

    def __init__(self, root: Path) -> None:
        import engramdb
        from engramdb.encoders import HashingEncoder
        from engramdb.pool import user_dirname

        self.engramdb, self.enc, self.root, self.dirname = (
            engramdb, HashingEncoder(dim=DIM), root, user_dirname)
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def version() -> str:
        import duckdb

        import engramdb

        return (f"engramdb {engramdb.__version__} from {Path(engramdb.__file__).parent}, "
                f"duckdb {duckdb.__version__}")

    def path(self, user: str) -> Path:
        return self.root / self.dirname(user)

    def open(self, user: str):
        return self.engramdb.open(self.path(user), encoder=self.enc)

    def close(self, h) -> None:
        h.close()

    def turn(self, h, text: str, vec: np.ndarray, role: str) -> None:
        h.integrate(text, top_k=K, role=role)

    def recall(self, h, text: str, vec: np.ndarray) -> list:
        return [r.text for r in h.recall(text, top_k=K)]

    def append(self, h, text: str, vec: np.ndarray, role: str) -> None:
        h.ingest(text, role=role)

    def bulk(self, h, texts: list[str], vecs: np.ndarray, roles: list[str]) -> list:
        res = h.ingest_many(texts, vectors=vecs, roles=roles)
        return [r.id for r in res]

    def knn(self, h, vec: np.ndarray, k: int, ids: dict) -> list[int]:
        return [ids[r.id] for r in h.recall(vector=vec, top_k=k, associative=False,
                                             context=False)]

    def disk(self, user: str) -> int:
        return dir_bytes(self.path(user))

    def finish(self) -> None:
        pass


class SQLiteMemory:
    """The hybrid memory a careful developer writes on stdlib sqlite3: a file per user."""

    name = "sqlite"
    SCHEMA = """
        CREATE TABLE turns(id INTEGER PRIMARY KEY, ts REAL NOT NULL, role TEXT,
                           text TEXT NOT NULL, vec BLOB NOT NULL);
        CREATE VIRTUAL TABLE turns_fts USING fts5(text, content='turns', content_rowid='id');
        CREATE TRIGGER turns_ai AFTER INSERT ON turns BEGIN
            INSERT INTO turns_fts(rowid, text) VALUES (new.id, new.text);
        END;
        PRAGMA user_version = 1;
    """
    POOL = 20  # candidates from each of BM25 and cosine
    WORD = re.compile(r"\w+", re.UNICODE)

    def __init__(self, root: Path, sqlite3=None) -> None:
        import sqlite3 as stdlib

        self.sqlite3 = sqlite3 or stdlib
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.enc = None
        if self.name == "sqlite":
            from engramdb.encoders import HashingEncoder

            self.enc = HashingEncoder(dim=DIM)

    @classmethod
    def version(cls) -> str:
        import sqlite3

        return f"sqlite {sqlite3.sqlite_version} (stdlib sqlite3)"

    def path(self, user: str) -> Path:
        return self.root / f"{user}.sqlite"

    def connect(self, user: str):
        conn = self.sqlite3.connect(self.path(user), isolation_level=None,
                                    check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def open(self, user: str) -> dict:
        conn = self.connect(user)
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            conn.executescript("BEGIN;" + self.SCHEMA + "COMMIT;")
        blobs = [b for (b,) in conn.execute("SELECT vec FROM turns ORDER BY id")]
        n = len(blobs)
        mat = np.zeros((max(64, 2 * n), DIM), np.float32)
        if n:
            mat[:n] = np.frombuffer(b"".join(blobs), np.float32).reshape(n, DIM)
        return {"conn": conn, "mat": mat, "n": n}

    def close(self, h: dict) -> None:
        h["conn"].close()

    def _push(self, h: dict, vecs: np.ndarray) -> None:
        n, m = h["n"], len(vecs)
        if n + m > len(h["mat"]):
            grown = np.zeros((max(2 * len(h["mat"]), n + m), DIM), np.float32)
            grown[:n] = h["mat"][:n]
            h["mat"] = grown
        h["mat"][n:n + m] = vecs
        h["n"] = n + m

    def _vec(self, text: str, vec: np.ndarray) -> np.ndarray:
        return self.enc.encode([text])[0] if self.enc is not None else vec

    def _search(self, h: dict, text: str, q: np.ndarray, k: int) -> list[tuple[int, str]]:
        n = h["n"]
        if n == 0:
            return []
        s = h["mat"][:n] @ q
        top = np.argpartition(-s, min(self.POOL, n) - 1)[:self.POOL]
        dense = (top[np.argsort(-s[top])] + 1).tolist()  # rowid = row + 1
        terms = sorted(set(self.WORD.findall(text.lower())))
        lexical = []
        if terms:
            match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
            lexical = [r for (r,) in h["conn"].execute(
                "SELECT rowid FROM turns_fts WHERE turns_fts MATCH ? ORDER BY rank LIMIT ?",
                (match, self.POOL))]
        fused: dict[int, float] = {}
        for ranking in (dense, lexical):
            for rank, rowid in enumerate(ranking):
                fused[rowid] = fused.get(rowid, 0.0) + 1.0 / (60 + rank)
        best = sorted(fused, key=fused.__getitem__, reverse=True)[:k]
        marks = ",".join("?" * len(best))
        rows = dict(h["conn"].execute(f"SELECT id, text FROM turns WHERE id IN ({marks})", best))
        return [(i, rows[i]) for i in best]

    def _insert(self, h: dict, text: str, vec: np.ndarray, role: str) -> None:
        conn = h["conn"]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO turns(ts, role, text, vec) VALUES (?, ?, ?, ?)",
                         (time.time(), role, text, vec.astype(np.float32).tobytes()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._push(h, vec[None, :])

    def turn(self, h: dict, text: str, vec: np.ndarray, role: str) -> None:
        q = self._vec(text, vec)
        self._search(h, text, q, K)
        self._insert(h, text, q, role)

    def recall(self, h: dict, text: str, vec: np.ndarray) -> list:
        return [t for _, t in self._search(h, text, self._vec(text, vec), K)]

    def append(self, h: dict, text: str, vec: np.ndarray, role: str) -> None:
        self._insert(h, text, self._vec(text, vec), role)

    def bulk(self, h: dict, texts: list[str], vecs: np.ndarray, roles: list[str]) -> list:
        conn = h["conn"]
        first = h["n"] + 1
        now = time.time()
        for start in range(0, len(texts), 4096):
            stop = min(len(texts), start + 4096)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO turns(ts, role, text, vec) VALUES (?, ?, ?, ?)",
                             ((now, roles[i], texts[i], vecs[i].astype(np.float32).tobytes())
                              for i in range(start, stop)))
            conn.execute("COMMIT")
            self._push(h, np.asarray(vecs[start:stop], np.float32))
        return list(range(first, first + len(texts)))

    def knn(self, h: dict, vec: np.ndarray, k: int, ids: dict) -> list[int]:
        s = h["mat"][:h["n"]] @ vec  # the memory's dense side: exact cosine
        top = np.argpartition(-s, k)[:k]
        return [ids[int(i) + 1] for i in top[np.argsort(-s[top])]]

    def disk(self, user: str) -> int:
        p = self.path(user)
        return sum(dir_bytes(Path(str(p) + s)) for s in ("", "-wal", "-shm")
                   if Path(str(p) + s).exists())

    def finish(self) -> None:
        pass


class SQLiteVec(SQLiteMemory):
    """sqlite-vec: a vec0 table (cosine, brute force) and a text table, a file per user."""

    name = "sqlite-vec"
    SCHEMA = """
        CREATE TABLE turns(id INTEGER PRIMARY KEY, ts REAL NOT NULL, role TEXT,
                           text TEXT NOT NULL);
        CREATE VIRTUAL TABLE vec_turns USING vec0(embedding float[384] distance_metric=cosine);
        PRAGMA user_version = 1;
    """

    def __init__(self, root: Path) -> None:
        import pysqlite3.dbapi2 as sqlite3
        import sqlite_vec

        self.sqlite_vec = sqlite_vec
        super().__init__(root, sqlite3)

    @staticmethod
    def version() -> str:
        import pysqlite3.dbapi2 as sqlite3
        import sqlite_vec

        conn = sqlite3.connect(":memory:")
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        return (f"sqlite-vec {conn.execute('SELECT vec_version()').fetchone()[0]}, "
                f"sqlite {sqlite3.sqlite_version} (pysqlite3-binary)")

    def open(self, user: str) -> dict:
        conn = self.connect(user)
        conn.enable_load_extension(True)
        self.sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            conn.executescript("BEGIN;" + self.SCHEMA + "COMMIT;")
        return {"conn": conn}

    def _search(self, h: dict, q: np.ndarray, k: int) -> list[tuple[int, str]]:
        rows = h["conn"].execute(
            "SELECT t.id, t.text FROM (SELECT rowid, distance FROM vec_turns "
            "WHERE embedding MATCH ? AND k = ?) v JOIN turns t ON t.id = v.rowid "
            "ORDER BY v.distance", (q.astype(np.float32).tobytes(), k)).fetchall()
        return rows

    def _insert_rows(self, conn, rows: list[tuple]) -> None:
        conn.executemany("INSERT INTO turns(id, ts, role, text) VALUES (?, ?, ?, ?)",
                         [r[:4] for r in rows])
        conn.executemany("INSERT INTO vec_turns(rowid, embedding) VALUES (?, ?)",
                         [(r[0], r[4]) for r in rows])

    def _next_id(self, h: dict) -> int:
        if "next" not in h:
            h["next"] = h["conn"].execute("SELECT coalesce(max(id), 0) + 1 FROM turns"
                                          ).fetchone()[0]
        return h["next"]

    def _insert(self, h: dict, text: str, vec: np.ndarray, role: str) -> None:
        conn = h["conn"]
        ident = self._next_id(h)
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._insert_rows(conn, [(ident, time.time(), role, text,
                                      vec.astype(np.float32).tobytes())])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        h["next"] = ident + 1

    def turn(self, h: dict, text: str, vec: np.ndarray, role: str) -> None:
        self._search(h, vec, K)
        self._insert(h, text, vec, role)

    def recall(self, h: dict, text: str, vec: np.ndarray) -> list:
        return [t for _, t in self._search(h, vec, K)]

    def append(self, h: dict, text: str, vec: np.ndarray, role: str) -> None:
        self._insert(h, text, vec, role)

    def bulk(self, h: dict, texts: list[str], vecs: np.ndarray, roles: list[str]) -> list:
        conn, first, now = h["conn"], self._next_id(h), time.time()
        for start in range(0, len(texts), 4096):
            stop = min(len(texts), start + 4096)
            conn.execute("BEGIN IMMEDIATE")
            self._insert_rows(conn, [(first + i, now, roles[i], texts[i],
                                      np.asarray(vecs[i], np.float32).tobytes())
                                     for i in range(start, stop)])
            conn.execute("COMMIT")
        h["next"] = first + len(texts)
        return list(range(first, first + len(texts)))

    def knn(self, h: dict, vec: np.ndarray, k: int, ids: dict) -> list[int]:
        return [ids[i] for i, _ in self._search(h, vec, k)]


class Lance:
    """LanceDB: one database directory, a table per user, flat (exact) vector search."""

    name = "lancedb"

    def __init__(self, root: Path) -> None:
        import lancedb
        import pyarrow as pa

        self.pa = pa
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.db = lancedb.connect(str(root))
        self.schema = pa.schema([
            pa.field("id", pa.int64()), pa.field("ts", pa.float64()),
            pa.field("role", pa.string()), pa.field("text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), DIM))])

    @staticmethod
    def version() -> str:
        import lancedb
        import pyarrow

        return f"lancedb {lancedb.__version__}, pyarrow {pyarrow.__version__}"

    def open(self, user: str) -> dict:
        try:
            table = self.db.open_table(user)
        except (ValueError, FileNotFoundError, RuntimeError):
            table = self.db.create_table(user, schema=self.schema)
        return {"table": table, "n": None}

    def close(self, h: dict) -> None:
        h.clear()

    def _rows(self, first: int, texts, vecs, roles) -> object:
        now = time.time()
        arr = np.ascontiguousarray(vecs, np.float32)
        return self.pa.Table.from_arrays([
            self.pa.array(range(first, first + len(texts)), self.pa.int64()),
            self.pa.array([now] * len(texts), self.pa.float64()),
            self.pa.array(roles, self.pa.string()), self.pa.array(texts, self.pa.string()),
            self.pa.FixedSizeListArray.from_arrays(self.pa.array(arr.reshape(-1)), DIM)],
            schema=self.schema)

    def _count(self, h: dict) -> int:
        if h["n"] is None:
            h["n"] = h["table"].count_rows()
        return h["n"]

    def _search(self, h: dict, vec: np.ndarray, k: int) -> list[dict]:
        if self._count(h) == 0:
            return []
        return (h["table"].search(vec).distance_type("cosine").select(["id", "text"])
                .limit(k).to_list())

    def turn(self, h: dict, text: str, vec: np.ndarray, role: str) -> None:
        self._search(h, vec, K)
        self.append(h, text, vec, role)

    def recall(self, h: dict, text: str, vec: np.ndarray) -> list:
        return [r["text"] for r in self._search(h, vec, K)]

    def append(self, h: dict, text: str, vec: np.ndarray, role: str) -> None:
        n = self._count(h)
        h["table"].add(self._rows(n + 1, [text], vec[None, :], [role]))
        h["n"] = n + 1

    def bulk(self, h: dict, texts: list[str], vecs: np.ndarray, roles: list[str]) -> list:
        first = self._count(h) + 1
        for start in range(0, len(texts), 10_000):
            stop = min(len(texts), start + 10_000)
            h["table"].add(self._rows(first + start, texts[start:stop], vecs[start:stop],
                                      roles[start:stop]))
        h["n"] = first - 1 + len(texts)
        return list(range(first, first + len(texts)))

    def knn(self, h: dict, vec: np.ndarray, k: int, ids: dict) -> list[int]:
        return [ids[r["id"]] for r in self._search(h, vec, k)]

    def disk(self, user: str) -> int:
        return dir_bytes(self.root / f"{user}.lance")

    def finish(self) -> None:
        pass


class Chroma:
    """chromadb: one PersistentClient per process, a collection per user (cosine)."""

    name = "chromadb"

    def __init__(self, root: Path) -> None:
        import chromadb

        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.client = chromadb.PersistentClient(path=str(root))

    @staticmethod
    def version() -> str:
        import chromadb

        return f"chromadb {chromadb.__version__}"

    def open(self, user: str) -> dict:
        col = self.client.get_or_create_collection(
            f"u-{user}", embedding_function=None, metadata={"hnsw:space": "cosine"})
        return {"col": col, "n": None}

    def close(self, h: dict) -> None:
        h.clear()  # chromadb has no per-collection close; the client stays up

    def _count(self, h: dict) -> int:
        if h["n"] is None:
            h["n"] = h["col"].count()
        return h["n"]

    def _search(self, h: dict, vec: np.ndarray, k: int) -> dict:
        n = self._count(h)
        if n == 0:
            return {"ids": [[]], "documents": [[]]}
        return h["col"].query(query_embeddings=[vec], n_results=min(k, n),
                              include=["documents", "distances"])

    def turn(self, h: dict, text: str, vec: np.ndarray, role: str) -> None:
        self._search(h, vec, K)
        self.append(h, text, vec, role)

    def recall(self, h: dict, text: str, vec: np.ndarray) -> list:
        return self._search(h, vec, K)["documents"][0]

    def append(self, h: dict, text: str, vec: np.ndarray, role: str) -> None:
        n = self._count(h)
        h["col"].add(ids=[str(n + 1)], embeddings=[vec], documents=[text],
                     metadatas=[{"role": role, "ts": time.time()}])
        h["n"] = n + 1

    def bulk(self, h: dict, texts: list[str], vecs: np.ndarray, roles: list[str]) -> list:
        first = self._count(h) + 1
        now = time.time()
        for start in range(0, len(texts), 5000):
            stop = min(len(texts), start + 5000)
            h["col"].add(ids=[str(first + i) for i in range(start, stop)],
                         embeddings=np.asarray(vecs[start:stop], np.float32),
                         documents=texts[start:stop],
                         metadatas=[{"role": roles[i], "ts": now} for i in range(start, stop)])
        h["n"] = first - 1 + len(texts)
        return list(range(first, first + len(texts)))

    def knn(self, h: dict, vec: np.ndarray, k: int, ids: dict) -> list[int]:
        return [ids[int(i)] for i in self._search(h, vec, k)["ids"][0]]

    def disk(self, user: str) -> int:
        return dir_bytes(self.root)  # the whole client directory (shared sqlite included)

    def finish(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


IMPLS = {"engramdb": EngramDB, "sqlite": SQLiteMemory, "lancedb": Lance, "chromadb": Chroma,
         "sqlite-vec": SQLiteVec}


# -- phases (one subprocess each) --------------------------------------------------------------


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def p50(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def phase_growth(sys_, d: Data, cfg: dict, work: Path) -> dict:
    """Empty store bytes; one user written turn by turn, disk at rest after 10/40/100 turns;
    then warm turns on it (whole turns, then recall and append timed apart)."""
    out: dict = {}
    empty = IMPLS[sys_](work / "empty")
    h = empty.open("empty")
    empty.close(h)
    empty.finish()
    out["empty_bytes"] = empty.disk("empty")
    impl = IMPLS[sys_](work / "growth")
    idx = d.window(0, 100 + 5 + 2 * cfg["warm"])
    marks = {10, 40, 100}
    h = impl.open("growth")
    disk = {}
    for n, i in enumerate(idx[:100], 1):
        impl.turn(h, d.texts[i], d.vecs[i], d.roles[i])
        if n in marks:
            impl.close(h)
            disk[str(n)] = impl.disk("growth")
            h = impl.open("growth")
    out["disk"] = disk
    rest = idx[100:]
    for i in rest[:5]:  # warm-up
        impl.turn(h, d.texts[i], d.vecs[i], d.roles[i])
    turns, recalls, appends = [], [], []
    w = cfg["warm"]
    for i in rest[5:5 + w]:
        t0 = time.perf_counter()
        impl.turn(h, d.texts[i], d.vecs[i], d.roles[i])
        turns.append(ms(t0))
    for i in rest[5 + w:5 + 2 * w]:
        t0 = time.perf_counter()
        got = impl.recall(h, d.texts[i], d.vecs[i])
        t1 = time.perf_counter()
        impl.append(h, d.texts[i], d.vecs[i], d.roles[i])
        recalls.append((t1 - t0) * 1000)
        appends.append(ms(t1))
        assert len(got) == K, f"recall returned {len(got)} hits, wanted {K}"
    impl.close(h)
    impl.finish()
    out.update(warm_turn=turns, warm_recall=recalls, warm_append=appends,
               turns_after=100 + 5 + 2 * w)
    return out


def phase_pool(sys_, d: Data, cfg: dict, work: Path) -> dict:
    """U users x T turns, interleaved (each user's in order), at most M stores open."""
    users, turns, max_open = cfg["pool_users"], cfg["pool_turns"], cfg["max_open"]
    order = [u for u in range(users) for _ in range(turns)]
    random.Random(cfg["seed"]).shuffle(order)
    nxt = [0] * users
    windows = [d.window(1000 + u, turns) for u in range(users)]
    lat = []
    if sys_ == "engramdb":
        import engramdb
        from engramdb.encoders import HashingEncoder

        t0 = time.perf_counter()
        pool = engramdb.Pool(work / "pool", encoder=HashingEncoder(dim=DIM), max_open=max_open)
        for u in order:
            i = windows[u][nxt[u]]
            nxt[u] += 1
            t1 = time.perf_counter()
            with pool.session(f"pool-{u}") as mem:
                mem.integrate(d.texts[i], top_k=K, role=d.roles[i])
            lat.append(ms(t1))
        wall = time.perf_counter() - t0
        t1 = time.perf_counter()
        pool.close()
        close_s = time.perf_counter() - t1
    else:
        impl = IMPLS[sys_](work / "pool")
        t0 = time.perf_counter()
        lru: OrderedDict = OrderedDict()
        for u in order:
            i = windows[u][nxt[u]]
            nxt[u] += 1
            t1 = time.perf_counter()
            name = f"pool-{u}"
            if name in lru:
                lru.move_to_end(name)
            else:
                lru[name] = impl.open(name)
                while len(lru) > max_open:
                    impl.close(lru.popitem(last=False)[1])
            impl.turn(lru[name], d.texts[i], d.vecs[i], d.roles[i])
            lat.append(ms(t1))
        wall = time.perf_counter() - t0
        t1 = time.perf_counter()
        for h in lru.values():
            impl.close(h)
        impl.finish()
        close_s = time.perf_counter() - t1
    return {"turns": len(order), "wall_s": wall, "turns_per_s": len(order) / wall,
            "turn_ms": lat, "close_s": close_s}


def _open_turn_close(impl, user: str, text: str, vec, role: str) -> tuple[float, ...]:
    t0 = time.perf_counter()
    h = impl.open(user)
    t1 = time.perf_counter()
    impl.turn(h, text, vec, role)
    t2 = time.perf_counter()
    impl.close(h)
    t3 = time.perf_counter()
    return (t3 - t0) * 1000, (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000


def phase_cold(sys_, d: Data, cfg: dict, work: Path) -> dict:
    """In a fresh process: for each pool user (10 turns), open, one turn, close."""
    impl = IMPLS[sys_](work / "pool")
    rows = []
    for u in range(cfg["pool_users"]):
        i = d.window(1000 + u, cfg["pool_turns"] + 1)[-1]
        rows.append(_open_turn_close(impl, f"pool-{u}", d.texts[i], d.vecs[i], d.roles[i]))
    impl.finish()
    return {"total_ms": [r[0] for r in rows], "open_ms": [r[1] for r in rows],
            "turn_ms": [r[2] for r in rows], "close_ms": [r[3] for r in rows]}


def phase_ingest(sys_, d: Data, cfg: dict, work: Path) -> dict:
    """N users x T turns in bulk: per user open (create), one batch insert, close."""
    impl = IMPLS[sys_](work / "ingest")
    t0 = time.perf_counter()
    for u in range(cfg["users"]):
        idx = d.window(u, cfg["turns"])
        h = impl.open(f"user-{u}")
        impl.bulk(h, [d.texts[i] for i in idx], d.vecs[idx], [d.roles[i] for i in idx])
        impl.close(h)
        if cfg["progress"] and (u + 1) % 200 == 0:
            print(f"  {sys_} ingest {u + 1}/{cfg['users']} users "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    impl.finish()
    total = dir_bytes(work / "ingest")
    return {"wall_s": wall, "bytes_total": total, "bytes_per_user": total / cfg["users"]}


def phase_returning(sys_, d: Data, cfg: dict, work: Path) -> dict:
    """In a fresh process: R distinct bulk-loaded users, each open, one turn, close."""
    impl = IMPLS[sys_](work / "ingest")
    n, r = cfg["users"], min(cfg["returning"], cfg["users"])
    users = sorted({(j * n) // r for j in range(r)})
    rows = []
    for u in users:
        i = d.window(u, cfg["turns"] + 1)[-1]
        rows.append(_open_turn_close(impl, f"user-{u}", d.texts[i], d.vecs[i], d.roles[i]))
    impl.finish()
    return {"total_ms": [x[0] for x in rows], "open_ms": [x[1] for x in rows],
            "turn_ms": [x[2] for x in rows], "close_ms": [x[3] for x in rows]}


def phase_long(sys_, d: Data, cfg: dict, work: Path) -> dict:
    """A user bulk-loaded with L turns; reopened; warm turns (recall + append, and for
    engramdb also integrate)."""
    n = cfg["long"]
    impl = IMPLS[sys_](work / "long")
    roles = ["user" if i % 2 == 0 else "assistant" for i in range(n)]
    t0 = time.perf_counter()
    h = impl.open("long")
    impl.bulk(h, d.long_texts[:n], np.asarray(d.long_vecs[:n]), roles)
    impl.close(h)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    h = impl.open("long")
    open_ms = ms(t0)
    w = cfg["long_warm"]
    idx = d.window(7, 5 + 2 * w)
    for i in idx[:5]:
        impl.turn(h, d.texts[i], d.vecs[i], d.roles[i])
    recalls, appends, turns = [], [], []
    for i in idx[5:5 + w]:
        t0 = time.perf_counter()
        impl.recall(h, d.texts[i], d.vecs[i])
        t1 = time.perf_counter()
        impl.append(h, d.texts[i], d.vecs[i], d.roles[i])
        recalls.append((t1 - t0) * 1000)
        appends.append(ms(t1))
    if sys_ == "engramdb":
        for i in idx[5 + w:]:
            t0 = time.perf_counter()
            impl.turn(h, d.texts[i], d.vecs[i], d.roles[i])
            turns.append(ms(t0))
    impl.close(h)
    impl.finish()
    return {"load_s": load_s, "open_ms": open_ms, "recall_ms": recalls, "append_ms": appends,
            "turn_recall_append_ms": [a + b for a, b in zip(recalls, appends)],
            "integrate_ms": turns, "bytes": impl.disk("long")}


def phase_big(sys_, d: Data, cfg: dict, work: Path) -> dict:
    """One user bulk-loaded with B turns; reopened; vector recall top 10 for each question."""
    n = cfg["big"]
    impl = IMPLS[sys_](work / "big")
    roles = ["user" if i % 2 == 0 else "assistant" for i in range(n)]
    t0 = time.perf_counter()
    h = impl.open("big")
    keys = impl.bulk(h, d.long_texts[:n], np.asarray(d.long_vecs[:n]), roles)
    impl.close(h)
    load_s = time.perf_counter() - t0
    ids = {k: i for i, k in enumerate(keys)}
    t0 = time.perf_counter()
    h = impl.open("big")
    open_ms = ms(t0)
    for q in d.qvecs[:10]:  # warm-up
        impl.knn(h, q, BIG_K, ids)
    times, results = [], []
    for q in d.qvecs:
        t0 = time.perf_counter()
        results.append(impl.knn(h, q, BIG_K, ids))
        times.append(ms(t0))
    impl.close(h)
    impl.finish()
    return {"load_s": load_s, "open_ms": open_ms, "recall_ms": times, "results": results,
            "bytes": impl.disk("big")}


def phase_fsync(sys_, d: Data, cfg: dict, work: Path) -> dict:
    """Run under strace by the driver: marks around open, 20 warm turns and close."""
    impl = IMPLS[sys_](work / "growth")
    idx = d.window(3, 25)
    os.access(MARK + "open", os.F_OK)
    h = impl.open("growth")
    for i in idx[:5]:
        impl.turn(h, d.texts[i], d.vecs[i], d.roles[i])
    os.access(MARK + "turns", os.F_OK)
    for i in idx[5:]:
        impl.turn(h, d.texts[i], d.vecs[i], d.roles[i])
    os.access(MARK + "close", os.F_OK)
    impl.close(h)
    impl.finish()
    os.access(MARK + "end", os.F_OK)
    return {"turns": 20}


PHASE_FNS = {"growth": phase_growth, "pool": phase_pool, "cold": phase_cold,
             "ingest": phase_ingest, "returning": phase_returning, "long": phase_long,
             "big": phase_big, "fsync": phase_fsync}


def run_worker(args: argparse.Namespace) -> None:
    cfg = json.loads(Path(args.config).read_text())
    d = Data(Path(cfg["data"]))
    work = Path(cfg["work"]) / args.worker
    work.mkdir(parents=True, exist_ok=True)
    out = PHASE_FNS[args.phase](args.worker, d, cfg, work)
    if args.phase == "growth":
        out["version"] = IMPLS[args.worker].version()
    print("RESULT " + json.dumps(out), flush=True)


# -- driver ------------------------------------------------------------------------------------


def count_syncs(log: Path) -> dict:
    """fsync-family calls between the worker's marks in an strace -f log."""
    sync = re.compile(r"^(?:\d+\s+)?(fsync|fdatasync|sync_file_range|msync|syncfs)\(")
    mark = re.compile(re.escape(MARK) + r"(\w+)")
    counts: dict[str, dict[str, int]] = {}
    current = None
    for line in log.read_text(errors="replace").splitlines():
        m = mark.search(line)
        if m:
            current = m.group(1)
            continue
        s = sync.match(line)
        if s and current:
            seg = counts.setdefault(current, {})
            seg[s.group(1)] = seg.get(s.group(1), 0) + 1
    return counts


def launch(args: argparse.Namespace, system: str, phase: str, config: Path) -> dict | None:
    python = args.peer_python if system in PEERS else sys.executable
    cmd = [python, str(HERE), "--worker", system, "--phase", phase, "--config", str(config)]
    log = None
    if phase == "fsync":
        log = args.out / f"strace-{system}.log"
        cmd = ["strace", "-f", "-qq", "-o", str(log), "-e",
               "trace=fsync,fdatasync,sync_file_range,msync,syncfs,access,faccessat,faccessat2",
               *cmd]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent))
    if args.src:
        env["BENCH_TURNS_SRC"] = str(args.src)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"  {system} {phase}: timed out after {args.timeout} s", file=sys.stderr)
        return {"error": f"timed out after {args.timeout} s"}
    secs = time.perf_counter() - t0
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        tail = proc.stderr[-4000:]
        print(f"  {system} {phase}: FAILED (exit {proc.returncode})\n{tail}", file=sys.stderr)
        return {"error": f"exit {proc.returncode}: {tail}"}
    res = json.loads(line[0][7:])
    res["phase_s"] = secs
    res["loadavg"] = [load0[0], os.getloadavg()[0]]
    if log is not None:
        res["syncs"] = count_syncs(log)
    print(f"  {system} {phase}: {secs:.1f} s (load {load0[0]:.1f})", file=sys.stderr,
          flush=True)
    return res


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.2f} ms" if x < 10 else f"{x:,.1f} ms"


def fmt_b(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f} B"


def summarize(args: argparse.Namespace, res: dict, exact: np.ndarray | None) -> list[dict]:
    """One row per figure: a value per system, the engramdb/SQLite ratio, a target."""
    def get(system: str, phase: str, *keys):
        r = res.get(system, {}).get(phase)
        if not r or "error" in r:
            return None
        for k in keys:
            if r is None:
                return None
            r = r.get(k) if isinstance(r, dict) else None
        return r

    def med(system, phase, key):
        v = get(system, phase, key)
        return p50(v) if v else None

    rows: list[dict] = []

    def row(label, fn, fmt, target=None, better="lower"):
        vals = {s: fn(s) for s in args.systems}
        rows.append({"label": label, "values": vals, "fmt": fmt, "target": target,
                     "better": better})

    w, lw = args.warm, args.long_warm
    row(f"warm turn p50 (store open, recall 5 + append; engramdb `integrate`), n={w}",
        lambda s: med(s, "growth", "warm_turn"), fmt_ms, ("ratio_max", 3.0))
    row("warm recall 5 p50 (engramdb `recall`)", lambda s: med(s, "growth", "warm_recall"),
        fmt_ms)
    row("warm append p50 (engramdb `ingest`)", lambda s: med(s, "growth", "warm_append"),
        fmt_ms)
    row(f"cold turn p50 (open, one turn, close; {args.pool_turns}-turn user), "
        f"n={args.pool_users}", lambda s: med(s, "cold", "total_ms"), fmt_ms,
        ("ratio_max", 3.0))
    row("  of which open p50", lambda s: med(s, "cold", "open_ms"), fmt_ms)
    row("  of which close p50", lambda s: med(s, "cold", "close_ms"), fmt_ms)
    row("bytes of an empty store", lambda s: get(s, "growth", "empty_bytes"), fmt_b,
        ("abs_max", 65536))
    for n in ("10", "40", "100"):
        row(f"disk per user after {n} turns (turn by turn, at rest)",
            lambda s, n=n: get(s, "growth", "disk", n), fmt_b,
            ("ratio_max", 2.0) if n == "40" else None)
    row(f"Pool, {args.pool_users} users x {args.pool_turns} turns, {args.max_open} open at "
        "most: turns/s", lambda s: get(s, "pool", "turns_per_s"),
        lambda x: "-" if x is None else f"{x:,.1f}/s", ("ratio_min", 1 / 3), "higher")
    row(f"{args.users:,} users x {args.turns} turns (bulk): time to ingest all",
        lambda s: get(s, "ingest", "wall_s"), lambda x: "-" if x is None else f"{x:,.1f} s")
    row("  same: bytes per user", lambda s: get(s, "ingest", "bytes_per_user"), fmt_b,
        ("peer", "lancedb"))
    row(f"returning user p50 (open, turn, close), n={min(args.returning, args.users)}",
        lambda s: med(s, "returning", "total_ms"), fmt_ms, ("peer", "lancedb"))
    row(f"warm turn on a {args.long:,}-turn user, recall 5 + append, n={lw}",
        lambda s: med(s, "long", "turn_recall_append_ms"), fmt_ms, ("peer", "chromadb"))
    row("  same, engramdb `integrate`", lambda s: med(s, "long", "integrate_ms"), fmt_ms)
    row(f"  same, open of the {args.long:,}-turn user", lambda s: get(s, "long", "open_ms"),
        fmt_ms)
    if args.big:
        row(f"one user, {args.big:,} turns: vector recall top 10 p50, n={args.queries}",
            lambda s: med(s, "big", "recall_ms"), fmt_ms)

        def r10(s):
            got = get(s, "big", "results")
            if not got or exact is None:
                return None
            return recall_at(exact, got, BIG_K)
        row("  same: recall@10 vs exact cosine", r10,
            lambda x: "-" if x is None else f"{x:.3f}", better="higher")
        row("  same: disk per turn",
            lambda s: None if get(s, "big", "bytes") is None else get(s, "big", "bytes") /
            args.big, fmt_b)
        row("  same: bulk load time", lambda s: get(s, "big", "load_s"),
            lambda x: "-" if x is None else f"{x:,.1f} s")
    if args.strace:
        def syncs(s, seg, per):
            c = get(s, "fsync", "syncs")
            if c is None:
                return None
            return sum(c.get(seg, {}).values()) / per
        row("fsync-family calls per warm turn (strace)", lambda s: syncs(s, "turns", 20),
            lambda x: "-" if x is None else f"{x:.1f}")
        row("fsync-family calls on close (strace)", lambda s: syncs(s, "close", 1),
            lambda x: "-" if x is None else f"{x:.0f}")
    return rows


def render(args: argparse.Namespace, rows: list[dict]) -> str:
    systems = args.systems
    head = ["", *(LABELS[s] for s in systems)]
    has_ratio = "engramdb" in systems and "sqlite" in systems
    if has_ratio:
        head.insert(3 if systems.index("sqlite") < 2 else len(head), "engramdb / SQLite")
    head.append("issue 21 target")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        v = r["values"]
        if all(x is None for x in v.values()):
            continue  # a phase that did not run
        cells = [r["label"], *(r["fmt"](v[s]) for s in systems)]
        ratio = None
        if has_ratio and v.get("engramdb") is not None and v.get("sqlite"):
            ratio = v["engramdb"] / v["sqlite"]
        if has_ratio:
            cells.insert(3 if systems.index("sqlite") < 2 else len(cells),
                         "-" if ratio is None else f"{ratio:,.2f}x")
        target = ""
        t = r["target"]
        if t:
            kind, x = t
            e = v.get("engramdb")
            if kind == "ratio_max":
                target = f"<= {x:g}x: " + ("-" if ratio is None else
                                           "yes" if ratio <= x else "no")
            elif kind == "ratio_min":
                target = f">= 1/{1 / x:g}: " + ("-" if ratio is None else
                                                "yes" if ratio >= x else "no")
            elif kind == "abs_max":
                target = f"<= {x / 1024:g} KB: " + ("-" if e is None else
                                                    "yes" if e <= x else "no")
            elif kind == "peer":
                p = v.get(x)
                target = f"<= {LABELS[x]}: " + ("-" if e is None or p is None else
                                                "yes" if e <= p else "no")
        cells.append(target)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def git_state() -> str:
    """HEAD, and a summary of uncommitted changes to engramdb/ (read-only git commands)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=HERE.parent.parent, capture_output=True,
                              text=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        stat = git("diff", "--shortstat", "HEAD", "--", "engramdb")
        new = git("ls-files", "--others", "--exclude-standard", "engramdb")
        extra = [x for x in (stat, f"{len(new.splitlines())} new files" if new else "") if x]
        return head + (f" plus uncommitted changes to engramdb/ ({'; '.join(extra)})"
                       if extra else "")
    except OSError:
        return "unknown"


def snapshot(out: Path) -> Path:
    """Copy engramdb/ as it is now under OUT/src, so that every phase of the run (and the
    driver's encoder) uses the same code even while the working tree is being edited."""
    src = out / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(HERE.parent.parent / "engramdb", src / "engramdb",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1000,
                    help="users of the bulk-ingest and returning rows (the issue: 2000)")
    ap.add_argument("--turns", type=int, default=100, help="turns per bulk-ingested user")
    ap.add_argument("--returning", type=int, default=50, help="returning users timed")
    ap.add_argument("--pool-users", type=int, default=20)
    ap.add_argument("--pool-turns", type=int, default=10)
    ap.add_argument("--max-open", type=int, default=32)
    ap.add_argument("--warm", type=int, default=100, help="warm turns timed (each kind)")
    ap.add_argument("--long", type=int, default=5000, help="turns of the long user")
    ap.add_argument("--long-warm", type=int, default=50, help="warm turns on the long user")
    ap.add_argument("--big", type=int, default=100_000,
                    help="turns of the one big user (0 skips the row)")
    ap.add_argument("--queries", type=int, default=100, help="recall queries on the big user")
    ap.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    ap.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES)
    ap.add_argument("--peer-python", default=None,
                    help="interpreter of a virtualenv with lancedb, chromadb, sqlite-vec, "
                         "pysqlite3-binary (without it the peers are skipped)")
    ap.add_argument("--quick", action="store_true", help="a small smoke run (~2 minutes)")
    ap.add_argument("--synthetic", action="store_true", help="synthetic texts, not LoCoMo")
    ap.add_argument("--no-strace", dest="strace", action="store_false",
                    help="skip the fsync count under strace")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per worker process")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("/tmp/engramdb-bench-turns"))
    ap.add_argument("--json", type=Path, default=None,
                    help="results file (default: OUT/results.json)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    ap.add_argument("--keep", action="store_true", help="keep the stores under OUT/work")
    ap.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                    help="run engramdb from the working tree, not from a copy under OUT/src "
                         "taken when the run starts")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_worker(args)
        return
    if args.quick:
        args.users, args.returning, args.warm = 20, 10, 20
        args.pool_users, args.pool_turns = 8, 10
        args.long, args.long_warm, args.big, args.queries = 1000, 10, 2000, 20
    if not args.peer_python:
        dropped = [s for s in args.systems if s in PEERS]
        if dropped:
            print(f"skipping {', '.join(dropped)}: pass --peer-python", file=sys.stderr)
        args.systems = [s for s in args.systems if s not in PEERS]
    if args.strace and not shutil.which("strace"):
        print("strace not found: no fsync counts", file=sys.stderr)
        args.strace = False
    phases = [p for p in PHASES if p in args.phases and (p != "big" or args.big)
              and (p != "fsync" or args.strace)]
    if "fsync" in phases and "growth" not in phases:
        phases.remove("fsync")  # it reopens the growth user
    if args.big and args.queries < 1:
        ap.error("--queries must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    t_start = time.time()
    commit = git_state()
    args.src = None
    if args.snapshot:
        args.src = snapshot(args.out)
        sys.path.insert(0, str(args.src))
    data = prepare(args)
    cfg = {"data": str(data), "work": str(work), "seed": args.seed, "users": args.users,
           "turns": args.turns, "returning": args.returning, "pool_users": args.pool_users,
           "pool_turns": args.pool_turns, "max_open": args.max_open, "warm": args.warm,
           "long": args.long, "long_warm": args.long_warm, "big": args.big,
           "progress": args.progress}
    config = args.out / "config.json"
    config.write_text(json.dumps(cfg))
    res: dict[str, dict] = {s: {} for s in args.systems}
    loads = [os.getloadavg()]
    for phase in phases:  # phase by phase, the systems one after another
        for system in args.systems:
            if phase in ("cold",) and "error" in res[system].get("pool", {"error": 1}):
                continue
            if phase == "returning" and "error" in res[system].get("ingest", {"error": 1}):
                continue
            if phase == "fsync" and "error" in res[system].get("growth", {"error": 1}):
                continue
            res[system][phase] = launch(args, system, phase, config)
            loads.append(os.getloadavg())
    exact = exact_scores(data, args.big) if args.big else None
    rows = summarize(args, res, exact)
    table = render(args, rows)
    meta = json.loads((data / "texts.json").read_text())
    from machine_info import describe

    cmd = "PYTHONPATH=. .venv/bin/python benchmarks/bench_turns.py " + " ".join(sys.argv[1:])
    versions = "; ".join(f"{LABELS[s]}: {res[s].get('growth', {}).get('version', '?')}"
                         for s in args.systems)
    one_min = [x[0] for x in loads]
    header = [
        f"Machine: {describe()}; Python {platform.python_version()}.",
        f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
        f"engramdb at {commit}; wall {(time.time() - t_start) / 60:.1f} min; load "
        f"average (1 min) {min(one_min):.1f}-{max(one_min):.1f} during the run.",
        f"Versions: {versions}.",
        f"Texts: {meta['source']}; {DIM}-d HashingEncoder vectors ({args.encode_ms:.2f} ms a "
        "text, paid inside the turn by engramdb and the SQLite memory; the peers get them "
        "precomputed).",
        f"Command: `{cmd}`",
    ]
    text = "\n".join(header) + "\n\n" + table + "\n"
    print("\n" + text)
    failed = [(s, p, r["error"][:300]) for s in res for p, r in res[s].items()
              if r and "error" in r]
    for s, p, e in failed:
        print(f"FAILED: {s} {p}: {e}", file=sys.stderr)
    out_json = args.json or args.out / "results.json"
    summary = [{"label": r["label"], "values": r["values"], "target": r["target"]}
               for r in rows]
    for s in res:  # the raw per-query results are large; keep the figures
        if res[s].get("big"):
            res[s]["big"].pop("results", None)
    out_json.write_text(json.dumps({
        "machine": describe(), "python": platform.python_version(), "command": cmd,
        "engramdb_commit": commit, "loadavg": loads, "texts": meta["source"],
        "encode_ms": args.encode_ms,
        "config": cfg, "systems": args.systems, "phases": phases, "summary": summary,
        "raw": res, "markdown": text}, indent=1))
    print(f"results: {out_json}", file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(text)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
