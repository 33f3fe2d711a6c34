"""text8-style character corpora: a built-in text filtered as Mahoney filtered Wikipedia into text8.

text8 (Mahoney 2006; the benchmark of Al-Rfou et al. 2018, §3) is 100M characters of English
Wikipedia reduced to 27 symbols: lowercase letters a-z and the space. lmlab builds the same kind of
text offline from a built-in corpus (`builtin:text8-kjv` from the King James Bible,
`builtin:text8-gcide` from the GCIDE dictionary): lowercase, every character outside a-z becomes a
space, runs of spaces become one, no space at either end; the documents are joined by one space
into a single document. Splits as text8's (90M / 5M / 5M characters): the first 90% of the
characters are train, the next 5% valid, the last 5% test, cut at those character counts (in the
middle of a word if it falls there, as text8's cuts do).

Deviation from Mahoney's filter: it also spelled digits as words ("1" -> " one ") and kept the
text of links only; here digits become spaces like every other character (KJV's verse numbers and
GCIDE's markup would otherwise dominate the text).
"""

from __future__ import annotations

import re

SPLIT_FRACTIONS = {"train": (0.0, 0.9), "valid": (0.9, 0.95), "test": (0.95, 1.0)}
_NOT_A_TO_Z = re.compile(r"[^a-z]+")


def text8_filter(docs: list[str]) -> str:
    """The documents as one text of lowercase a-z and single spaces."""
    return _NOT_A_TO_Z.sub(" ", " ".join(docs).lower()).strip()


def text8_split(text: str, split: str) -> str:
    """The `split` part (train, valid or test) of a filtered text: 90% / 5% / 5% of its characters."""
    low, high = SPLIT_FRACTIONS[split]
    return text[int(low * len(text)):int(high * len(text))]
