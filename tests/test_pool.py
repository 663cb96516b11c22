"""Pool: safe user-id -> directory mapping, LRU/idle closing with leases, threads, isolation."""

from __future__ import annotations

import random
import re
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engramdb
from engramdb.encoders import HashingEncoder
from engramdb.errors import InvalidInput, StoreClosed
from engramdb.pool import Pool, user_dirname

EVIL_IDS = [
    "..", ".", "../x", "../../etc/passwd", "/etc/passwd", "/", "a/b", "a\\b", "C:\\Windows",
    "\x00", "a\x00b", "~", "~root", ".hidden", "x" * 10_000, "Alice", "alice", "ALICE",
    "İstanbul", "istanbul", "ß", "ss", "用户", "\u202e\u0646", "\ud800", "con", "NUL", " ",
    "-", "--", "_", "a b", "a%2Fb", "....//", "\n",
]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}-[0-9a-f]{32}\.engram$|^u-[0-9a-f]{32}\.engram$")


@pytest.fixture
def pool(tmp_path: Path):
    with Pool(tmp_path / "users", encoder=HashingEncoder(dim=32), max_open=4) as p:
        yield p


def _check_name(user_id: str, root: Path) -> str:
    name = user_dirname(user_id)
    assert NAME_RE.match(name), name
    assert len(name) <= 80
    path = Pool(root).path_for(user_id)  # a Pool opens nothing until asked for a user
    assert path.name == name
    assert path.parent == root.resolve() and path.resolve().parent == root.resolve()
    return name


# -- the mapping ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=30, unique=True))
def test_any_text_id_maps_to_a_distinct_direct_child_of_root(tmp_path_factory, ids) -> None:
    root = tmp_path_factory.getbasetemp()
    names = [_check_name(i, root) for i in ids]
    assert len(set(names)) == len(ids)
    # case-insensitive file systems: names must stay distinct after case folding
    assert len({n.casefold() for n in names}) == len(ids)


def test_adversarial_ids_map_safely_and_distinctly(tmp_path: Path) -> None:
    names = [_check_name(i, tmp_path) for i in EVIL_IDS]
    assert len({n.casefold() for n in names}) == len(EVIL_IDS)
    assert user_dirname("Alice").startswith("alice-")  # readable slug
    assert user_dirname("../../etc/passwd").startswith("etc-passwd-")


@pytest.mark.parametrize("bad", ["", None, 5, b"alice", ["a"], 1.5])
def test_invalid_ids_raise_invalid_input(pool: Pool, bad: object) -> None:
    with pytest.raises(InvalidInput):
        user_dirname(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        pool.get(bad)  # type: ignore[arg-type]
    assert pool.open_count == 0


def test_evil_ids_create_stores_only_directly_under_root(tmp_path: Path) -> None:
    root = tmp_path / "users"
    with Pool(root, encoder=HashingEncoder(dim=32), max_open=3) as pool:
        ids = {}
        for uid in EVIL_IDS[:14]:
            with pool.session(uid) as mem:
                ids[uid] = mem.ingest(f"secret of {uid!r}").id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users"]
    children = list(root.iterdir())
    assert len(children) == 14
    assert all(c.is_dir() and c.resolve().parent == root.resolve() for c in children)
    with Pool(root) as pool:  # reopened without an encoder: from the manifests
        for uid, ident in ids.items():
            assert pool.get(uid).get(ident).text == f"secret of {uid!r}"


def test_planted_symlink_escaping_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "users", tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / user_dirname("mallory")).symlink_to(outside, target_is_directory=True)
    with Pool(root, encoder=HashingEncoder(dim=32)) as pool:
        with pytest.raises(InvalidInput):
            pool.get("mallory")
    assert list(outside.iterdir()) == []


def test_bad_pool_arguments(tmp_path: Path) -> None:
    for kwargs in ({"max_open": 0}, {"max_open": True}, {"idle_seconds": -1},
                   {"lock_timeout": float("nan")}, {"encoder": "hashing"}):
        with pytest.raises(InvalidInput):
            Pool(tmp_path, **kwargs)


# -- isolation ------------------------------------------------------------------------------


def test_one_user_never_sees_another_users_memories(pool: Pool) -> None:
    with pool.session("alice") as alice:
        a = alice.ingest("Alice's guinea pig is named Oscar.")
    with pool.session("Alice") as other:  # differs only in case: a different user
        assert len(other) == 0 and a.id not in other
    with pool.session("bob") as bob:
        bob.ingest("Bob keeps bees.")
        assert a.id not in bob
        assert all("Oscar" not in h.text for h in bob.recall("guinea pig Oscar", top_k=10))
        turn = bob.integrate("what is my guinea pig called?")
        assert "Oscar" not in turn.prompt
    with pool.session("alice") as alice:
        assert [h.text for h in alice.recall("guinea pig", top_k=1)] == [
            "Alice's guinea pig is named Oscar."]


# -- LRU, idle, leases ----------------------------------------------------------------------


def test_lru_closes_least_recently_used_and_reopens_on_demand(tmp_path: Path) -> None:
    with Pool(tmp_path, encoder=HashingEncoder(dim=32), max_open=2) as pool:
        a = pool.get("a")
        ident = a.ingest("kept across eviction").id
        b = pool.get("b")
        pool.get("a")  # a is now more recent than b
        pool.get("c")
        assert pool.open_count == 2
        with pytest.raises(StoreClosed):
            b.ingest("b was evicted")
        assert len(a) == 1  # a survived: it was used more recently
        pool.get("d")  # evicts a (LRU)
        with pytest.raises(StoreClosed):
            a.ingest("a was evicted")
        assert ident in pool.get("a")  # reopened from disk, data intact


def test_leased_store_is_never_closed_and_excess_is_closed_after(tmp_path: Path) -> None:
    with Pool(tmp_path, encoder=HashingEncoder(dim=32), max_open=1) as pool:
        with pool.session("held") as held:
            with pool.session("other") as other:  # over the limit: both leased
                assert pool.open_count == 2
                other.ingest("x")
            for uid in ("p", "q", "r"):
                pool.get(uid)
            held.ingest("still open while leased")
            assert len(held) == 1
            assert pool.open_count == 1  # p, q, r were closed as the excess instead
        pool.get("s")
        assert pool.open_count == 1
        with pytest.raises(StoreClosed):
            held.ingest("unleased now, so the LRU may close it")


def test_idle_stores_are_closed(tmp_path: Path) -> None:
    with Pool(tmp_path, encoder=HashingEncoder(dim=32), idle_seconds=0.0) as pool:
        with pool.session("a") as mem:
            mem.ingest("x")
            assert pool.close_idle() == 0  # leased: not idle
        assert pool.open_count == 0
    with Pool(tmp_path, encoder=HashingEncoder(dim=32), idle_seconds=3600) as pool:
        pool.get("a")
        assert pool.close_idle() == 0 and pool.open_count == 1


def test_store_closed_by_hand_is_reopened(pool: Pool) -> None:
    with pool.session("a") as mem:
        ident = mem.ingest("x").id
        mem.close()
    assert ident in pool.get("a")


def test_close_closes_everything_and_refuses_more(tmp_path: Path) -> None:
    pool = Pool(tmp_path, encoder=HashingEncoder(dim=32))
    stores = [pool.get(u) for u in "abc"]
    pool.close()
    pool.close()  # idempotent
    for s in stores:
        with pytest.raises(StoreClosed):
            s.ingest("x")
    with pytest.raises(StoreClosed):
        pool.get("a")
    with engramdb.open(tmp_path / user_dirname("a")) as mem:  # flock released
        assert mem.verify().ok


def test_close_gives_up_waiting_for_a_stuck_session(tmp_path: Path) -> None:
    pool = Pool(tmp_path, encoder=HashingEncoder(dim=32))
    with pool.session("a") as mem:
        pool.close(wait=0.05)
        with pytest.raises(StoreClosed):
            mem.ingest("x")
    # leaving the session after close is not an error


def test_release_of_a_foreign_store_is_refused(pool: Pool, tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "solo.engram", encoder=HashingEncoder(dim=32)) as solo:
        with pytest.raises(InvalidInput):
            pool.release(solo)
    store = pool.get("a")
    with pytest.raises(InvalidInput):
        pool.release(store)  # not leased any more


def test_pool_without_encoder_opens_existing_stores_only(tmp_path: Path) -> None:
    with Pool(tmp_path, encoder=HashingEncoder(dim=32)) as pool:
        pool.get("old").ingest("from before")
    with Pool(tmp_path) as pool:
        assert len(pool.get("old")) == 1
        with pytest.raises(InvalidInput):
            pool.get("new")
        assert pool.open_count == 1


# -- threads --------------------------------------------------------------------------------


def test_same_new_user_from_many_threads_opens_once(tmp_path: Path) -> None:
    got: list[object] = []
    errors: list[BaseException] = []
    with Pool(tmp_path, encoder=HashingEncoder(dim=32)) as pool:
        barrier = threading.Barrier(8)

        def work() -> None:
            try:
                barrier.wait()
                with pool.session("shared") as mem:
                    got.append(mem)
                    mem.ingest(f"from {threading.get_ident()}")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len({id(s) for s in got}) == 1
        assert len(pool.get("shared")) == 8


def test_many_threads_many_users_small_pool(tmp_path: Path) -> None:
    users = [f"user-{i}" for i in range(8)]
    acked: dict[str, list[str]] = {u: [] for u in users}
    lock = threading.Lock()
    errors: list[BaseException] = []
    # A long lifespan keeps every turn live, so "acknowledged" can be checked with `in`.
    long_life = {"short_term_lifespan": 1e9}
    with Pool(tmp_path, encoder=HashingEncoder(dim=32), max_open=3, settings=long_life) as pool:

        def work(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for n in range(10):
                    uid = rng.choice(users)
                    with pool.session(uid) as mem:
                        turn = mem.integrate(f"{uid} says thing {seed}-{n}")
                        assert turn.id in mem
                        assert all(h.text.startswith(uid + " ") for h in turn.recalled)
                    with lock:
                        acked[uid].append(turn.id)
                    assert pool.open_count <= 3 + 4  # leases may overshoot by the threads
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert pool.open_count <= 3
    with Pool(tmp_path) as pool:
        for uid in users:
            with pool.session(uid) as mem:
                assert mem.verify().ok
                assert all(i in mem for i in acked[uid])
                assert len(mem) == len(set(acked[uid]))
                others = {i for u, ids in acked.items() if u != uid for i in ids}
                assert not any(i in mem for i in others)


def test_close_during_an_acquire_that_evicts_does_not_wait_for_it(tmp_path) -> None:
    """An acquire that finds the pool closed after making room gives its lease back."""
    import threading
    import time as _time

    from engramdb.encoders import HashingEncoder
    from engramdb.errors import StoreClosed
    from engramdb.pool import Pool

    pool = Pool(tmp_path / "root", encoder=HashingEncoder(dim=8), max_open=1)
    with pool.session("a") as mem:
        mem.ingest("first user")
    real = pool._close_victims
    closing = threading.Event()

    def slow_close(victims):  # the eviction of "a" is under way when close() starts
        if victims:
            closing.set()
            _time.sleep(0.3)
        real(victims)

    pool._close_victims = slow_close
    errors = []

    def acquire_b():
        try:
            pool.acquire("b")
        except StoreClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=acquire_b)
    t.start()
    closing.wait(5)
    started = _time.monotonic()
    pool.close(wait=10)
    t.join(10)
    assert _time.monotonic() - started < 5, "close() waited for a lease nobody would end"
    assert errors, "the acquire should report the closed pool"
