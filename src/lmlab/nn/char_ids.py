"""ELMo's character ids (Peters et al. 2018, §3.4; bilm-tf `UnicodeCharsVocabulary` and `Batcher`):
what the character CNN reads, shared by the tokenizer that makes them and the model that spells
its word vocabulary with them.

A token is its UTF-8 bytes cut to `max_chars - 2` (48 for 50; a longer token is truncated, as in
bilm-tf, possibly inside a multi-byte character), framed by begin- and end-of-word marks and
padded to `max_chars`:

    [BOW, b_1, ..., b_n, EOW, PAD, ..., PAD]        byte b -> b + 1

The sentence boundaries `<S>` and `</S>` are whole tokens, `[BOW, BOS, EOW, PAD ...]` and
`[BOW, EOS, EOW, PAD ...]`. bilm-tf numbers bytes 0-255 and the marks 256-260 and then adds 1 to
every id, so that 0 is free for "no token here": a padding position is a row of zeros. The ids
below already include that +1, so the character table has N_CHARS = 262 rows, row 0 the zero row
of padding tokens.
"""

from __future__ import annotations

import numpy as np

BOS, EOS, BOW, EOW, PAD = 257, 258, 259, 260, 261  # bilm-tf's 256..260, shifted by one
N_CHARS = 262  # ids 0 (padding token) .. 261
BOS_TOKEN, EOS_TOKEN = "<S>", "</S>"


def spell(data: bytes, max_chars: int) -> list[int]:
    """The character ids of one token given as bytes (cut to max_chars - 2 bytes)."""
    body = [b + 1 for b in data[:max_chars - 2]]
    ids = [BOW, *body, EOW]
    return ids + [PAD] * (max_chars - len(ids))


def boundary(token: str, max_chars: int) -> list[int]:
    """The row of `<S>` or `</S>`."""
    mark = BOS if token == BOS_TOKEN else EOS
    return [BOW, mark, EOW] + [PAD] * (max_chars - 3)


def spell_numbers(n: int, max_chars: int) -> np.ndarray:
    """(n, max_chars) int16: row i spells the decimal digits of i, a stand-in spelling for word ids
    whose words are unknown (a model not yet given its tokenizer's vocabulary)."""
    ids = np.arange(n, dtype=np.int64)
    digits = np.ones(n, dtype=np.int64)  # decimal digits of each id, counted in integers
    for k in range(1, len(str(max(n - 1, 0)))):
        digits += ids >= 10 ** k
    kept = np.minimum(digits, max_chars - 2)  # a long number is cut like any long token
    width = int(kept.max()) if n else 1
    out = np.full((n, max_chars), PAD, dtype=np.int16)
    out[:, 0] = BOW
    for k in range(width):  # digit k (from the left) of every id that has one
        has = kept > k
        place = 10 ** (digits[has] - 1 - k)
        out[np.flatnonzero(has), 1 + k] = (ids[has] // place) % 10 + ord("0") + 1
    out[np.arange(n), 1 + kept] = EOW
    return out
