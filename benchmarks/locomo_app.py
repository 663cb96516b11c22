"""LoCoMo lab for turns stored as an app stores them: the text, with the speaker as role.

``benchmarks/locomo.py --as-app`` measures the store through its public API; this lab uses
the store's own formula (``locomo_lab.store_items``'s arithmetic: candidate pool, query
coverage, ``hybrid.context_mix``, the neighbour step) to find where the loss against the
prefixed form ("speaker: text [image: caption]") comes from, and what would recover it:

- which text the dense vectors and BM25 see: ``pref`` (the prefixed form), ``raw`` (the text
  alone), ``rawcap`` (the text and its image caption), ``embedded`` (the text and its caption
  in brackets, as ``Settings.embed_metadata`` embeds it), ``role`` ("speaker: text");
- ``role_lexical``: the turn's role counted as a word of the turn in query coverage (the
  store's ``Settings.role_lexical``);
- how the query is encoded for dense search: as is, or with the speakers' names replaced by
  "they"/"their" (``QUERY_FORMS``);

with the store's defaults, and leave-one-conversation-out over a small grid of settings.

    python benchmarks/locomo_app.py [--data PATH] [--no-loco]

Dense embeddings are cached as ``locomo_lab.embed`` caches them. The data is CC BY-NC 4.0
(Maharana et al., ACL 2024) and is never copied into this repository.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import locomo_lab as lab  # noqa: E402

from engramdb.derived.metadata_text import dense_document  # noqa: E402
from engramdb.settings import Settings  # noqa: E402


def texts(conv: lab.Conv, form: str) -> list[str]:
    """The turns' texts in ``form``: pref, raw, rawcap, embedded or role."""
    out = []
    for sp, raw, cap in zip(conv.speaker, conv.raw, conv.caption, strict=True):
        text = raw if form in ("raw", "rawcap", "embedded") else f"{sp}: {raw}"
        if cap and form == "embedded":
            text = dense_document(raw, json.dumps({"image_caption": cap}), "image_caption")
        elif cap and form == "pref":
            text += f" [image: {cap}]"
        elif cap and form == "rawcap":  # as Settings.lexical_metadata indexes it
            text += f" {cap}"
        out.append(text)
    return out


def _names(names: list[str]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")('s)?\b")


QUERY_FORMS: dict[str, Callable[[str, list[str]], str]] = {
    "as is": lambda q, names: q,
    "names -> they": lambda q, names: _names(names).sub(
        lambda m: "their" if m.group(2) else "they", q),
}


def items(conv: lab.Conv, dense_form: str, lex_form: str, role_lexical: bool,
          query_form: str = "as is") -> list[tuple]:
    """``locomo_lab.store_items`` for turns stored in the given forms."""
    qs = [q["q"] for q in conv.questions]
    cos_all = lab.embed([QUERY_FORMS[query_form](q, conv.speakers) for q in qs]) @ lab.embed(
        texts(conv, dense_form)).T
    return lab.formula_items(conv, cos_all, texts(conv, lex_form), role_lexical)


VARIANTS = {
    # name: (dense form, lexical form, role_lexical, query form)
    "prefixed (the lab's form)": ("pref", "pref", False, "as is"),
    "app: text + role": ("raw", "raw", False, "as is"),
    "app, role in coverage": ("raw", "raw", True, "as is"),
    "app, role in coverage, names -> they in the dense query": ("raw", "raw", True,
                                                                "names -> they"),
    "app, role in coverage, caption in BM25": ("raw", "rawcap", True, "as is"),
    "app, all three": ("raw", "rawcap", True, "names -> they"),
    "app, all three and the caption embedded (the default now)": ("embedded", "rawcap", True,
                                                                  "names -> they"),
    "... the caption embedded without brackets": ("rawcap", "rawcap", True, "names -> they"),
    "app, 'speaker: text' embedded and in BM25": ("role", "role", False, "as is"),
    "prefixed, names -> they in the dense query": ("pref", "pref", False, "names -> they"),
}
LOCO_GRID = {"speaker_prior": [0.5, 0.75, 1.0, 1.5], "lexical_weight": [0.4, 0.5, 0.6],
             "coverage_context": [1.0, 2.5], "date_prior": [2.0, 3.0]}


def loco(its: list[list[tuple]], defaults: dict) -> list[dict]:
    """Leave-one-conversation-out over ``LOCO_GRID``: the held-out rows of each fold."""
    combos = [dict(zip(LOCO_GRID, v, strict=True))
              for v in itertools.product(*LOCO_GRID.values())]
    rows = [[lab.store_rows(it, defaults | p) for p in combos] for it in its]
    held = []
    for h in range(len(its)):
        best = max(range(len(combos)), key=lambda j: lab.objective(
            [r for i in range(len(its)) if i != h for r in rows[i][j]]))
        print(f"    fold {h}: {combos[best]}")
        held += rows[h][best]
    return held


def main() -> int:
    """Print every variant's figures with the store's defaults, then held out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=lab.DEFAULT_DATA)
    ap.add_argument("--no-loco", action="store_true", help="defaults only")
    args = ap.parse_args()
    if not args.data.exists():
        print(f"LoCoMo data not found at {args.data}; skipping (see its README).")
        return 0
    t0 = time.time()
    convs = lab.load(args.data)
    defaults = {k: getattr(Settings(), k) for k in lab.STORE_KEYS}
    for name, (dense_form, lex_form, role, query_form) in VARIANTS.items():
        its = [items(c, dense_form, lex_form, role, query_form) for c in convs]
        lab.print_table(name, lab.summarize([r for it in its for r in
                                             lab.store_rows(it, defaults)]))
        if not args.no_loco:
            lab.print_table("  held out (LOCO)", lab.summarize(loco(its, defaults)))
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
