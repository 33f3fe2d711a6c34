"""Music pieces -> token shards, tokenized once and cached (the music twin of `prepare.prepare_tokens`).

`prepare_music(source, tokenizer)` returns {split: Shard}: each piece of the split encoded with its
composer label (`tokenizer.encode(path, composer=...)`: conditioning prefix, then events) and
followed by the tokenizer's `<eos>`, in listing order. Shards are cached under a key hashing the
format version, the source's fingerprint (music21 version or the folder's file paths, sizes and
mtimes), the split, `max_pieces` and every byte of the saved tokenizer, as text shards are.

Augmentation (transposition, tempo stretch) happens when a batch is drawn, not here: a shard holds
each piece once, as written.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from lmlab.data.corpora import cache_dir as default_cache_dir
from lmlab.data.corpora import is_builtin
from lmlab.data.music import composers_of, music_fingerprint, read_pieces
from lmlab.data.prepare import check_length, tokenizer_digest
from lmlab.data.shards import Shard, open_shard, write_shard
from lmlab.errors import DataError, LmlabError

CACHE_VERSION = 1


def encode_pieces(pieces, tokenizer, progress: bool = False, desc: str = "tokenize") -> np.ndarray:
    """All pieces' ids as one int64 array, each piece followed by `<eos>`."""
    known = set(tokenizer.composers)
    unknown = [c for c in composers_of(pieces) if c not in known]
    if unknown:
        where = next(p.name for p in pieces if p.composer == unknown[0])
        raise DataError(f"composer label {unknown[0]!r} (of {where}) is not one of the tokenizer's composers "
                        f"({', '.join(tokenizer.composers)}); build it with MidiTokenizer(composers=...)")
    from tqdm import tqdm

    parts = []
    for piece in tqdm(pieces, desc=desc, unit="piece", disable=not progress):
        try:
            ids = tokenizer.encode(piece.path, composer=piece.composer)
        except LmlabError as e:
            raise DataError(f"{piece.name}: {e}") from None
        parts.append(np.asarray(ids + [tokenizer.eos_token_id], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _key(source: str, split: str, digest: str, max_pieces: int | None) -> str:
    ident = {"version": CACHE_VERSION, "source": music_fingerprint(source, max_pieces), "split": split,
             "tokenizer": digest}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def prepare_music(source: str, tokenizer, cache_dir: str | Path | None = None, *,
                  splits: tuple[str, ...] = ("train", "valid"), seq_len: int | None = None,
                  max_pieces: int | None = None, progress: bool = True) -> dict[str, Shard]:
    """{split: Shard} of a music source (builtin:NAME or a folder of MIDI files), cached.

    `cache_dir` defaults to $LMLAB_CACHE/shards. With `seq_len`, every split must hold at least
    seq_len + 1 tokens. `max_pieces` keeps the first pieces of a built-in (quick checks).
    """
    if getattr(tokenizer, "kind", None) != "midi":
        kind = getattr(tokenizer, "kind", None)
        raise DataError(f"{source} is music: it needs a midi tokenizer, got a {kind!r} tokenizer")
    source = str(source)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "shards"
    digest = tokenizer_digest(tokenizer)
    name = source[len("builtin:"):] if is_builtin(source) else Path(source).name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:40] or "music"
    out: dict[str, Shard] = {}
    for split in splits:
        path = cache / f"{slug}-{split}-{_key(source, split, digest, max_pieces)[:24]}.bin"
        shard = None
        if path.exists():
            try:
                shard = open_shard(path, verify=True)
            except DataError:
                shard = None  # damaged: rebuilt below
        if shard is None:
            pieces = read_pieces(source, split, max_pieces=max_pieces, progress=progress)
            ids = encode_pieces(pieces, tokenizer, progress=progress, desc=f"tokenize {split}")
            meta = {"source": source, "split": split, "pieces": len(pieces), "tokenizer_sha256": digest}
            write_shard(path, ids, tokenizer.vocab_size, meta=meta)
            shard = open_shard(path, verify=False)
        if seq_len is not None:
            check_length(shard, seq_len, source, split)
        out[split] = shard
    return out
