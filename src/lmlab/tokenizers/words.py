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

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmlab.errors import TokenizerError

UNK, EOS = "<unk>", "<eos>"


class WordTokenizer:
    """Words <-> ids; `<unk>` = 0, `<eos>` = 1 (one per newline)."""

    kind = "words"

    def __init__(self, tokens: Sequence[str], special_tokens: Sequence[str] = (UNK, EOS),
                 source: str = "vocabulary"):
        self._tokens = list(tokens)
        self._ids = {t: i for i, t in enumerate(self._tokens)}
        if len(self._ids) != len(self._tokens):
            dup = next(t for t in self._tokens if self._tokens.count(t) > 1)
            raise TokenizerError(f"{source}: token {dup!r} appears twice in the vocabulary")
        self._special = list(special_tokens)
        for t in (UNK, EOS, *self._special):  # both are needed: encode emits them
            if t not in self._ids:
                raise TokenizerError(f"{source}: special token {t!r} is not in the vocabulary")
        for t in self._tokens:
            if t not in self._special and (not t or len(t.split()) != 1 or t.strip() != t):
                raise TokenizerError(f"{source}: vocabulary entry {t!r} is not a single word")
        self._compile()

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
    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def eos_token_id(self) -> int:
        return self._ids[EOS]

    @property
    def unk_token_id(self) -> int:
        return self._ids[UNK]

    @property
    def special_tokens(self) -> list[str]:
        return list(self._special)

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
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # tensors and arrays too
        n, eos = len(self._tokens), self._ids[EOS]
        if ids and not (0 <= min(ids) and max(ids) < n):
            bad = next(i for i in ids if not 0 <= i < n)
            raise TokenizerError(f"token id {bad} is not in the vocabulary (size {n})")
        out, line_start = [], True
        for i in ids:
            if i == eos:
                out.append("\n")
                line_start = True
            else:
                out.append(self._tokens[i] if line_start else " " + self._tokens[i])
                line_start = False
        return "".join(out)

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < len(self._tokens):
            raise TokenizerError(f"token id {token_id} is not in the vocabulary (size {self.vocab_size})")
        return self._tokens[token_id]

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Register `tokens` as special (matched whole in text); new ones get the next free ids."""
        tokens = list(tokens)
        for tok in tokens:  # check all first: a bad one must leave the tokenizer unchanged
            if not isinstance(tok, str) or not tok or tok.isspace() or "\n" in tok:
                raise TokenizerError(f"special token {tok!r} must be a non-empty string without newlines")
        out = []
        for tok in tokens:
            if tok not in self._ids:
                self._ids[tok] = len(self._tokens)
                self._tokens.append(tok)
            if tok not in self._special:
                self._special.append(tok)
            out.append(self._ids[tok])
        self._compile()
        return out

    # ---- files --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        spec = {"kind": self.kind, "tokens": self._tokens, "special_tokens": self._special}
        tmp = d / f"tokenizer.json.tmp-{os.getpid()}"  # never leave a half-written file
        tmp.write_text(json.dumps(spec, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, d / "tokenizer.json")

    @classmethod
    def load(cls, directory: str | Path) -> WordTokenizer:
        path = Path(directory) / "tokenizer.json"
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TokenizerError(f"{path}: file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"{path}: not a readable JSON file ({e})") from None
        if not isinstance(spec, dict) or spec.get("kind") != cls.kind:
            raise TokenizerError(f"{path}: expected a JSON object with \"kind\": \"{cls.kind}\"")
        for field in ("tokens", "special_tokens"):
            value = spec.get(field)
            if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
                raise TokenizerError(f"{path}: '{field}' must be a list of non-empty strings")
        return cls(spec["tokens"], spec["special_tokens"], source=str(path))

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, special_tokens={self._special})"

    def _compile(self) -> None:
        # Longest first, so a special that contains another one wins.
        alts = sorted(self._special, key=len, reverse=True)
        pattern = re.compile("(" + "|".join(map(re.escape, alts)) + ")") if alts else None
        self._split = pattern.split if pattern else (lambda text: [text])
