"""Tests of the vector index (engramdb.derived.index) and its rotation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engramdb.derived.index import IndexConfig, IndexDamaged, VectorIndex
from engramdb.derived.rotation import Rotation
from engramdb.errors import DimensionMismatch, InvalidInput

DIM = 64
N = 20_000
K = 10
REPO = Path(__file__).resolve().parents[1]


def clustered(n: int, dim: int, seed: int, *, clusters: int = 200) -> np.ndarray:
    """Unit vectors around ~200 Gaussian centres, with a decaying spectrum (like embeddings)."""
    rng = np.random.default_rng(seed)
    scales = (1.0 + np.arange(dim)) ** -0.5
    centres = np.random.default_rng(1234).standard_normal((clusters, dim)) * scales
    pts = centres[rng.integers(clusters, size=n)]
    pts = pts + 1.0 * rng.standard_normal((n, dim)) * scales
    pts = pts @ Rotation.random(dim, 99).matrix.astype(np.float64)  # hide the axes from PCA
    return (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32)


X = clustered(N, DIM, seed=0)
Q = clustered(100, DIM, seed=1)


def fetch(labels: np.ndarray) -> np.ndarray:
    return X[labels]


# Exact scores of every query against every vector, computed once (one matrix product).
SCORES = Q @ X.T


def exact(i: int, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Exact top-k labels for query ``Q[i]``, optionally among ``allowed`` only."""
    pool = np.arange(N) if allowed is None else np.asarray(allowed)
    s = SCORES[i, pool]
    order = np.lexsort((pool, -s))[:k]
    return pool[order]


CONFIGS = {
    "full": IndexConfig(levels=[64]),
    "prefix": IndexConfig(levels=[24], candidate_multiplier=20),
    "two-levels": IndexConfig(levels=[24, 48], candidate_multiplier=20),
    "prefix+full": IndexConfig(levels=[24, 64], candidate_multiplier=20),
}
for _cfg in CONFIGS.values():
    _cfg.exact_threshold = 0  # exercise the graphs, not the small-store scan
    _cfg.M, _cfg.ef_construction = 12, 48  # keeps the suite fast on 2 cores


@pytest.fixture(scope="module", params=list(CONFIGS))
def built(request: pytest.FixtureRequest) -> VectorIndex:
    cfg = IndexConfig.from_dict(CONFIGS[request.param].to_dict())
    return VectorIndex.build(np.arange(N), X, cfg)


def recall(idx: VectorIndex, allowed: np.ndarray | None = None) -> float:
    hits = 0
    for i, q in enumerate(Q):
        labels, scores, level_scores = idx.search(q, K, fetch=fetch, allowed=allowed)
        np.testing.assert_allclose(scores, SCORES[i, labels], atol=1e-5)  # scores are exact
        assert (np.diff(scores) <= 1e-7).all()  # best first
        assert level_scores.shape == (len(labels), len(idx.config.levels))
        hits += len(set(labels.tolist()) & set(exact(i, K, allowed).tolist()))
    return hits / (K * len(Q))


# ---- rotation ---------------------------------------------------------------------------------

def test_random_rotation_is_orthonormal() -> None:
    r = Rotation.random(32, seed=3).matrix.astype(np.float64)
    np.testing.assert_allclose(r @ r.T, np.eye(32), atol=1e-5)


@pytest.mark.parametrize("n", [500, 10])  # full rank, and rank < dim (basis completed)
def test_fit_orders_components_by_variance(n: int) -> None:
    sample = clustered(n, DIM, seed=5)
    rot = Rotation.fit(sample)
    m = rot.matrix.astype(np.float64)
    np.testing.assert_allclose(m @ m.T, np.eye(DIM), atol=1e-4)
    var = (rot.apply(sample) - rot.apply(sample).mean(0)).var(0)
    rank = min(n - 1, DIM)
    assert (np.diff(var[:rank]) <= 1e-6).all()
    assert var[rank:].max(initial=0) < 1e-6


@pytest.mark.parametrize("n", [2000, 40, 3])  # n >= dim, n < dim, rank below keep
def test_fit_keeps_the_leading_components(n: int) -> None:
    """``keep=`` rows are the whole fit's first rows (up to sign), orthonormal, and the
    sample's variance in them is the same."""
    sample = clustered(n, DIM, seed=6)
    whole = Rotation.fit(sample)
    part = Rotation.fit(sample, keep=8)
    assert part.matrix.shape == (8, DIM) and part.rows == 8 and part.dim == DIM
    m = part.matrix.astype(np.float64)
    np.testing.assert_allclose(m @ m.T, np.eye(8), atol=1e-4)
    rank = min(n - 1, 8)
    np.testing.assert_allclose(np.abs((m[:rank] * whole.matrix[:rank]).sum(1)), 1.0, atol=1e-3)
    with pytest.raises(ValueError):
        part.apply(sample, 9)
    r = Rotation.random(DIM, 4, keep=8).matrix.astype(np.float64)
    np.testing.assert_allclose(r @ r.T, np.eye(8), atol=1e-5)


def test_rotation_round_trip_and_prefix(tmp_path: Path) -> None:
    rot = Rotation.fit(X[:1000])
    rot.save(tmp_path / "r.npy")
    again = Rotation.load(tmp_path / "r.npy")
    np.testing.assert_array_equal(again.matrix, rot.matrix)
    np.testing.assert_allclose(rot.apply(X[:3], 8), (X[:3] @ rot.matrix.T)[:, :8], atol=1e-6)
    with pytest.raises(ValueError):
        Rotation(np.ones((4, 3)))  # more components than dimensions


# ---- config -----------------------------------------------------------------------------------

def test_choose_follows_the_measurements() -> None:
    assert IndexConfig.choose(384, 1_000_000).levels == [384]
    big = IndexConfig.choose(4096, 250_000)
    assert big.levels[-1] < 4096 and big.candidate_multiplier > 1
    assert IndexConfig.choose(4096).exact_threshold < IndexConfig.choose(384).exact_threshold


def test_config_dict_round_trip_and_validation() -> None:
    cfg = IndexConfig.choose(2048, 50_000)
    assert IndexConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    newer = IndexConfig.from_dict({**cfg.to_dict(), "future_knob": 3})
    assert newer == cfg and newer.to_dict()["future_knob"] == 3
    for bad in ({"levels": [32, 16]}, {"levels": [128]}, {"levels": [16], "M": 0},
                {"levels": []}, {"levels": [16], "filter_crossover": -1}):
        with pytest.raises(InvalidInput):
            IndexConfig.from_dict(bad).validate(64)
    with pytest.raises(InvalidInput):
        IndexConfig.from_dict({"M": 16})


# ---- search -----------------------------------------------------------------------------------

def test_recall_at_10_for_every_level_configuration(built: VectorIndex) -> None:
    assert recall(built) >= 0.95


def test_filtered_search_matches_an_exact_filtered_scan(built: VectorIndex) -> None:
    rng = np.random.default_rng(7)
    selective = np.sort(rng.choice(N, N // 100, replace=False))  # 1%: exact scan of allowed
    for i, q in enumerate(Q[:30]):
        labels, scores, _ = built.search(q, K, fetch=fetch, allowed=selective)
        np.testing.assert_array_equal(labels, exact(i, K, selective))
    broad = np.sort(rng.choice(N, N // 2, replace=False))  # 50%: filtered graph walk
    for q in Q[:30]:
        labels, _, _ = built.search(q, K, fetch=fetch, allowed=broad)
        assert len(labels) == K and np.isin(labels, broad).all()
    assert recall(built, broad) >= 0.95


def test_deleted_labels_are_never_returned() -> None:
    idx = VectorIndex.build(np.arange(5000), X[:5000], CONFIGS["prefix"])
    nearest = [int(exact(i, 1, np.arange(5000))[0]) for i in range(len(Q))]
    gone = np.unique(np.concatenate([nearest, np.arange(0, 5000, 10)]))
    assert idx.mark_deleted(gone) == len(gone)
    assert idx.mark_deleted(gone) == 0  # idempotent
    assert idx.mark_deleted(np.array([10**12])) == 0  # unknown: a no-op
    assert len(idx) == 5000 - len(gone)
    live = np.setdiff1d(np.arange(5000), gone)
    np.testing.assert_array_equal(idx.labels(), live)
    hits = 0
    for i, q in enumerate(Q):
        labels, _, _ = idx.search(q, K, fetch=fetch)
        assert not np.isin(labels, gone).any()
        hits += len(set(labels.tolist()) & set(exact(i, K, live).tolist()))
        labels, _, _ = idx.search(q, K, fetch=fetch, allowed=gone)  # only deleted allowed
        assert len(labels) == 0
    assert hits / (K * len(Q)) >= 0.95
    idx.add(gone[:3], X[gone[:3]])  # a deleted label added again is live again
    assert len(idx) == 5000 - len(gone) + 3 and int(gone[0]) in idx


def test_small_store_scans_exactly_and_accepts_float16() -> None:
    idx = VectorIndex(DIM, IndexConfig(levels=[16], exact_threshold=1000))
    idx.add(np.arange(800), X[:800])
    half = X.astype(np.float16)
    for i, q in enumerate(Q[:10]):
        labels, scores, level_scores = idx.search(q, K, fetch=lambda ls: half[ls])
        np.testing.assert_array_equal(labels, exact(i, K, np.arange(800)))
        np.testing.assert_allclose(scores, X[labels] @ q, atol=2e-3)
        assert level_scores.shape == (K, 1)
    assert idx.search(Q[0], 0, fetch=fetch)[0].size == 0
    empty = VectorIndex(DIM, IndexConfig(levels=[DIM]))
    assert empty.search(Q[0], 5, fetch=fetch)[0].size == 0


def test_bad_input_is_refused() -> None:
    idx = VectorIndex(DIM, IndexConfig(levels=[DIM]))
    with pytest.raises(DimensionMismatch):
        idx.add(np.arange(2), np.ones((2, DIM + 1), np.float32))
    with pytest.raises(InvalidInput):
        idx.add(np.array([1, 1]), X[:2])
    with pytest.raises(InvalidInput):
        idx.add(np.array([-1]), X[:1])
    with pytest.raises(InvalidInput):
        idx.add(np.array([1]), np.full((1, DIM), np.nan, np.float32))
    with pytest.raises(DimensionMismatch):
        idx.search(np.ones(3, np.float32), 1, fetch=fetch)
    with pytest.raises(InvalidInput):
        idx.search(np.zeros(DIM, np.float32), 1, fetch=fetch)
    assert len(idx) == 0


def test_capacity_grows_by_doubling() -> None:
    idx = VectorIndex(DIM, IndexConfig(levels=[DIM]), capacity=16)
    caps = set()
    for start in range(0, 3000, 100):
        idx.add(np.arange(start, start + 100), X[start:start + 100])
        caps.add(idx._capacity)
        assert len(idx) <= idx._capacity <= max(1024, 2 * len(idx))
    assert len(caps) <= 4  # 1024, 2048, 4096: a handful of resizes, not one per add


def test_build_from_fetch_fits_a_rotation_and_reports_progress() -> None:
    seen: list[tuple[int, int]] = []
    labels = np.arange(100, 3100)
    idx = VectorIndex.build(labels, lambda ls: X[ls - 100], IndexConfig(levels=[16]),
                            dim=DIM, progress=lambda d, t: seen.append((d, t)), batch_size=1000)
    assert seen == [(1000, 3000), (2000, 3000), (3000, 3000)]
    assert idx._rotation is not None
    np.testing.assert_array_equal(idx.labels(), labels)
    # PCA puts more of the data's variance in the prefix than the random rotation would.
    fitted = np.linalg.norm(idx._rotation.apply(X[:500], 16), axis=1).mean()
    rand = np.linalg.norm(Rotation.random(DIM, 0).apply(X[:500], 16), axis=1).mean()
    assert fitted > rand


# ---- persistence ------------------------------------------------------------------------------

def test_save_load_round_trip_gives_identical_results(built: VectorIndex, tmp_path: Path) -> None:
    built.mark_deleted(np.arange(0, N, 97))
    built.save(tmp_path, generation=7)
    built.save(tmp_path, generation=8)  # the second save replaces the first one's files
    manifest = json.loads((tmp_path / "index.json").read_text())
    names = {f["name"] for f in manifest["files"].values()} | {"index.json"}
    assert set(os.listdir(tmp_path)) == names
    again, generation = VectorIndex.load(tmp_path, DIM)
    assert generation == 8 and len(again) == len(built)
    assert again.config.levels == built.config.levels
    np.testing.assert_array_equal(again._labels.dead(), built._labels.dead())
    allowed = np.arange(0, N, 2)
    for q in Q[:20]:
        for a in (None, allowed):
            got, want = again.search(q, K, fetch=fetch, allowed=a), built.search(
                q, K, fetch=fetch, allowed=a)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("saved")
    idx = VectorIndex.build(np.arange(3000), X[:3000], IndexConfig(levels=[16, 32]))
    idx.mark_deleted(np.arange(10))
    idx.save(d, generation=1)
    return d


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _level_file(d: Path, level: int = 0) -> Path:
    return d / json.loads((d / "index.json").read_text())["files"][f"level{level}"]["name"]


def _load_in_subprocess(d: Path) -> str:
    """Load in a child, so that a crash in hnswlib fails the test instead of killing pytest."""
    code = (
        "import sys\n"
        "from engramdb.derived.index import VectorIndex, IndexDamaged\n"
        "try:\n"
        f"    VectorIndex.load({str(d)!r}, {DIM})\n"
        "except IndexDamaged as e:\n"
        "    print('DAMAGED', e)\n"
        "else:\n"
        "    print('LOADED')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, f"loader died with {out.returncode}: {out.stderr[-2000:]}"
    return out.stdout


def test_loading_the_saved_copy_works(saved: Path, tmp_path: Path) -> None:
    assert _load_in_subprocess(_copy(saved, tmp_path / "ok")).startswith("LOADED")


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "garbage-with-checksum", "missing"])
def test_a_damaged_file_raises_index_damaged(saved: Path, tmp_path: Path, damage: str) -> None:
    d = _copy(saved, tmp_path / damage)
    f = _level_file(d, 1)
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "bitflip":
        data[len(data) // 3] ^= 0x10
        f.write_bytes(bytes(data))
    elif damage == "garbage-with-checksum":
        # A file whose checksum matches but whose contents are not what the level needs: the
        # header check must refuse it before hnswlib reads (and trusts) its sizes.
        import zlib

        junk = np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()
        f.write_bytes(junk)
        man = json.loads((d / "index.json").read_text())
        man["files"]["level1"]["crc32"] = f"{zlib.crc32(junk):08x}"
        (d / "index.json").write_text(json.dumps(man))
    else:
        f.unlink()
    assert _load_in_subprocess(d).startswith("DAMAGED")


def test_mapped_load_equals_hnswlib_load_index(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Graphs rebuilt from the mapped file (hnswlib's unpickling path) answer, delete and grow
    exactly like graphs read by hnswlib's own load_index (the fallback)."""
    import engramdb.derived.index_hnsw as index_module

    cfg = IndexConfig(levels=[24, 64], candidate_multiplier=20, exact_threshold=0, M=12,
                      ef_construction=48)
    VectorIndex.build(np.arange(5000), X[:5000], cfg).save(tmp_path, generation=3)
    assert index_module._hnswlib_state_template() is not None  # the fast path is the one used
    mapped, _ = VectorIndex.load(tmp_path, DIM)
    monkeypatch.setattr(index_module, "_hnswlib_state_template", lambda: None)
    plain, _ = VectorIndex.load(tmp_path, DIM)
    assert mapped._capacity == plain._capacity
    for idx in (mapped, plain):
        idx.mark_deleted(np.arange(0, 5000, 7))
        # Grow the graphs after the load, 4 rows per call: hnswlib inserts that few on one
        # thread, so both graphs grow deterministically.
        for start in range(5000, 6000, 4):
            idx.add(np.arange(start, start + 4), X[start:start + 4])
    for q in Q[:30]:
        for got, want in zip(mapped.search(q, K, fetch=fetch), plain.search(q, K, fetch=fetch)):
            np.testing.assert_array_equal(got, want)


def test_a_format_1_index_with_sha256_still_loads(saved: Path, tmp_path: Path) -> None:
    """Stores saved before CRC-32 checksums (index format 1, sha256) open without a rebuild;
    the loaded index says it should be saved again, and a damaged file is still caught."""
    import hashlib

    d = _copy(saved, tmp_path / "v1")
    man = _without_heights(d)
    man["version"] = 1
    for info in man["files"].values():
        del info["crc32"]
        info["sha256"] = hashlib.sha256((d / info["name"]).read_bytes()).hexdigest()
    (d / "index.json").write_text(json.dumps(man))
    old, _ = VectorIndex.load(d, DIM)
    new, _ = VectorIndex.load(saved, DIM)
    assert old.stale_format and not new.stale_format
    np.testing.assert_array_equal(old.labels(), new.labels())
    f = _level_file(d, 0)
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    assert _load_in_subprocess(d).startswith("DAMAGED")


def _without_heights(d: Path) -> dict:
    """The manifest of ``d`` as a format-2 save wrote it: no element heights beside the
    graphs (their files deleted); the caller writes it back."""
    man = json.loads((d / "index.json").read_text())
    for key in [k for k in man["files"] if k.startswith("heights")]:
        (d / man["files"].pop(key)["name"]).unlink()
    return man


def test_a_format_2_index_without_heights_loads_the_same_graph(saved: Path,
                                                                tmp_path: Path) -> None:
    """Before format 3 the graphs' element heights were not saved: the load walks the
    upper-level records instead, and the graph it builds answers exactly the same."""
    d = _copy(saved, tmp_path / "v2")
    man = _without_heights(d)
    man["version"] = 2
    (d / "index.json").write_text(json.dumps(man))
    old, _ = VectorIndex.load(d, DIM)
    new, _ = VectorIndex.load(saved, DIM)
    assert old.stale_format and not new.stale_format
    np.testing.assert_array_equal(old._labels.dead(), new._labels.dead())
    for q in Q[:20]:
        a, b = old.search(q, 10, fetch=fetch), new.search(q, 10, fetch=fetch)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_heights_that_disagree_with_the_graph_are_damage(saved: Path, tmp_path: Path) -> None:
    """A heights file that passes its checksum but does not fit the graph (another save's,
    say) is caught before hnswlib builds anything."""
    d = _copy(saved, tmp_path / "bad-heights")
    man = json.loads((d / "index.json").read_text())
    info = man["files"]["heights0"]
    heights = np.load(d / info["name"])
    up, flat = np.flatnonzero(heights)[0], np.flatnonzero(heights == 0)[0]
    heights[up], heights[flat] = heights[flat], heights[up]  # same total: only the layout lies
    with open(d / info["name"], "wb") as f:
        np.save(f, heights, allow_pickle=False)
    info["bytes"] = (d / info["name"]).stat().st_size
    info["crc32"] = format(zlib.crc32((d / info["name"]).read_bytes()), "08x")
    (d / "index.json").write_text(json.dumps(man))
    with pytest.raises(IndexDamaged, match="heights"):
        VectorIndex.load(d, DIM)


def test_a_bad_manifest_raises_index_damaged(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexDamaged):
        VectorIndex.load(tmp_path / "nothing-here", DIM)
    d = _copy(saved, tmp_path / "copy")
    with pytest.raises(IndexDamaged):
        VectorIndex.load(d, DIM * 2)  # an index of another dimension
    (d / "index.json").write_text("{not json")
    with pytest.raises(IndexDamaged):
        VectorIndex.load(d, DIM)


def test_an_empty_index_round_trips(tmp_path: Path) -> None:
    VectorIndex(DIM, IndexConfig(levels=[16])).save(tmp_path, 0)
    idx, generation = VectorIndex.load(tmp_path, DIM)
    assert len(idx) == 0 and generation == 0
    idx.add(np.arange(5), X[:5])
    assert len(idx.search(Q[0], 3, fetch=fetch)[0]) == 3


# ---- concurrency ------------------------------------------------------------------------------

def test_many_threads_search_while_one_adds() -> None:
    cfg = IndexConfig(levels=[32], candidate_multiplier=10, exact_threshold=0,
                      ef_construction=64)
    idx = VectorIndex.build(np.arange(4000), X[:4000], cfg)
    added = [4000]  # labels < added[0] are in the index
    errors: list[BaseException] = []
    stop = threading.Event()
    good = [0, 0]  # results at least as good as the exact top-k at search start, all results
    lock = threading.Lock()

    def writer() -> None:
        try:
            for start in range(4000, 12_000, 250):
                idx.add(np.arange(start, start + 250), X[start:start + 250])
                added[0] = start + 250
                if start % 2000 == 0:
                    idx.save(save_dir, generation=start)  # saves run beside searches too
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                qi = int(rng.integers(len(Q)))
                q = Q[qi]
                before = added[0]
                labels, scores, _ = idx.search(q, K, fetch=fetch)
                after = added[0] + 250  # a batch may be half-visible while it is inserted
                assert len(labels) == K and labels.max() < after
                np.testing.assert_allclose(scores, SCORES[qi, labels], atol=1e-5)
                # The exact answer over any superset of what was present at the start has a
                # k-th score at least this high.
                floor = np.sort(SCORES[qi, :before])[-K]
                with lock:
                    good[0] += int((scores >= floor - 1e-6).sum())
                    good[1] += K
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_dir = Path(tmp)
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
        threads.append(threading.Thread(target=writer))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert good[1] > 0 and good[0] / good[1] >= 0.95
        assert len(idx) == 12_000
        again, generation = VectorIndex.load(save_dir, DIM)
        assert generation == 10_000 and len(again) >= 10_000


# ---- property: random add / delete sequences against a set model ------------------------------

ops = st.lists(
    st.tuples(st.sampled_from(["add", "delete"]), st.lists(st.integers(0, 60), max_size=12)),
    max_size=15,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, graph=st.booleans())
def test_add_delete_sequences_match_a_set_model(ops: list, graph: bool) -> None:
    cfg = IndexConfig(levels=[8, DIM], M=4, ef_construction=16,
                      exact_threshold=0 if graph else 10_000)
    idx = VectorIndex(DIM, cfg, capacity=4)
    model: set[int] = set()
    for op, labels in ops:
        arr = np.array(sorted(set(labels)), dtype=np.int64)
        if op == "add":
            idx.add(arr, X[arr])
            model |= set(arr.tolist())
        else:
            idx.mark_deleted(arr)
            model -= set(arr.tolist())
        assert len(idx) == len(model)
        np.testing.assert_array_equal(idx.labels(), np.array(sorted(model), dtype=np.int64))
        got, _, _ = idx.search(Q[0], 5, fetch=fetch)
        assert set(got.tolist()) <= model and len(got) == min(5, len(model))
        allowed = np.arange(0, 61, 3)
        got, _, _ = idx.search(Q[1], 5, fetch=fetch, allowed=allowed)
        assert set(got.tolist()) <= model & set(allowed.tolist())


def test_a_graph_file_written_short_is_an_io_error(saved: Path, tmp_path: Path) -> None:
    """hnswlib writes through an unchecked stream: a full disk leaves a short file, which
    the save reports as an OSError (the store's StorageError), never as a parse error."""
    from engramdb.derived.index_hnsw import file_heights

    data = _level_file(saved, 0).read_bytes()
    for cut in (len(data) - 5, 100, 10, 0):
        short = tmp_path / f"short{cut}.hnsw"
        short.write_bytes(data[:cut])
        with pytest.raises(OSError):
            file_heights(short, 16)


def test_a_label_too_large_changes_nothing() -> None:
    from engramdb.derived.label_states import MAX_LABEL

    idx = VectorIndex(DIM, IndexConfig(levels=[DIM]))
    idx.add(np.arange(3), X[:3])
    with pytest.raises(InvalidInput):
        idx.add(np.array([5, MAX_LABEL + 1]), X[3:5])
    assert len(idx) == 3 and idx.labels().tolist() == [0, 1, 2]
