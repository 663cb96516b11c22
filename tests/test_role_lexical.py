"""A turn's role takes part in query coverage (``Settings.role_lexical``; docs/recall.md).

A chatbot stores what was said as the text and who said it as the role; a question that names
the speaker should find that speaker's turns as well as if each text began "speaker: ".
Tiny stores with the model-free HashingEncoder; none needs LoCoMo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import engramdb
from engramdb.settings import Settings

FILLER = [f"Remark {i} about trains, soup and the weather." for i in range(30)]


def _store(mem: engramdb.Store) -> dict[str, str]:
    """Two speakers say nearly the same thing; the question names one of them."""
    mem.ingest_many(FILLER, roles=["Melanie", "Caroline"] * 15, sessions=["s0"] * 30)
    ids = {
        "caroline": mem.ingest("I painted a lake at sunrise last week.", role="Caroline",
                               session="s1").id,
        "melanie": mem.ingest("I painted a lake at sunrise.", role="Melanie",
                              session="s1").id,
    }
    return ids


def _hit(mem: engramdb.Store, query: str, ident: str) -> engramdb.Recall:
    return next(h for h in mem.recall(query, top_k=40, associative=False) if h.id == ident)


def test_role_counts_in_coverage(mem: engramdb.Store) -> None:
    ids = _store(mem)
    query = "What did Caroline paint at sunrise?"
    own = _hit(mem, query, ids["caroline"])
    other = _hit(mem, query, ids["melanie"])
    # "caroline" is held by Caroline's turn through its role, not by Melanie's.
    assert own.scores["coverage"] > other.scores["coverage"]
    assert own.scores["coverage"] == 1.0  # caroline, paint, sunrise: all held
    assert mem.recall(query, top_k=1, associative=False)[0].id == ids["caroline"]
    # The relevance counts the name as held by the store (it is: as a role).
    assert own.relevance > other.relevance


def test_role_lexical_off_is_the_formula_before(store_path: Path, encoder: object) -> None:
    off = Settings(role_lexical=False)
    with engramdb.open(store_path, encoder=encoder, settings=off) as mem:
        ids = _store(mem)
        query = "What did Caroline paint at sunrise?"
        own = _hit(mem, query, ids["caroline"])
        other = _hit(mem, query, ids["melanie"])
        # No turn's text holds "caroline": coverage sees only paint and sunrise.
        assert own.scores["coverage"] == other.scores["coverage"] == 1.0
        assert own.scores["speaker"] == 1.0  # the speaker prior is there either way


def test_plain_text_scores_like_the_prefixed_text(tmp_path: Path, encoder: object) -> None:
    """The role's share of coverage equals that of the name written into the text when no
    text mentions the name (the name then holds the same turns either way)."""
    query = "What did Caroline paint at sunrise?"
    plain, prefixed = tmp_path / "plain.engram", tmp_path / "prefixed.engram"
    with engramdb.open(plain, encoder=encoder, settings=Settings(role_lexical=True)) as mem:
        ids = _store(mem)
        got = _hit(mem, query, ids["caroline"]).scores["coverage"], _hit(
            mem, query, ids["melanie"]).scores["coverage"]
    with engramdb.open(prefixed, encoder=encoder,
                       settings=Settings(role_lexical=False)) as mem:
        roles = ["Melanie", "Caroline"] * 15
        mem.ingest_many([f"{r}: {t}" for r, t in zip(roles, FILLER, strict=True)],
                        roles=roles, sessions=["s0"] * 30)
        c = mem.ingest("Caroline: I painted a lake at sunrise last week.", role="Caroline",
                       session="s1").id
        m = mem.ingest("Melanie: I painted a lake at sunrise.", role="Melanie",
                       session="s1").id
        want = _hit(mem, query, c).scores["coverage"], _hit(mem, query, m).scores["coverage"]
    assert np.allclose(got, want)


def test_old_manifest_keeps_roles_out(tmp_path: Path) -> None:
    # A record from before role_lexical names none of it: the formula it was made with.
    stored = Settings().to_dict()
    del stored["role_lexical"]
    assert Settings.from_stored(stored).role_lexical is False
    assert Settings.from_stored(Settings().to_dict()).role_lexical is True
    assert Settings().role_lexical is True


def test_role_turn_counts_follow_forget_and_reopen(store_path: Path, encoder: object) -> None:
    with engramdb.open(store_path, encoder=encoder) as mem:
        ids = _store(mem)
        code = mem.context.codes["Caroline"]
        assert mem.context.role_turns[code] == 16
        mem.forget([ids["caroline"]])
        assert mem.context.role_turns[code] == 15
    with engramdb.open(store_path, encoder=encoder) as mem:
        assert mem.context.role_turns[mem.context.codes["Caroline"]] == 15
        assert mem.context.role_turns[mem.context.codes["s0"]] == 0  # a session's label


def test_a_session_label_is_no_role(tmp_path: Path, encoder: object) -> None:
    # Label words include sessions'; only roles count as held words, so a query naming a
    # session's label scores as it does with roles out of coverage.
    got = []
    for on in (True, False):
        with engramdb.open(tmp_path / f"{on}.engram", encoder=encoder,
                           settings=Settings(role_lexical=on)) as mem:
            mem.ingest_many(FILLER[:4], sessions=["gardening"] * 4)
            got.append([(h.id, h.score, h.relevance, h.scores["coverage"])
                        for h in mem.recall("gardening trains", top_k=4, associative=False)])
    assert got[0] == got[1]


def test_dense_query_drops_role_names(mem: engramdb.Store) -> None:
    from engramdb.recall.query_text import dense_query

    _store(mem)
    mem.ingest("Hello there", role="user", session="s2")
    ctx = mem.context
    assert dense_query("What did Caroline paint?", ctx) == "What did they paint?"
    assert dense_query("Where is Melanie's lake?", ctx) == "Where is their lake?"
    assert dense_query("What did the user say?", ctx) == "What did they say?"
    assert dense_query("Did caroline and MELANIE meet?", ctx) == "Did they and they meet?"
    # No role named (a session's label is none): the text as it was.
    assert dense_query("What about s0 trains?", ctx) == "What about s0 trains?"
    assert dense_query("Caroline", mem.context) == "they"
    mem.forget([h.id for h in mem.engrams(where={"role": "user"})])
    assert dense_query("What did the user say?", mem.context) == "What did the user say?"


def test_a_text_that_names_its_speaker_scores_as_before(tmp_path: Path, encoder: object) -> None:
    """Turns written "speaker: text" already hold the name: counting the role adds no
    holder and no document frequency, so every score and relevance is as without it."""
    roles = ["Melanie", "Caroline"] * 15 + ["Caroline", "Melanie"]
    texts = [f"{r}: {t}" for r, t in zip(roles, FILLER + ["I painted a lake at sunrise.",
                                                          "Caroline painted a lake."],
                                         strict=True)]
    got = []
    for on in (True, False):
        with engramdb.open(tmp_path / f"{on}.engram", encoder=encoder,
                           settings=Settings(role_lexical=on)) as mem:
            mem.ingest_many(texts, roles=roles, sessions=["s0"] * 30 + ["s1"] * 2)
            got.append([(h.id, h.score, h.relevance, h.scores)
                        for h in mem.recall("What did Caroline paint at sunrise?", top_k=10,
                                            associative=False)])
    assert got[0] == got[1]


def test_role_turn_counts_match_the_roles_after_upserts(store_path: Path,
                                                        encoder: object) -> None:
    def counts(mem: engramdb.Store) -> tuple[list[int], list[int]]:
        ctx = mem.context
        roles = ctx.role[: ctx.capacity]
        recount = np.bincount(roles[roles >= 0], minlength=len(ctx.role_turns))
        return ctx.role_turns.tolist(), recount.tolist()

    with engramdb.open(store_path, encoder=encoder) as mem:
        _store(mem)
        mem.ingest("I like tea.", role="Caroline", session="s2", key="k1")
        mem.upsert("k1", "I like tea.", role="Melanie", session="s2")  # same text
        mem.upsert("k1", "I like coffee.", role="Melanie", session="s2")  # new text
        mem.forget(keys=["k1"])
        got, want = counts(mem)
        assert got == want
    with engramdb.open(store_path, encoder=encoder) as mem:
        assert counts(mem)[0] == got


def test_a_query_naming_a_speaker_is_encoded_without_the_name(tmp_path: Path) -> None:
    """Settings.role_free_query: the dense search encodes the question with the speaker's name
    replaced by "they"; the lexical search keeps it, and integrate stores its turn's own
    vector (of the text as said) whatever it recalled with."""
    from engramdb.encoders import HashingEncoder

    class Recording(HashingEncoder):
        def __init__(self) -> None:
            super().__init__(dim=64)
            self.seen: list[str] = []

        def encode(self, texts):  # type: ignore[no-untyped-def]
            self.seen.extend(texts)
            return super().encode(texts)

    enc = Recording()
    with engramdb.open(tmp_path / "m", encoder=enc) as mem:
        _store(mem)
        enc.seen.clear()
        mem.recall("What did Caroline paint?", top_k=3)
        assert enc.seen == ["What did they paint?"]
        enc.seen.clear()
        turn = mem.integrate("What did Caroline's sister paint?", role="user")
        assert enc.seen == ["What did Caroline's sister paint?", "What did their sister paint?"]
        stored = mem.vectors([turn.id])[0]
        own = HashingEncoder(dim=64).encode(["What did Caroline's sister paint?"])[0]
        assert np.allclose(stored, own / np.linalg.norm(own), atol=1e-6)
        enc.seen.clear()
        mem.recall("What about trains?", top_k=3)  # no name: the text as it is
        assert enc.seen == ["What about trains?"]
    with engramdb.open(tmp_path / "m", encoder=enc,
                       settings={"role_free_query": False}) as mem:
        enc.seen.clear()
        mem.recall("What did Caroline paint?", top_k=3)
        assert enc.seen == ["What did Caroline paint?"]
    assert Settings.from_stored({"role_lexical": True}).role_free_query is False
