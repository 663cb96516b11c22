"""Corruption fuzzing: damage one file of a store, then open, verify and recall in a subprocess.

A small store is built once (several segments, index files, links, forgotten + collected
engrams, and a DuckDB WAL that has not been folded in: the copy is taken while the store is
open). Each case copies it, damages one file (random byte XORs, a truncation, or a zeroed
range) and runs this module as a child process that opens the copy, runs ``verify()``, recalls
by a few fixed query vectors and reads back every engram of the pristine store. A child gets a
timeout, so a segfault or a hang is a failed case rather than a dead test run.

Acceptable outcomes:

- ``refused``: the child gets an :class:`engramdb.errors.EngramError` with a hint (typically
  ``CorruptStore``);
- ``detected``: the store opens and ``verify()`` reports the damage;
- ``intact``: the store opens (repairing derived state: vector index, lexical tables),
  ``verify()`` is clean, and every answer (recall ids, texts, vectors) equals the pristine
  store's.

Unacceptable: a signal (segfault), a hang, a raw non-engramdb exception, or a clean
``verify()`` with answers that differ from the pristine store's (``silent``).

Cases are seeded and deterministic. Every case that ever failed is kept as JSON in
``tests/corpus/`` and replayed by the default run (known engramdb bugs are marked
``xfail(strict=True)`` there, with the reason). ``ENGRAMDB_FUZZ_CASES=N`` runs N fresh cases
instead of the default 30.

Hostile structure (``test_hostile_structure``): a store received from someone else may hold
a link or a special file where one of its files or directories belongs: a link to a copy of
the file outside the store, a dangling link, a FIFO, or ``segments/`` or ``index/`` as a link
to a directory outside. Beside the outcomes above, nothing outside the store may change (no
file created, deleted, truncated or written: ``escaped`` otherwise). The default run tries a
fixed set of 8; ``ENGRAMDB_HOSTILE_CASES=N`` runs N seeded ones instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engramdb
from engramdb.encoders import HashingEncoder

CASES = int(os.environ.get("ENGRAMDB_FUZZ_CASES", "30"))
HOSTILE_CASES = int(os.environ.get("ENGRAMDB_HOSTILE_CASES", "0"))
SEED = int(os.environ.get("ENGRAMDB_FUZZ_SEED", "20240"))
TIMEOUT_S = 60
DIM = 16
ENC = HashingEncoder(dim=DIM)
CORPUS = Path(__file__).parent / "corpus"
ROOT = Path(__file__).resolve().parent.parent
# Index file names carry the generation and a random token; the corpus names them by pattern.
_TOKEN = re.compile(r"\.g\d+-[0-9a-f]{8}\.")


# -- the child: open, verify, answer --------------------------------------------------------------


def _child(store: str, probe_path: str) -> None:
    """Print one JSON line describing what opening the damaged store gave."""
    from engramdb.errors import EngramError

    probe = json.loads(Path(probe_path).read_text())
    stage = "open"
    try:
        with engramdb.open(Path(store), encoder=ENC, create=False) as mem:
            stage = "verify"
            report = mem.verify()
            stage = "answers"
            recalls = []
            for q in probe["queries"]:
                hits = mem.recall(vector=np.asarray(q, np.float32), top_k=5)
                recalls.append([[h.id, h.text, h.via] for h in hits])
            # Every probed engram's vector (one bulk read) and, for a fixed sample, its text:
            # verify() already ties each stored text to its id, so a sample suffices.
            alive = [i for i in probe["ids"] if i in mem]
            vecs = mem.vectors(alive) if alive else np.zeros((0, DIM), np.float32)
            present: dict[str, Any] = {i: None for i in probe["ids"]}
            for ident, vec in zip(alive, vecs):
                present[ident] = [hashlib.sha256(vec.tobytes()).hexdigest()[:16]]
            for ident in probe["texts"]:
                if present[ident] is not None:
                    present[ident].append(mem.get(ident).text)
            stage = "close"
            out = {"outcome": "open", "verify_ok": report.ok, "problems": report.problems[:5],
                   "recovered": list(mem.recovered), "recalls": recalls, "present": present,
                   "count": mem.count}
    except EngramError as exc:
        out = {"outcome": "error", "engram": True, "type": type(exc).__name__,
               "hint": exc.hint, "message": exc.message[:300], "stage": stage}
    except BaseException as exc:  # what the test is looking for: nothing else may escape
        out = {"outcome": "error", "engram": False, "type": type(exc).__name__,
               "message": str(exc)[:300], "stage": stage,
               "traceback": traceback.format_exc()[-2000:]}
    print("RESULT " + json.dumps(out), flush=True)


# -- building the pristine store ------------------------------------------------------------------


def _build(root: Path) -> tuple[Path, dict[str, Any]]:
    """The pristine snapshot (copied while open, so the WAL is there) and the probe."""
    live = root / "live.engram"
    settings = {"segment_bytes": 4096, "batch_rows": 32}
    # A graph index although the store is small (searches still scan exactly): its files are
    # part of what is fuzzed.
    with engramdb.open(live, encoder=ENC, settings=settings,
                       index={"exact_threshold": 5000}) as mem:
        res = mem.ingest_many([f"memory {k} about oscar the guinea pig" for k in range(150)])
        for q in ("what about memory 3", "tell me memory 7 again", "oscar and memory 20"):
            mem.integrate(q, top_k=3)
        mem.forget([res[0].id, res[5].id, res[70].id])
        mem.gc()  # compacts segments, rewrites the catalog, rebuilds and saves the index
    mem = engramdb.open(live, encoder=ENC)
    try:
        # Commits that live only in the WAL of the snapshot.
        late = mem.ingest_many([f"late memory {k}" for k in range(20)])
        mem.integrate("late memory 4 and oscar", top_k=2)
        mem.forget([late[1].id])
        for q in ("oscar ate a carrot", "late memory 9 again"):  # turns left in journal.bin
            mem.integrate(q, top_k=2)
        snap = root / "pristine.engram"
        shutil.copytree(live, snap, ignore=shutil.ignore_patterns("LOCK"))
    finally:
        mem.close()
    # Ask a throwaway copy which engrams exist: opening folds the WAL in, so not the snapshot.
    scratch = root / "scratch.engram"
    shutil.copytree(snap, scratch)
    with engramdb.open(scratch, encoder=ENC) as again:
        ids = sorted(r[0] for r in again.catalog.query("SELECT id FROM engrams"))
    shutil.rmtree(scratch)
    rng = np.random.default_rng(7)
    queries = rng.normal(size=(6, DIM)).astype(np.float32)
    texts = random.Random(7).sample(ids, 30)
    probe = {"queries": queries.tolist(), "ids": ids, "texts": texts}
    return snap, probe


def _label(rel: str) -> str:
    return _TOKEN.sub(".*.", rel)


def _files(store: Path) -> list[str]:
    """Labels of every file of the store (index files by pattern), in a fixed order."""
    out = []
    for p in sorted(store.rglob("*")):
        if p.is_file() and p.name != "LOCK":
            out.append(_label(str(p.relative_to(store))))
    return out


def _resolve(store: Path, label: str) -> Path | None:
    hits = sorted(store.glob(label))
    return hits[0] if hits else None


# -- cases ----------------------------------------------------------------------------------------


def make_case(k: int, files: list[str], sizes: dict[str, int]) -> dict[str, Any]:
    """Case ``k`` of the seeded sequence: which file, which damage, where."""
    rng = random.Random(f"{SEED}-{k}")
    label = files[k % len(files)]
    size = max(1, sizes[label])
    op = rng.choice(["flip", "truncate", "zero"])

    def offset() -> int:
        # Half of the offsets fall in the first eighth: DuckDB and hnswlib keep headers and
        # the busiest blocks at the start, and a 6 MiB catalog is mostly free blocks.
        return rng.randrange(max(1, size // 8)) if rng.random() < 0.5 else rng.randrange(size)

    case: dict[str, Any] = {"file": label, "op": op, "seed": SEED, "k": k}
    if op == "flip":
        n = rng.choice([1, 1, 2, 8, 64])
        case["flips"] = [[offset(), rng.randrange(1, 256)] for _ in range(n)]
    elif op == "truncate":
        case["length"] = 0 if rng.random() < 0.25 else rng.randrange(size)
    else:
        case["offset"] = offset()
        case["length"] = rng.choice([1, 8, 512, 4096, 65536])
    return case


def apply_case(store: Path, case: dict[str, Any]) -> bool:
    """Damage ``store`` as ``case`` says; False if the file does not exist in this store."""
    path = _resolve(store, case["file"])
    if path is None:
        return False
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        if case["op"] == "flip" and size:
            for off, xor in case["flips"]:
                fh.seek(off % size)
                b = fh.read(1)[0]
                fh.seek(off % size)
                fh.write(bytes([b ^ xor]))
        elif case["op"] == "truncate":
            fh.truncate(min(case["length"], size))
        elif case["op"] == "zero" and size:
            off = case["offset"] % size
            fh.seek(off)
            fh.write(b"\0" * min(case["length"], size - off))
    return True


def run_child(store: Path, probe_file: Path) -> dict[str, Any]:
    """Run the child on ``store``; a signal, hang or missing answer becomes an outcome too."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "child", str(store), str(probe_file)],
            capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
        )
    except subprocess.TimeoutExpired:
        return {"outcome": "hang"}
    if proc.returncode < 0:
        return {"outcome": "signal", "signal": -proc.returncode, "stderr": proc.stderr[-1500:]}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"outcome": "no-answer", "rc": proc.returncode, "stderr": proc.stderr[-1500:]}


def classify(result: dict[str, Any], pristine: dict[str, Any], wal: bool = False) -> str:
    """``refused`` / ``detected`` / ``intact`` are fine; anything else is a failure.

    For damage to the DuckDB WAL or the turn journal (``wal``), ``rolled-back`` is accepted
    too: both stop replaying at a torn or damaged record, exactly as after a crash, so the
    commits after it are lost (the journal reports the cut in ``recovered``; see
    docs/reliability.md).
    """
    outcome = result["outcome"]
    if outcome == "error":
        return "refused" if result["engram"] and result.get("hint") else "raw-exception"
    if outcome != "open":
        return outcome
    if not result["verify_ok"]:
        return "detected"
    same = all(result[k] == pristine[k] for k in ("recalls", "present", "count"))
    if same:
        return "intact"
    if wal and _is_prefix_state(result, pristine):
        return "rolled-back"
    return "silent"


def _is_prefix_state(result: dict[str, Any], pristine: dict[str, Any]) -> bool:
    """A consistent earlier state: what a torn WAL tail gives (the last commits are lost).

    Every engram still there is exactly the pristine one, and every recall hit's text is the
    pristine text when the pristine store knows the id (an engram whose forget was in the lost
    tail may come back; verify() already checked that its text hashes to its id).
    """
    known = pristine["present"]
    for ident, got in result["present"].items():
        if got is not None and got != known[ident][: len(got)]:
            return False
    texts = {h[0]: h[1] for hits in pristine["recalls"] for h in hits}
    return all(texts.get(h[0], h[1]) == h[1] for hits in result["recalls"] for h in hits)


FINE = {"refused", "detected", "intact", "rolled-back"}


def _case_name(case: dict[str, Any]) -> str:
    body = json.dumps({k: case[k] for k in sorted(case) if k not in ("found", "xfail")})
    return f"{case['op']}-{hashlib.sha1(body.encode()).hexdigest()[:10]}"


# -- fixtures and tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz")
    snap, probe = _build(root)
    probe_file = root / "probe.json"
    probe_file.write_text(json.dumps(probe))
    work = root / "case-pristine.engram"
    shutil.copytree(snap, work)
    answer = run_child(work, probe_file)
    assert answer["outcome"] == "open" and answer["verify_ok"], answer
    assert all(v is not None for v in answer["present"].values())
    files = _files(snap)
    assert "catalog.duckdb.wal" in files, "the snapshot should hold an unfolded WAL"
    assert "journal.bin" in files, "the snapshot should hold journaled turns"
    sizes = {f: _resolve(snap, f).stat().st_size for f in files}
    return {"root": root, "snap": snap, "probe": probe_file, "answer": answer,
            "files": files, "sizes": sizes}


def _run_case(pristine: dict[str, Any], case: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    work = pristine["root"] / f"case-{_case_name(case)}.engram"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine["snap"], work)
    try:
        if not apply_case(work, case):
            return "skipped", {}
        result = run_child(work, pristine["probe"])
        return classify(result, pristine["answer"], _is_log(case["file"])), result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _is_log(rel: str) -> bool:
    """DuckDB's WAL and the turn journal: damage there may cut the commits after it."""
    return rel.endswith((".wal", "journal.bin"))


def _corpus() -> list[Any]:
    params = []
    for p in sorted(CORPUS.glob("*.json")):
        case = json.loads(p.read_text())
        marks = [pytest.mark.xfail(strict=True, reason=case["xfail"])] if case.get("xfail") else []
        params.append(pytest.param(case, id=p.stem, marks=marks))
    return params


def test_fuzz_corruption(pristine: dict[str, Any]) -> None:
    """Fresh seeded cases over every file; a new failing case is saved to the corpus."""
    cases = [make_case(k, pristine["files"], pristine["sizes"]) for k in range(CASES)]
    known = {_case_name(json.loads(p.read_text())) for p in CORPUS.glob("*.json")}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: _run_case(pristine, c), cases))
    tally: dict[str, int] = {}
    new_failures = []
    for case, (verdict, result) in zip(cases, results):
        tally[verdict] = tally.get(verdict, 0) + 1
        if verdict in FINE or verdict == "skipped" or _case_name(case) in known:
            continue
        case = {**case, "found": {"verdict": verdict,
                                  **{k: result.get(k) for k in ("type", "message", "stage")}}}
        CORPUS.mkdir(exist_ok=True)
        (CORPUS / f"{_case_name(case)}.json").write_text(json.dumps(case, indent=1) + "\n")
        new_failures.append(case)
    print(f"\n[corruption] {len(cases)} cases: {dict(sorted(tally.items()))}")
    assert not new_failures, f"{len(new_failures)} new failing cases saved to {CORPUS}: " + \
        "; ".join(f"{c['file']} {c['op']}: {c['found']}" for c in new_failures[:5])


@pytest.mark.parametrize("case", _corpus())
def test_corpus_replay(pristine: dict[str, Any], case: dict[str, Any]) -> None:
    """Every case that ever failed must stay fixed (or stay a known, xfailed bug)."""
    verdict, result = _run_case(pristine, case)
    assert verdict in FINE or verdict == "skipped", (verdict, result)


def test_truncating_every_file_to_zero(pristine: dict[str, Any]) -> None:
    """The simplest damage of all, for every file: an empty file."""
    cases = [{"file": f, "op": "truncate", "length": 0} for f in pristine["files"]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: _run_case(pristine, c), cases))
    bad = {c["file"]: (v, r.get("type"), r.get("message")) for c, (v, r) in zip(cases, results)
           if v not in FINE}
    assert not bad, bad


# -- hostile structure ----------------------------------------------------------------------------

HOSTILE_OPS = ("link", "dangling", "fifo")
# The default run: every kind of entry where a received store can hide one.
HOSTILE_DEFAULT = [("dirlink", "segments"), ("dirlink", "index"), ("link", "segments/"),
                   ("dangling", "LOCK"), ("link", "LOCK"), ("fifo", "MANIFEST.json"),
                   ("dangling", "catalog.duckdb.wal"), ("link", "index/labels")]


def make_hostile_case(k: int, files: list[str]) -> dict[str, Any]:
    """Seeded case ``k``: a link, a dangling link or a FIFO in place of one of the store's
    files (or, one time in five, ``segments/`` or ``index/`` as a link to a directory)."""
    rng = random.Random(f"{SEED}-hostile-{k}")
    if rng.random() < 0.2:
        return {"op": "dirlink", "file": rng.choice(["segments", "index"]), "k": k}
    return {"op": rng.choice(HOSTILE_OPS), "file": rng.choice([*files, "LOCK"]), "k": k}


def _tree(d: Path) -> dict[str, bytes | str]:
    """Every entry under ``d`` (links not followed), with its bytes or what it is."""
    out: dict[str, bytes | str] = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel] = ("link:" + os.readlink(p) if p.is_symlink() else
                    "dir" if p.is_dir() else p.read_bytes())
    return out


def apply_hostile(store: Path, case: dict[str, Any], outside: Path) -> bool:
    """Plant ``case``'s link or FIFO in ``store``, with whatever it leads to in ``outside``
    (beside a user's files); False if the store has no such file."""
    name = case["file"]
    path = store / name if name in ("LOCK", "segments", "index") else _resolve(store, name)
    if path is None or (case["op"] == "dirlink" and not path.is_dir()):
        return False
    (outside / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
    (outside / "thesis.tex").write_text("\\chapter{Results}\n" * 40)
    if case["op"] == "dirlink":  # the directory's files, but outside
        shutil.copytree(path, outside / path.name)
        (outside / path.name / "notes.txt").write_text("the user's, beside the copies\n")
        shutil.rmtree(path)
        path.symlink_to(outside / path.name, target_is_directory=True)
        return True
    target = outside / f"target-{path.name}"
    if case["op"] == "link":  # a copy of the file outside: reading through it would work
        if path.exists():
            shutil.copyfile(path, target)
        else:
            target.write_text("not a lock file\n")
    path.unlink(missing_ok=True)
    if case["op"] == "fifo":
        os.mkfifo(path)
    else:  # "dangling": the target does not exist
        path.symlink_to(target)
    return True


def _run_hostile(pristine: dict[str, Any], case: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    tag = f"hostile-{case['op']}-{case.get('k', 0)}-{case['file'].replace('/', '_')}"
    work, outside = pristine["root"] / f"{tag}.engram", pristine["root"] / f"{tag}.outside"
    for d in (work, outside):
        shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(pristine["snap"], work)
    outside.mkdir()
    try:
        if not apply_hostile(work, case, outside):
            return "skipped", {}
        before = _tree(outside)
        result = run_child(work, pristine["probe"])
        if _tree(outside) != before:
            return "escaped", result
        return classify(result, pristine["answer"], _is_log(case["file"])), result
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)


def test_hostile_structure(pristine: dict[str, Any]) -> None:
    """Links and special files in a received store: a clear refusal (or correct answers),
    and never a change outside the store, nor a hang."""
    files = pristine["files"]
    if HOSTILE_CASES:
        cases = [make_hostile_case(k, files) for k in range(HOSTILE_CASES)]
    else:
        cases = [{"op": op, "file": next(f for f in files if f.startswith(prefix))
                  if prefix not in ("LOCK", "segments", "index") else prefix}
                 for op, prefix in HOSTILE_DEFAULT]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: _run_hostile(pristine, c), cases))
    tally: dict[str, int] = {}
    for verdict, _ in results:
        tally[verdict] = tally.get(verdict, 0) + 1
    print(f"\n[hostile] {len(cases)} cases: {dict(sorted(tally.items()))}")
    bad = [(c["op"], c["file"], v, r.get("type"), r.get("message"))
           for c, (v, r) in zip(cases, results) if v not in FINE and v != "skipped"]
    assert not bad, bad


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "child":
    _child(sys.argv[2], sys.argv[3])
