"""Tokenizers. Every tokenizer has the same small interface:

    tok.encode(text) -> list[int]        tok.decode(ids) -> str
    tok.vocab_size: int                  tok.eos_token_id: int | None
    tok.save(directory)                  # writes tokenizer.json (+ family extras)

`load_tokenizer(directory)` reads `tokenizer.json` and dispatches on its "kind" field.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.errors import TokenizerError


def load_tokenizer(directory: str | Path):
    """The tokenizer saved in `directory`, or None when it holds none."""
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.exists():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not a readable JSON tokenizer file ({e})") from None
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "byte_bpe":
        from lmlab.tokenizers.byte_bpe import ByteBPETokenizer

        return ByteBPETokenizer.load(directory)
    if kind == "chars":
        from lmlab.tokenizers.chars import CharTokenizer

        return CharTokenizer.load(directory)
    if kind == "words":
        from lmlab.tokenizers.words import WordTokenizer

        return WordTokenizer.load(directory)
    if kind == "wordpiece":
        from lmlab.tokenizers.wordpiece import WordPieceTokenizer

        return WordPieceTokenizer.load(directory)
    raise TokenizerError(f"{path}: unknown tokenizer kind {kind!r}; expected byte_bpe, chars, words "
                         f"or wordpiece")
