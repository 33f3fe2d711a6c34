"""Words of a translation model: a source vocabulary (rows of a fixed word-vector table, CoVe's GloVe
input) and a target vocabulary (the decoder's softmax), both from one word splitter.

Words: Penn-Treebank-like, the way GloVe's and the WMT systems' text was tokenized: punctuation is a
word of its own, English clitics ('s n't 're 've 'll 'd 'm) split off, hyphenated words, numbers with
separators and abbreviations with inner periods stay whole; letters are Unicode letters (German
umlauts, ß). "Wählen Sie Format - Zeichen." -> Wählen Sie Format - Zeichen .

Source ids: 0 `<pad>` (the zero vector), 1 `<unk>` (a word the vocabulary lacks: the zero vector too),
then the training words by count. Words are kept as written: the word-vector lookup applies the
vectors' own case rule (GloVe 6B is uncased: lmlab.data.word_vectors).
Target ids: 0 `<pad>`, 1 `<unk>`, 2 `<bos>` (the decoder's first input), 3 `<eos>` (its last
target), then the training words by count. `encode(text)` gives the target ids of a text (no
`<bos>`/`<eos>`), `decode(ids)` the words joined by spaces, `<pad>`, `<bos>` and `<eos>` left out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmlab.errors import TokenizerError
from lmlab.tokenizers.common import read_kind, string_list, unique_ids, write_text

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SOURCE_SPECIALS = (PAD, UNK)
TARGET_SPECIALS = (PAD, UNK, BOS, EOS)

_CLITIC = re.compile(r"(?i)(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_WORD = re.compile(r"(?i)n't|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.'’]\w+)*|\.\.\.|--|\S")


def split_words(text: str) -> list[str]:
    """Penn-Treebank-like words of `text` (see the module docstring)."""
    return _WORD.findall(_CLITIC.sub(r" \1", text))


def _vocabulary(counts: Counter, specials: Sequence[str], max_size: int | None) -> list[str]:
    words = sorted((w for w in counts if w not in specials), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max(0, max_size - len(specials))]
    return [*specials, *words]


class ParallelWordTokenizer:
    """Source words -> source ids, target words <-> target ids; see the module docstring."""

    kind = "parallel_words"

    def __init__(self, source: Sequence[str], target: Sequence[str], where: str = "vocabulary"):
        self.source_tokens, self.target_tokens = list(source), list(target)
        for name, tokens, specials in (("source", self.source_tokens, SOURCE_SPECIALS),
                                       ("target", self.target_tokens, TARGET_SPECIALS)):
            if tuple(tokens[:len(specials)]) != specials:
                raise TokenizerError(f"{where}: the {name} vocabulary must start with {', '.join(specials)}")
        self._source_ids = unique_ids(self.source_tokens, f"{where} (source)")
        self._target_ids = unique_ids(self.target_tokens, f"{where} (target)")

    @classmethod
    def train(cls, pairs: Iterable[tuple[str, str]], max_source: int | None = None,
              max_target: int | None = None) -> ParallelWordTokenizer:
        """Both vocabularies from (source, target) texts, most frequent words first; `max_*` caps
        the sizes, specials included."""
        for name, cap, specials in (("source", max_source, SOURCE_SPECIALS),
                                    ("target", max_target, TARGET_SPECIALS)):
            if cap is not None and (not isinstance(cap, int) or cap <= len(specials)):
                raise TokenizerError(f"the {name} vocabulary size must be more than its {len(specials)} "
                                     f"special tokens, got {cap!r}")
        src, tgt = Counter(), Counter()
        for s, t in pairs:
            src.update(split_words(s))
            tgt.update(split_words(t))
        return cls(_vocabulary(src, SOURCE_SPECIALS, max_source),
                   _vocabulary(tgt, TARGET_SPECIALS, max_target))

    # ---- sizes and special ids
    @property
    def vocab_size(self) -> int:
        return len(self.target_tokens)

    @property
    def source_vocab_size(self) -> int:
        return len(self.source_tokens)

    pad_token_id, unk_token_id, bos_token_id, eos_token_id = 0, 1, 2, 3

    @property
    def special_tokens(self) -> list[str]:
        return list(TARGET_SPECIALS)

    def token_to_id(self, token: str) -> int | None:
        return self._target_ids.get(token)

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < len(self.target_tokens):
            raise TokenizerError(f"token id {token_id} is not in the vocabulary (size {self.vocab_size})")
        return self.target_tokens[token_id]

    # ---- text
    def encode_source_words(self, words: Sequence[str]) -> list[int]:
        get = self._source_ids.get
        return [get(w, 1) for w in words]

    def source_words(self, text: str) -> list[str]:
        """The words of a source text, one per id of `encode_source`."""
        return split_words(text)

    def encode_source(self, text: str) -> list[int]:
        return self.encode_source_words(split_words(text))

    def encode(self, text: str) -> list[int]:
        """Target ids of `text` (no <bos>, no <eos>)."""
        get = self._target_ids.get
        return [get(w, 1) for w in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        n = len(self.target_tokens)
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise TokenizerError(f"token id {bad} is not in the vocabulary (size {n})")
        return " ".join(self.target_tokens[i] for i in ids if i not in (0, 2, 3))

    # ---- files
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        spec = {"kind": self.kind, "source": self.source_tokens, "target": self.target_tokens}
        write_text(d / "tokenizer.json", json.dumps(spec, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, directory: str | Path) -> ParallelWordTokenizer:
        path = Path(directory) / "tokenizer.json"
        spec = read_kind(path, cls.kind)
        return cls(string_list(spec.get("source"), "source", path),
                   string_list(spec.get("target"), "target", path), where=str(path))

    def __repr__(self) -> str:
        return f"ParallelWordTokenizer(source={self.source_vocab_size}, target={self.vocab_size})"
