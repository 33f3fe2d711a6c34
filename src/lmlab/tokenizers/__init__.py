"""Tokenizers. Every tokenizer has the same small interface:

    tok.encode(text) -> list[int]        tok.decode(ids) -> str
    (midi: encode(MIDI path/bytes/score, composer=...) -> list[int]; decode(ids) -> symusic Score)
    tok.vocab_size: int                  tok.eos_token_id: int | None
    tok.save(directory)                  # writes tokenizer.json (+ family extras)

`load_tokenizer(directory)` reads `tokenizer.json` and dispatches on its "kind" field.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from lmlab.errors import TokenizerError

# tokenizer.json "kind" -> (module, class) with a `load(directory)` classmethod. A literal dict.
KINDS = {
    "byte_bpe": ("lmlab.tokenizers.byte_bpe", "ByteBPETokenizer"),
    "chars": ("lmlab.tokenizers.chars", "CharTokenizer"),
    "fastai_words": ("lmlab.tokenizers.fastai_words", "FastaiWordTokenizer"),
    "words": ("lmlab.tokenizers.words", "WordTokenizer"),
    "wordpiece": ("lmlab.tokenizers.wordpiece", "WordPieceTokenizer"),
    "word_chars": ("lmlab.tokenizers.word_chars", "WordCharTokenizer"),  # ELMo: words in, characters out
    "midi": ("lmlab.tokenizers.midi", "MidiTokenizer"),  # MIDI in, a symusic Score out
    "parallel_words": ("lmlab.tokenizers.parallel_words", "ParallelWordTokenizer"),  # CoVe: two vocabularies
}


def load_tokenizer(directory: str | Path):
    """The tokenizer saved in `directory`, or None when it holds none."""
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.exists():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TokenizerError(f"{path}: not a readable JSON tokenizer file ({e})") from None
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if not isinstance(kind, str) or kind not in KINDS:
        raise TokenizerError(f"{path}: unknown tokenizer kind {kind!r}; expected {', '.join(KINDS)}")
    module, name = KINDS[kind]
    return getattr(importlib.import_module(module), name).load(directory)
