"""The texts recall reads from memory: as given until their rows are written, compressed
once when they are, and exact through every path (recent tail, packed chunks, catalog)."""

from __future__ import annotations

from collections import Counter

import engramdb
from engramdb import content
from engramdb.derived import hotstate
from engramdb.encoders import HashingEncoder
from engramdb.engine import mirror


def _counting(monkeypatch) -> Counter:
    calls: Counter = Counter()

    def compress(text: str) -> bytes:
        calls[text] += 1
        return content.compress_text(text)

    monkeypatch.setattr(mirror, "compress_text", compress)
    monkeypatch.setattr(hotstate, "compress_text", compress)
    return calls


def test_texts_folded_before_the_tail_is_packed_are_compressed_once(tmp_path,
                                                                     monkeypatch) -> None:
    calls = _counting(monkeypatch)
    monkeypatch.setattr(hotstate, "_TAIL_FLUSH", 8)
    texts = [f"turn {i}: the cat sat on mat number {i}" for i in range(8)]
    with engramdb.open(tmp_path / "m", encoder=HashingEncoder(dim=32)) as mem:
        for text in texts[:6]:
            mem.ingest(text)
        assert not calls  # a journaled turn is not compressed
        with mem.snapshot():  # the fold writes the catalog: compressed now
            pass
        assert calls == Counter(texts[:6])
        for text in texts[6:]:
            mem.ingest(text)  # the eighth payload packs the tail: only the new two
        assert calls == Counter(texts)
        got = {r.text for r in mem.recall("cat mat", top_k=20)}
    assert got == set(texts)


def test_recall_reads_exact_texts_from_every_kind_of_payload(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(hotstate, "_TAIL_FLUSH", 5)
    texts = [f"note {i} — a café in Zürich, {'ü' * (i % 3)} day {i}" for i in range(23)]
    path = tmp_path / "m"
    with engramdb.open(path, encoder=HashingEncoder(dim=32)) as mem:
        for i, text in enumerate(texts[:12]):
            mem.ingest(text)
            if i == 4:
                with mem.snapshot():  # folded mid-way: compressed, then packed
                    pass
        mem.ingest_many(texts[12:])  # a bulk write beside turns
        got = {r.text for r in mem.recall("café Zürich day", top_k=30)}
        assert got == set(texts)
        assert {e.text for e in mem.engrams()} == set(texts)
    with engramdb.open(path, encoder=HashingEncoder(dim=32)) as mem:  # replayed or loaded
        assert {r.text for r in mem.recall("note day", top_k=30)} == set(texts)
