"""Character vocabulary, for character-level models (Al-Rfou et al. 2018) and char inputs.

One id per Unicode code point seen in training. Fixed layout, stored in `tokenizer.json`:
id 0 is `<unk>` (every unseen character maps to it), id 1 is `<eos>` (end of document; `encode`
never adds it, the data pipeline does), then the characters in code-point order, then special
tokens added later. Special tokens are matched whole when they appear in text, so
`decode(encode(s)) == s` for any text made of known characters and special tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from lmlab.errors import TokenizerError
from lmlab.tokenizers.common import SpecListVocab, specials_regex, unique_ids

UNK, EOS = "<unk>", "<eos>"


class CharTokenizer(SpecListVocab):
    """Characters <-> ids; `<unk>` = 0, `<eos>` = 1."""

    kind = "chars"

    def __init__(self, tokens: Sequence[str], special_tokens: Sequence[str] = (UNK, EOS),
                 source: str = "vocabulary"):
        self._tokens = list(tokens)
        self._ids = unique_ids(self._tokens, source)
        self._special = list(special_tokens)
        for t in self._special:
            if t not in self._ids:
                raise TokenizerError(f"{source}: special token {t!r} is not in the vocabulary")
        for t in self._tokens:
            if t not in self._special and len(t) != 1:
                raise TokenizerError(f"{source}: vocabulary entry {t!r} is neither one character nor special")
        self._rebuild()

    @classmethod
    def train(cls, texts: Iterable[str], min_count: int = 1, extra: Iterable[str] = ()) -> CharTokenizer:
        """Every character seen at least `min_count` times, plus the characters in `extra`."""
        if isinstance(texts, str):
            texts = [texts]
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        chars = {c for c, n in counts.items() if n >= min_count} | set(extra)
        bad = [c for c in chars if len(c) != 1]
        if bad:
            raise TokenizerError(f"extra entry {bad[0]!r} is not a single character")
        return cls([UNK, EOS, *sorted(chars)])

    # ---- the interface ------------------------------------------------------------------------
    # (vocab_size, special_tokens, token_to_id, id_to_token, add_special_tokens: ListVocab;
    # save, load: SpecListVocab)
    @property
    def eos_token_id(self) -> int | None:
        return self._ids[EOS] if EOS in self._ids else None

    @property
    def unk_token_id(self) -> int | None:
        return self._ids[UNK] if UNK in self._ids else None

    def encode(self, text: str) -> list[int]:
        ids, unk, get = [], self.unk_token_id, self._ids.get
        # re.split with a capturing group keeps the specials at odd positions.
        for k, piece in enumerate(self._split(text) if self._split else [text]):
            if k % 2:
                ids.append(self._ids[piece])
                continue
            part = [get(c, unk) for c in piece]
            if unk is None and None in part:  # only a hand-made vocabulary lacks <unk>
                raise TokenizerError(f"character {piece[part.index(None)]!r} is not in the vocabulary "
                                     f"and there is no {UNK}")
            ids.extend(part)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return "".join([self._tokens[i] for i in self._checked_ids(ids)])

    def _rebuild(self) -> None:
        pattern = specials_regex(self._special)
        self._split = pattern.split if pattern else None

