"""The tokenizer of the BM25 index: NFKC, casefold, unicode words, stopwords out, light stems.

Documents and queries go through the same :func:`tokenize`. Postings written with one tokenizer
mean nothing to another, so :data:`TOKENIZER_ID` names this one.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["STOPWORDS", "TOKENIZER_ID", "stem", "tokenize"]

#: Identifies the tokenizer below. Postings are only valid for the tokenizer that wrote them:
#: the store tags its lexical snapshot with this id and reads the tables instead of a snapshot
#: that names another (docs/format.md).
TOKENIZER_ID = "engramdb-lex-1"

#: English function words. Kept small on purpose: words that carry meaning in a personal memory
#: ("home", "work", "never", "first") stay searchable; question words go, because queries are
#: questions and "when"/"what" would otherwise match every question-shaped turn.
_STOPWORD_TEXT = """
    a about above after again against all also am an and any are aren as at be because been
    before being below between both but by can cannot could couldn did didn do does doesn doing
    don down during each few for from further had hadn has hasn have haven having he her here
    hers herself him himself his how i if in into is isn it its itself just ll me more most
    mustn my myself no nor not now of off on once only or other ought our ours ourselves out
    over own re same shan she should shouldn so some such than that the their theirs them
    themselves then there these they this those through to too under until up ve very was
    wasn we were weren what when where which while who whom why will with won would wouldn you
    your yours yourself yourselves oh hey hi yeah yes ok okay wow um uh hmm s t d m
"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORD_TEXT.split())

# A word is a run of letters/digits, optionally joined by apostrophes ("don't", "o'neil").
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_VOWEL = re.compile(r"[aeiouy]")


@lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """Return a light English stem of a lowercase word (plural, -ing, -ed, -ly).

    Deliberately light (an "S-stemmer" plus -ing/-ed/-ly): it unifies inflections
    ("paints", "painted", "painting" -> "paint"; "cities" -> "city") without the aggressive
    conflations of full Porter stemming ("university" ~ "universe"). Words of three letters or
    fewer, and words without a vowel left after stripping, are returned unchanged.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    w = word
    if w.endswith("ies") and len(w) >= 5:
        w = w[:-3] + "y"
    elif w.endswith(("sses", "shes", "ches", "xes", "zes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix, repl in (("ingly", ""), ("edly", ""), ("ing", ""), ("ied", "y"), ("ed", ""),
                         ("ly", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            base = w[: len(w) - len(suffix)] + repl
            if not _VOWEL.search(base):
                continue  # "sing", "bed", "fly": the ending is the word
            # Undo consonant doubling ("running" -> "run", "planned" -> "plan") but keep
            # genuine double letters ("falling" -> "fall", "passed" -> "pass").
            if (len(base) >= 3 and base[-1] == base[-2] and base[-1] not in "lsz"
                    and base[-1] not in "aeiou"):
                base = base[:-1]
            # Restore a silent e after a short stem ("baked" -> "bak" -> "bake").
            elif suffix in ("ing", "ed") and len(base) <= 4 and _cvc(base):
                base += "e"
            w = base
            break
    return w


def _cvc(s: str) -> bool:
    """True for consonant-vowel-consonant endings such as "bak", "hop" (not w, x, y)."""
    return (len(s) >= 3 and s[-1] not in "aeiouwxy" and s[-2] in "aeiou"
            and s[-3] not in "aeiou")


def tokenize(text: str) -> list[str]:
    """Split ``text`` into index terms: NFKC, casefold, unicode words, stopwords out, stemmed.

    A trailing possessive "'s" is dropped ("Caroline's" -> "caroline"); single letters and
    stopwords are dropped; numbers are kept ("2022", "10"), since dates and counts matter in a
    memory. The same function is used for documents and queries.
    """
    if text.isascii():  # NFKC leaves ASCII as it is, and casefolds it to lower case
        text = text.lower()
    else:
        text = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    return [t for t in map(_term, _WORD.findall(text)) if t]  # (no capturing group in _WORD)


@lru_cache(maxsize=1 << 16)
def _term(word: str) -> str:
    """The index term of one casefolded word, or "" for a word that is not indexed."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) < 2 or word in STOPWORDS:
        return ""
    if "'" in word:
        word = word.replace("'", "")
    if word.isalpha():  # (stem leaves any other word as it is: numbers skip its cache)
        word = stem(word)
    return word if word and word not in STOPWORDS else ""
