"""What lmlab's tokenizers share: the list vocabulary, tokenizer.json files, text checks, and the
cap on the length of the pieces the subword trainers see.

`ListVocab` is the bookkeeping of a vocabulary kept as a plain list (id = position) with a list
of special tokens: chars, words and wordpiece; `SpecListVocab` adds the tokenizer.json of chars and
words. byte_bpe keeps a token -> id dict with possible holes and uses only the functions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmlab.errors import TokenizerError
from lmlab.paths import check_file_target


class ListVocab:
    """`_tokens` (id -> token), `_ids` (token -> id) and `_special`, set by the subclass.

    The subclass builds what it derives from them in `_rebuild`, called after special tokens are
    added. `one_line_specials` forbids newlines in added special tokens where a token must stay on
    one line (a newline is `<eos>` in words; vocab.txt holds one token per line).
    """

    _tokens: list[str]
    _ids: dict[str, int]
    _special: list[str]
    one_line_specials = False

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def special_tokens(self) -> list[str]:
        return list(self._special)

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
            check_special(tok, self.one_line_specials)
        for tok in tokens:
            if tok not in self._ids:
                self._ids[tok] = len(self._tokens)
                self._tokens.append(tok)
            if tok not in self._special:
                self._special.append(tok)
        self._rebuild()
        return [self._ids[t] for t in tokens]

    def _rebuild(self) -> None:
        raise NotImplementedError

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        """`ids` as a list (tensors and arrays too), each checked to be in the vocabulary."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        n = len(self._tokens)
        if ids and not (0 <= min(ids) and max(ids) < n):
            bad = next(i for i in ids if not 0 <= i < n)
            raise TokenizerError(f"token id {bad} is not in the vocabulary (size {n})")
        return ids


def unique_ids(tokens: list[str], source: str) -> dict[str, int]:
    """token -> id of a vocabulary list in which every token must appear once."""
    ids = {t: i for i, t in enumerate(tokens)}
    if len(ids) != len(tokens):
        dup = next(t for t in tokens if tokens.count(t) > 1)
        raise TokenizerError(f"{source}: token {dup!r} appears twice in the vocabulary")
    return ids


def specials_regex(specials: Sequence[str]) -> re.Pattern | None:
    """A pattern whose `split` keeps each special token whole at the odd positions; None if none."""
    # Longest first, so a special that contains another one wins.
    alts = sorted(specials, key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, alts)) + ")") if alts else None


def check_special(tok, one_line: bool = False) -> None:
    """A special token to add: a non-empty, non-blank string (and without newlines if `one_line`)."""
    if one_line:
        if not isinstance(tok, str) or not tok or tok.isspace() or "\n" in tok:
            raise TokenizerError(f"special token {tok!r} must be a non-empty string without newlines")
    elif not isinstance(tok, str) or not tok or tok.isspace():
        raise TokenizerError(f"special token {tok!r} must be a non-empty, non-blank string")


# ---- files ------------------------------------------------------------------------------------
def write_text(path: Path, text: str) -> None:
    path = check_file_target(path)  # never renamed over a device, FIFO or folder
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")  # never leave a half-written file
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TokenizerError(f"{path}: not a readable JSON file ({e})") from None


def read_kind(path: Path, kind: str) -> dict:
    """An lmlab tokenizer.json, which must be a JSON object of `kind`."""
    spec = read_json(path)
    if not isinstance(spec, dict) or spec.get("kind") != kind:
        raise TokenizerError(f"{path}: expected a JSON object with \"kind\": \"{kind}\"")
    return spec


def string_list(value, field: str, path: Path) -> list[str]:
    """`value`, the JSON field `field` of `path`, checked to be a list of non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise TokenizerError(f"{path}: '{field}' must be a list of non-empty strings")
    return value


class SpecListVocab(ListVocab):
    """A ListVocab stored as nothing but its list and special tokens in tokenizer.json (chars, words).

    The subclass sets `kind` and takes `(tokens, special_tokens, source=...)` in its constructor.
    """

    kind: str

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        spec = {"kind": self.kind, "tokens": self._tokens, "special_tokens": self._special}
        write_text(d / "tokenizer.json", json.dumps(spec, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, directory: str | Path):
        path = Path(directory) / "tokenizer.json"
        spec = read_kind(path, cls.kind)
        return cls(string_list(spec.get("tokens"), "tokens", path),
                   string_list(spec.get("special_tokens"), "special_tokens", path), source=str(path))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={self._special})"


# ---- text given to the subword trainers -------------------------------------------------------
# The BPE and WordPiece trainers (Rust `tokenizers`) re-scan a whole pre-token at every merge
# that touches it: a 1 MB line without whitespace, one pre-token, took minutes and gigabytes.
# Training therefore sees no run of non-space (or of space) characters longer than
# MAX_TRAIN_RUN: a longer run is cut into pieces of MAX_TRAIN_RUN characters (the last one
# shorter), each counted as text of its own; no character is dropped. This is BERT's limit on a
# word (max_input_chars_per_word = 100: longer words encode as [UNK] anyway); like
# SentencePiece's limit on a training sentence, it is a training-time cap only. Encoding is
# unchanged: byte_bpe encodes any run whole (linear time, lossless), WordPiece longer words as [UNK].
MAX_TRAIN_RUN = 100
_LONG_RUN = re.compile(r"(?<!\S)\S{%d,}|(?<!\s)\s{%d,}" % (MAX_TRAIN_RUN + 1, MAX_TRAIN_RUN + 1))


def training_pieces(texts: Iterable[str], cap: int = MAX_TRAIN_RUN):
    """`texts` as given to a trainer: each text whole, or cut inside every run of more than `cap`
    non-space (or space) characters at every `cap` characters of the run (nothing dropped)."""
    pattern = _LONG_RUN if cap == MAX_TRAIN_RUN else \
        re.compile(r"(?<!\S)\S{%d,}|(?<!\s)\s{%d,}" % (cap + 1, cap + 1))
    for text in texts:
        start = 0
        # The lookbehinds make a match start only where a run starts: one pass, linear time.
        for m in pattern.finditer(text):
            for cut in range(m.start() + cap, m.end(), cap):
                yield text[start:cut]
                start = cut
        yield text[start:]


# ---- text given to the Rust tokenizers --------------------------------------------------------
def surrogate_at(text: str) -> int | None:
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return e.start


def text_error(text) -> Exception:
    """The error for a text the Rust tokenizer refused: not a str, or a str with no UTF-8 form."""
    if not isinstance(text, str):
        return TypeError(f"encode expects str, got {type(text).__name__}")
    pos = surrogate_at(text)
    return TokenizerError(f"text is not valid Unicode: lone surrogate {text[pos]!r} at position {pos} "
                          f"has no UTF-8 form")
