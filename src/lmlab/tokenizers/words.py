"""Whitespace word vocabulary, the setting of word-level LMs (PTB, WikiText) and CoVe/ELMo inputs.

Text is split on whitespace; every newline becomes `<eos>`, the convention of Mikolov's Penn
Treebank LM data, where each line ends with `<eos>` (a text without a final newline gets no
final `<eos>`, so prompts stay open). Unseen words map to `<unk>`.

Fixed layout, stored in `tokenizer.json`: id 0 is `<unk>`, id 1 is `<eos>`, then the words by
count (descending) then by the word itself, then special tokens added later. `decode` joins
words with single spaces and turns `<eos>` back into "\\n", so for in-vocabulary text
`decode(encode(s))` is `s` with runs of spaces/tabs collapsed and line ends stripped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from lmlab.errors import TokenizerError
from lmlab.tokenizers.common import SpecListVocab, specials_regex, unique_ids

UNK, EOS = "<unk>", "<eos>"


class WordTokenizer(SpecListVocab):
    """Words <-> ids; `<unk>` = 0, `<eos>` = 1 (one per newline)."""

    kind = "words"
    one_line_specials = True  # a newline is <eos>
    unk_token, eos_token = UNK, EOS  # (fastai_words: xxunk, xxeos)

    def __init__(self, tokens: Sequence[str], special_tokens: Sequence[str] = (UNK, EOS),
                 source: str = "vocabulary"):
        self._tokens = list(tokens)
        self._ids = unique_ids(self._tokens, source)
        self._special = list(special_tokens)
        for t in (self.unk_token, self.eos_token, *self._special):  # both are needed: encode emits them
            if t not in self._ids:
                raise TokenizerError(f"{source}: special token {t!r} is not in the vocabulary")
        for t in self._tokens:
            if t not in self._special and (not t or len(t.split()) != 1 or t.strip() != t):
                raise TokenizerError(f"{source}: vocabulary entry {t!r} is not a single word")
        self._rebuild()

    @classmethod
    def train(cls, texts: Iterable[str], max_size: int | None = None, min_count: int = 1) -> WordTokenizer:
        """Words seen at least `min_count` times; `max_size` caps the vocabulary, specials included."""
        if max_size is not None and max_size < 2:
            raise TokenizerError(f"max_size={max_size} is too small: {UNK} and {EOS} alone take 2 ids")
        if isinstance(texts, str):
            texts = [texts]
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text.split())  # split() also splits on newlines
        for special in (UNK, EOS):  # PTB text spells <unk> out; it is the special, not a word
            counts.pop(special, None)
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - 2]
        return cls([UNK, EOS, *words])

    # ---- the interface ------------------------------------------------------------------------
    # (vocab_size, special_tokens, token_to_id, id_to_token, add_special_tokens: ListVocab;
    # save, load: SpecListVocab)
    @property
    def eos_token_id(self) -> int:
        return self._ids[self.eos_token]

    @property
    def unk_token_id(self) -> int:
        return self._ids[self.unk_token]

    def words(self, text: str) -> list[str]:
        """The words of `text` as encode sees them, before the vocabulary (newlines dropped)."""
        return text.split()

    def add_words(self, words: Sequence[str]) -> list[int]:
        """Append ordinary words the vocabulary lacks (ULMFiT's target-domain words); their ids."""
        for w in words:
            if not isinstance(w, str) or len(w.split()) != 1 or w.strip() != w:
                raise TokenizerError(f"word {w!r} is not a single word")
        for w in words:
            if w not in self._ids:
                self._ids[w] = len(self._tokens)
                self._tokens.append(w)
        return [self._ids[w] for w in words]

    def encode(self, text: str) -> list[int]:
        ids, unk, eos, get = [], self._ids[UNK], self._ids[EOS], self._ids.get
        # re.split with a capturing group keeps the specials at odd positions.
        for k, piece in enumerate(self._split(text)):
            if k % 2:
                ids.append(self._ids[piece])
                continue
            for j, line in enumerate(piece.split("\n")):
                if j:
                    ids.append(eos)
                ids.extend([get(w, unk) for w in line.split()])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        eos = self._ids[EOS]
        out, line_start = [], True
        for i in self._checked_ids(ids):
            if i == eos:
                out.append("\n")
                line_start = True
            else:
                out.append(self._tokens[i] if line_start else " " + self._tokens[i])
                line_start = False
        return "".join(out)

    def _rebuild(self) -> None:
        pattern = specials_regex(self._special)
        self._split = pattern.split if pattern else (lambda text: [text])
