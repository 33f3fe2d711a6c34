"""Character vocabulary, for character-level models (Al-Rfou et al. 2018) and char inputs.

One id per Unicode code point seen in training. Fixed layout, stored in `tokenizer.json`:
id 0 is `<unk>` (every unseen character maps to it), id 1 is `<eos>` (end of document; `encode`
never adds it, the data pipeline does), then the characters in code-point order, then special
tokens added later. Special tokens are matched whole when they appear in text, so
`decode(encode(s)) == s` for any text made of known characters and special tokens.
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


class CharTokenizer:
    """Characters <-> ids; `<unk>` = 0, `<eos>` = 1."""

    kind = "chars"

    def __init__(self, tokens: Sequence[str], special_tokens: Sequence[str] = (UNK, EOS),
                 source: str = "vocabulary"):
        self._tokens = list(tokens)
        self._ids = {t: i for i, t in enumerate(self._tokens)}
        if len(self._ids) != len(self._tokens):
            dup = next(t for t in self._tokens if self._tokens.count(t) > 1)
            raise TokenizerError(f"{source}: token {dup!r} appears twice in the vocabulary")
        self._special = list(special_tokens)
        for t in self._special:
            if t not in self._ids:
                raise TokenizerError(f"{source}: special token {t!r} is not in the vocabulary")
        for t in self._tokens:
            if t not in self._special and len(t) != 1:
                raise TokenizerError(f"{source}: vocabulary entry {t!r} is neither one character nor special")
        self._compile()

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
    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def eos_token_id(self) -> int | None:
        return self._ids[EOS] if EOS in self._ids else None

    @property
    def unk_token_id(self) -> int | None:
        return self._ids[UNK] if UNK in self._ids else None

    @property
    def special_tokens(self) -> list[str]:
        return list(self._special)

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
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # tensors and arrays too
        n = len(self._tokens)
        if ids and not (0 <= min(ids) and max(ids) < n):
            bad = next(i for i in ids if not 0 <= i < n)
            raise TokenizerError(f"token id {bad} is not in the vocabulary (size {n})")
        return "".join([self._tokens[i] for i in ids])

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
            if not isinstance(tok, str) or not tok or tok.isspace():
                raise TokenizerError(f"special token {tok!r} must be a non-empty, non-blank string")
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
    def load(cls, directory: str | Path) -> CharTokenizer:
        path = Path(directory) / "tokenizer.json"
        tokens, specials = _read_spec(path, cls.kind)
        return cls(tokens, specials, source=str(path))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, special_tokens={self._special})"

    def _compile(self) -> None:
        # Longest first, so a special that contains another one wins.
        alts = sorted(self._special, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, alts)) + ")").split if alts else None


def _read_spec(path: Path, kind: str) -> tuple[list[str], list[str]]:
    """(tokens, special_tokens) from an lmlab tokenizer.json of `kind`, checked."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(spec, dict) or spec.get("kind") != kind:
        raise TokenizerError(f"{path}: expected a JSON object with \"kind\": \"{kind}\"")
    for field in ("tokens", "special_tokens"):
        value = spec.get(field)
        if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
            raise TokenizerError(f"{path}: '{field}' must be a list of non-empty strings")
    return spec["tokens"], spec["special_tokens"]
