"""Words in; word ids for a softmax and character ids for a character encoder out: ELMo's tokenizer
(Peters et al. 2018, §3.4; bilm-tf `Vocabulary`, `UnicodeCharsVocabulary` and `Batcher`).

Text is split on whitespace, one sentence per line. `encode` gives the ids of the word vocabulary
(what the biLM's softmax predicts), each non-blank line as `<S> w_1 ... w_n </S>`, as bilm-tf's
`Vocabulary.encode` frames a sentence; unseen words map to `<unk>`. `char_ids(words)` gives what
the model reads: one row of `max_chars` character ids per token, the sentence framed by the `<S>`
and `</S>` rows (`lmlab.nn.char_ids`). A word is spelled from its own UTF-8 bytes, seen in
training or not; a word longer than max_chars - 2 bytes is cut (bilm-tf's rule, not an error).
`char_table()` spells the whole vocabulary, row i for word id i (`<S>` and `</S>` get their
boundary rows), which is how a model spells word ids.

Fixed layout, stored in `tokenizer.json` with `max_chars`: id 0 is `<S>`, id 1 `</S>` (the eos
token: the data pipeline's sentence separator), id 2 `<unk>`, then the words by count
(descending) then by the word itself, then special tokens added later. An empty vocabulary is
allowed: a tokenizer of characters only (the released ELMo weights come without their softmax, so
there is no word vocabulary to predict), whose `encode` refuses and whose `char_ids` works.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lmlab.errors import TokenizerError
from lmlab.nn.char_ids import BOS_TOKEN, EOS_TOKEN, boundary, spell
from lmlab.tokenizers.common import (
    SpecListVocab,
    read_kind,
    specials_regex,
    string_list,
    unique_ids,
    write_text,
)

UNK = "<unk>"
SPECIALS = (BOS_TOKEN, EOS_TOKEN, UNK)
MAX_CHARS = 50  # bilm-tf's max_characters_per_token


class WordCharTokenizer(SpecListVocab):
    """Words <-> ids (`<S>` = 0, `</S>` = 1, `<unk>` = 2) and words -> character ids."""

    kind = "word_chars"
    one_line_specials = True

    def __init__(self, tokens: Sequence[str], special_tokens: Sequence[str] = SPECIALS,
                 max_chars: int = MAX_CHARS, source: str = "vocabulary"):
        if type(max_chars) is not int or max_chars < 3:
            raise TokenizerError(f"{source}: max_chars must be an integer >= 3 (<S> takes 3), "
                                 f"got {max_chars!r}")
        self.max_chars = max_chars
        self._tokens = list(tokens)
        self._ids = unique_ids(self._tokens, source)
        self._special = list(special_tokens) if self._tokens else []
        if self._tokens and self._tokens[:3] != list(SPECIALS):
            raise TokenizerError(f"{source}: the vocabulary must start with {', '.join(SPECIALS)}, "
                                 f"got {self._tokens[:3]}")
        for t in self._special:
            if t not in self._ids:
                raise TokenizerError(f"{source}: special token {t!r} is not in the vocabulary")
        for t in self._tokens:  # special tokens added later may hold spaces: they are matched whole
            if t not in self._special and (not t or len(t.split()) != 1 or t.strip() != t):
                raise TokenizerError(f"{source}: vocabulary entry {t!r} is not a single word")
        self._rebuild()

    @classmethod
    def train(cls, texts: Iterable[str], max_size: int | None = None, min_count: int = 1,
              max_chars: int = MAX_CHARS) -> WordCharTokenizer:
        """Words seen at least `min_count` times; `max_size` caps the vocabulary, specials included."""
        if max_size is not None and max_size < len(SPECIALS):
            raise TokenizerError(f"max_size={max_size} is too small: {', '.join(SPECIALS)} alone take "
                                 f"{len(SPECIALS)} ids")
        counts: Counter[str] = Counter()
        for text in [texts] if isinstance(texts, str) else texts:
            counts.update(text.split())
        for special in SPECIALS:  # PTB spells <unk> out: it is the special, not a word
            counts.pop(special, None)
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(SPECIALS)]
        return cls([*SPECIALS, *words], max_chars=max_chars)

    # ---- word ids ------------------------------------------------------------------------------
    @property
    def eos_token_id(self) -> int | None:
        return self._ids.get(EOS_TOKEN)

    @property
    def bos_token_id(self) -> int | None:
        return self._ids.get(BOS_TOKEN)

    @property
    def unk_token_id(self) -> int | None:
        return self._ids.get(UNK)

    def encode(self, text: str) -> list[int]:
        if not self._tokens:
            raise TokenizerError("this tokenizer has no word vocabulary (characters only); use "
                                 "char_ids(words) for the model's input")
        ids, get = [], self._ids.get
        bos, eos, unk = self._ids[BOS_TOKEN], self._ids[EOS_TOKEN], self._ids[UNK]
        for line in text.split("\n"):
            words = self._words(line)
            if words:
                ids += [bos, *(get(w, unk) for w in words), eos]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        out, line = [], []
        for i in self._checked_ids(ids):
            token = self._tokens[i]
            if token == EOS_TOKEN:
                out.append(" ".join(line) + "\n")
                line = []
            elif token != BOS_TOKEN:
                line.append(token)
        return "".join(out) + " ".join(line)

    def _words(self, line: str) -> list[str]:
        if self._split is None:
            return line.split()
        words = []
        for k, piece in enumerate(self._split(line)):  # specials at the odd positions, kept whole
            words += [piece] if k % 2 else piece.split()
        return words

    def _rebuild(self) -> None:
        pattern = specials_regex(self._special)  # special tokens are matched whole, even inside a word
        self._split = pattern.split if pattern else None

    # ---- character ids ---------------------------------------------------------------------------
    def spell_word(self, word: str) -> list[int]:
        """One token's character ids (max_chars of them); `<S>` and `</S>` are the boundary rows."""
        if word in (BOS_TOKEN, EOS_TOKEN):
            return boundary(word, self.max_chars)
        try:
            data = word.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(f"word {word!r} is not valid Unicode: {word[e.start]!r} at position "
                                 f"{e.start} has no UTF-8 form") from None
        return spell(data, self.max_chars)

    def char_ids(self, words: Sequence[str]) -> np.ndarray:
        """(len(words) + 2, max_chars) int64: `<S>`, each word, `</S>` (what the model reads)."""
        rows = [boundary(BOS_TOKEN, self.max_chars), *(self.spell_word(w) for w in words),
                boundary(EOS_TOKEN, self.max_chars)]
        return np.asarray(rows, dtype=np.int64)

    def char_table(self) -> np.ndarray:
        """(vocab_size, max_chars) int16: row i spells word id i."""
        table = np.zeros((len(self._tokens), self.max_chars), dtype=np.int16)
        for i, token in enumerate(self._tokens):
            table[i] = self.spell_word(token)
        return table

    # ---- files -----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        spec = {"kind": self.kind, "max_chars": self.max_chars, "tokens": self._tokens,
                "special_tokens": self._special}
        write_text(d / "tokenizer.json", json.dumps(spec, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> WordCharTokenizer:
        path = Path(directory) / "tokenizer.json"
        spec = read_kind(path, cls.kind)
        return cls(string_list(spec.get("tokens"), "tokens", path),
                   string_list(spec.get("special_tokens"), "special_tokens", path), spec.get("max_chars"),
                   source=str(path))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, max_chars={self.max_chars})"
