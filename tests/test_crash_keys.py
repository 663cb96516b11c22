"""Crash safety of caller keys: SIGKILL a process mixing keyed writes with turns.

``tests/helpers/keyed_writer.py`` integrates turns and, between them, ingests new keys (the turn
journal), upserts stored keys with the same text or a new one, upserts many keys at once, and
forgets keys (small keyed writes on the turn journal, batches as catalog commits;
``tests/test_crash_journal_keys.py`` kills writers whose writes all wait in the journal); the
journal folds every few records and the store is closed and reopened every 4-25 operations. Each
keyed write is logged (fsynced) as an intent before the call and an ack after it. After each
kill at a random moment the parent reopens the store (which replays the journal), runs
``verify()``, and checks against the log:

- the write in flight at the kill (an intent without its ack) landed or not, batch by batch:
  each batch all or nothing, and no batch after one that did not land; the model then takes
  what the store shows, and every later check demands exactly that;
- every acknowledged key maps to its last acknowledged text and occurrence (``get_keys``,
  ``get(key=)``, ``metadata["w"]``), with the exact vector (``vectors([id])``);
- a forgotten key stays forgotten, no key is held twice (the ``occurrences`` table holds
  exactly the keys the log says are stored, once each), and the engram of a keyed text
  that no key holds any more is gone (erased by the upsert or forget that removed its last
  occurrence), while one that several keys share keeps one occurrence per key;
- every acknowledged turn is stored with its text.

The default run kills 10 times (~15 s); ENGRAMDB_CRASH_KILLS=N runs a long campaign (the
figures are in docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import engramdb
from engramdb.content import check_vectors, decompress_text, normalize_text
from engramdb.encoders import HashingEncoder
from engramdb.errors import NotFound
from tests.conftest import HELPERS, PYTHON, python_env
from tests.test_crash import _cut_torn_tail
from tests.test_crash_points import _kill_after_progress

KILLS = int(os.environ.get("ENGRAMDB_CRASH_KILLS", "10"))
DIM = 32
ENC = HashingEncoder(dim=DIM)

State = tuple[str, int] | None  # what a key holds: (normalised text, metadata["w"]), or nothing


@dataclass
class Model:
    """What the log promises, read incrementally after every kill."""

    keys: dict[str, tuple[str, int]] = field(default_factory=dict)  # stored key -> state
    ever: set[str] = field(default_factory=set)  # every key a resolved write named
    text_ids: dict[str, str] = field(default_factory=dict)  # keyed text -> content id
    turns: dict[str, str] = field(default_factory=dict)  # acknowledged turn id -> text
    offset: int = 0
    acked_writes: int = 0  # acknowledged keyed writes, one per key
    acked_calls: dict[str, int] = field(default_factory=dict)  # per kind of call
    in_flight: dict[str, int] = field(default_factory=lambda: {"landed": 0, "not landed": 0,
                                                               "partly": 0, "none": 0})

    def apply(self, intent: dict, ids: list[str] | None, landed: list[bool]) -> None:
        """Apply ``intent`` for the keys whose ``landed`` is true."""
        for j, k in enumerate(intent["keys"]):
            if not landed[j]:
                continue
            self.ever.add(k)
            if intent["texts"] is None:
                self.keys.pop(k, None)
            else:
                text = normalize_text(intent["texts"][j])
                self.keys[k] = (text, intent["w"][j])
                if ids is not None:
                    self.text_ids[text] = ids[j]

    def read(self, log: Path) -> dict | None:
        """Apply the log's new lines (its torn last line, if the writer died writing it, is
        cut first) and return the intent left without an ack, if any."""
        _cut_torn_tail(log)
        data = log.read_bytes() if log.exists() else b""
        end = len(data)
        pending: dict[str, dict] = {}
        for line in data[self.offset:end].decode("utf-8").splitlines():
            e = json.loads(line)
            if e["op"] == "intent":
                pending[e["i"]] = e
            elif e["op"] == "ack":
                intent = pending.pop(e["i"])
                self.apply(intent, e["ids"], [True] * len(intent["keys"]))
                self.acked_writes += len(intent["keys"])
                self.acked_calls[intent["kind"]] = self.acked_calls.get(intent["kind"], 0) + 1
            else:
                self.turns[e["id"]] = e["text"]
        self.offset = end
        assert len(pending) <= 1, f"several writes without an ack: {sorted(pending)}"
        return next(iter(pending.values()), None)


def _held(mem: engramdb.Store, keys: list[str]) -> dict[str, tuple[State, str]]:
    """What the store holds under each key: (text, w) and the engram's id."""
    got = mem.get_keys(keys) if keys else {}
    out: dict[str, tuple[State, str]] = {}
    for k, e in got.items():
        occ = [o for o in e.occurrences if o.key == k]
        assert len(occ) == 1, f"key {k!r} names {len(occ)} occurrences of {e.id}"
        out[k] = ((e.text, (occ[0].metadata or {}).get("w")), e.id)
    return out


def _resolve(mem: engramdb.Store, model: Model, intent: dict) -> None:
    """The write the kill interrupted: each batch landed whole or not at all, in order."""
    keys = intent["keys"]
    held = _held(mem, keys)
    landed: list[bool] = []
    for j, k in enumerate(keys):
        old: State = model.keys.get(k)
        new: State = None if intent["texts"] is None else (
            normalize_text(intent["texts"][j]), intent["w"][j])
        now = held[k][0] if k in held else None
        assert now in (old, new), (
            f"in-flight {intent['kind']} {intent['i']}: key {k!r} holds {now}, "
            f"expected {old} (before) or {new} (after)")
        landed.append(now == new)
    # Batches of the call: a forget is one commit; ingests and upserts commit per batch
    # of batch_rows texts, keyed or not (pos: the keyed texts' places in the call).
    batch = len(keys) if intent["texts"] is None else intent["batch"]
    pos = intent.get("pos") or list(range(len(keys)))
    chunks: dict[int, set[bool]] = {}
    for p, got in zip(pos, landed):
        chunks.setdefault(p // batch, set()).add(got)
    order = [chunks[c] for c in sorted(chunks)]
    assert all(len(s) == 1 for s in order), (
        f"in-flight {intent['kind']} {intent['i']}: a batch landed in part: {landed}")
    flags = [next(iter(s)) for s in order]
    assert flags == sorted(flags, reverse=True), (
        f"in-flight {intent['kind']} {intent['i']}: a later batch landed without an "
        f"earlier one: {flags}")
    model.in_flight["landed" if all(landed) else "not landed" if not any(landed)
                    else "partly"] += 1
    ids = [held[k][1] if k in held else "" for k in keys]
    model.apply(intent, ids, landed)


def _check(mem: engramdb.Store, model: Model, rng: random.Random) -> None:
    live = sorted(model.keys)
    held = _held(mem, live)
    missing = [k for k in live if k not in held]
    assert not missing, f"{len(missing)} acknowledged keys lost, e.g. {missing[0]!r}"
    for k in live:
        assert held[k][0] == model.keys[k], (k, held[k][0], model.keys[k])
    for k in rng.sample(live, min(20, len(live))):
        assert mem.get(key=k).text == model.keys[k][0]
    gone = sorted(model.ever - set(live))
    back = sorted(_held(mem, gone))
    assert not back, f"{len(back)} forgotten keys came back, e.g. {back[0]!r}"
    for k in rng.sample(gone, min(5, len(gone))):
        try:
            mem.get(key=k)
        except NotFound:
            continue
        raise AssertionError(f"forgotten key {k!r} is readable")
    # Texts: an engram per text some key holds, with one occurrence per such key (keyed
    # texts never occur without a key); the texts no key holds any more are erased.
    holders: dict[str, set[str]] = {}
    for k, (text, _) in model.keys.items():
        holders.setdefault(text, set()).add(k)
    for text, ident in model.text_ids.items():
        if text not in holders:
            assert ident not in mem, f"text {text!r} held by no key is still stored"
    ids = sorted({held[k][1] for k in live})
    if ids:
        got = mem.get_keys(live)
        by_id = {got[k].id: got[k] for k in live}
        for ident in ids:
            e = by_id[ident]
            assert e.pinned and e.refs == len(e.occurrences), (ident, e.refs, e.occurrences)
            assert {o.key for o in e.occurrences} == holders[e.text], (e.text, e.occurrences)
        want = check_vectors(ENC.encode([by_id[i].text for i in ids]), DIM, len(ids))
        np.testing.assert_array_equal(mem.vectors(ids), want)
    with mem.snapshot() as snap:
        counts = dict(snap.query(
            "SELECT key, count(*) FROM occurrences WHERE key IS NOT NULL GROUP BY key"))
        twice = sorted(k for k, n in counts.items() if n != 1)
        assert not twice, f"keys held twice: {twice[:5]}"
        assert set(counts) == set(live), (
            f"catalog keys differ from the log: {sorted(set(counts) ^ set(live))[:5]}")
        # Turns: stored, alive or not (the capacity rule may have killed an old one; only
        # gc would remove it, and the writer never runs gc).
        rows = {i: t for i, t in snap.query("SELECT id, text FROM engrams")}
    lost = sorted(set(model.turns) - set(rows))
    assert not lost, f"{len(lost)} acknowledged turns lost, e.g. {lost[0]}"
    for ident in rng.sample(sorted(model.turns), min(20, len(model.turns))):
        assert decompress_text(rows[ident]) == normalize_text(model.turns[ident])


def test_sigkill_during_keyed_writes_never_loses_acknowledged_keys(tmp_path: Path) -> None:
    store, log = tmp_path / "keys.engram", tmp_path / "acks.jsonl"
    rng = random.Random(18)
    model = Model()
    replays = 0
    for i in range(KILLS):
        proc = subprocess.Popen(
            [PYTHON, str(HELPERS / "keyed_writer.py"), str(store), str(log), str(i)],
            env=python_env(), stderr=subprocess.PIPE)
        _kill_after_progress(proc, log, rng, 0.8)
        intent = model.read(log)
        with engramdb.open(store, encoder=ENC, create=False) as mem:
            replays += any("turn journal" in r for r in mem.recovered)
            report = mem.verify()
            assert report.ok, report.problems
            if intent is None:
                model.in_flight["none"] += 1
            else:
                _resolve(mem, model, intent)
            _check(mem, model, rng)
    assert model.acked_writes and model.turns, "nothing was acknowledged: the test proved nothing"
    gone = len(model.ever - set(model.keys))
    print(f"\n[crash-keys] {KILLS} kills, {model.acked_writes} acknowledged keyed writes "
          f"({', '.join(f'{k} {n}' for k, n in sorted(model.acked_calls.items()))} calls), "
          f"0 lost; after the last kill {len(model.keys)} stored keys and {gone} forgotten "
          f"checked, {len(model.text_ids)} keyed texts, {len(model.turns)} turns; "
          f"write in flight at the kill: {model.in_flight}; {replays} opens replayed the "
          "journal")
