"""Corpus -> token shards, tokenized once and cached; the checks that run before step 0.

`prepare_tokens(source, tokenizer, cache_dir)` returns {"train": Shard, "valid": Shard}. Each
split's documents are encoded and joined into one stream with the tokenizer's eos id after every
document (Mikolov's `<eos>` at each PTB line end, GPT-2's `<|endoftext|>` between documents);
a tokenizer without eos gets `encode("\\n")` there instead.

A shard is cached under a key hashing (format version, source fingerprint: package versions or
the sha256 of every file read, split, every byte of the saved tokenizer files), so a second run
with the same data and tokenizer reads nothing but the shards (file hashes are remembered with
each file's device, inode, size, mtime and ctime: lmlab.data.filehash), and any change of content
re-tokenizes, even one that keeps size and mtime (`cp -p`, `rsync -a`). A cached shard that fails
its header/sha256 check is rebuilt, not trusted.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from lmlab.data.corpora import builtin, fingerprint, is_builtin, read_corpus
from lmlab.data.corpora import cache_dir as default_cache_dir
from lmlab.data.shards import Shard, open_shard, write_shard
from lmlab.errors import ConfigError, DataError

CACHE_VERSION = 1
DEFAULT_BPE_VOCAB = 8192
# The smallest --vocab-size each tokenizer kind can train (see its `train`): words need <unk> and
# <eos>, byte_bpe the 256 bytes and <|endoftext|>, wordpiece its 5 specials and one more id.
MIN_VOCAB = {"words": 2, "chars": None, "byte_bpe": 257, "wordpiece": 6}
_BATCH_CHARS = 1 << 20  # encode about 1M characters per call: bounded memory, a live progress bar
# Long documents are cut only at a newline with non-space on both sides: every tokenizer here
# (characters, whitespace words, GPT-2's pre-tokenizer regex) treats such a newline as its own
# piece, so cutting there gives exactly the ids of encoding the whole document.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


def check_vocab(tokenizer_vocab_size: int, model_vocab_size: int) -> None:
    """DataError when the tokenizer can emit ids the model has no embedding row for."""
    if tokenizer_vocab_size > model_vocab_size:
        raise DataError(f"tokenizer vocab size {tokenizer_vocab_size} is larger than the model's vocab size "
                        f"{model_vocab_size}; rebuild the model with vocab_size >= {tokenizer_vocab_size}")


def check_length(shard: Shard, seq_len: int, source: str = "", split: str = "") -> None:
    """DataError when `shard` holds fewer than seq_len + 1 tokens (one (x, y) window)."""
    n, need = len(shard), seq_len + 1
    if n < need:
        where = f"{source}: the {split} split" if source else str(getattr(shard, "path", "shard"))
        raise DataError(f"{where} has {n} tokens, fewer than seq_len + 1 = {need}; "
                        "use a shorter --seq-len or more text")


def default_tokenizer_kind(source: str) -> str:
    """The tokenizer kind a built-in corpus is meant for; byte_bpe for local text."""
    return builtin(source).tokenizer if is_builtin(source) else "byte_bpe"


def build_tokenizer_for(source: str, kind: str | None = None, vocab_size: int | None = None,
                        valid: str | None = None):
    """Train a tokenizer of `kind` ("words", "chars", "byte_bpe", "wordpiece"; default: the
    corpus's own) on the train split of `source`. `vocab_size` caps words (default: every word)
    and sets the byte_bpe and wordpiece sizes (default 8192); characters take every character seen."""
    kind = kind or default_tokenizer_kind(source)
    if kind not in MIN_VOCAB:
        raise DataError(f"unknown tokenizer kind {kind!r}; expected words, chars, byte_bpe or wordpiece")
    if vocab_size is not None:  # before the corpus is read
        if MIN_VOCAB[kind] is None:
            raise ConfigError(f"--vocab-size does not apply to the {kind} tokenizer (it takes every "
                              f"character seen); leave it out")
        if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB[kind]:
            raise ConfigError(f"--vocab-size must be an integer >= {MIN_VOCAB[kind]} for the {kind} "
                              f"tokenizer, got {vocab_size!r}")
    docs = read_corpus(source, "train", valid=valid)
    if kind == "words":
        from lmlab.tokenizers.words import WordTokenizer

        return WordTokenizer.train(docs, max_size=vocab_size)
    if kind == "chars":
        from lmlab.tokenizers.chars import CharTokenizer

        return CharTokenizer.train(docs)
    size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
    if kind == "byte_bpe":
        from lmlab.tokenizers.byte_bpe import ByteBPETokenizer

        return ByteBPETokenizer.train(docs, size)
    from lmlab.tokenizers.wordpiece import WordPieceTokenizer

    return WordPieceTokenizer.train(docs, size)


def tokenizer_digest(tokenizer) -> str:
    """sha256 over every file `tokenizer.save` writes: same digest <=> same ids."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="lmlab-tok-") as tmp:
        tokenizer.save(tmp)
        for f in sorted(Path(tmp).rglob("*")):
            if f.is_file():
                digest.update(f.relative_to(tmp).as_posix().encode() + b"\0")
                digest.update(f.read_bytes())
    return digest.hexdigest()


def _chunks(docs: list[str]):
    """(document index, text piece, is last piece of its document), pieces <= ~_BATCH_CHARS."""
    for i, doc in enumerate(docs):
        if len(doc) <= _BATCH_CHARS:
            yield i, doc, True
            continue
        start = 0
        while start < len(doc):
            end = len(doc)
            if end - start > _BATCH_CHARS:
                m = _SAFE_CUT.search(doc, start + _BATCH_CHARS)
                end = m.start() if m else len(doc)
            yield i, doc[start:end], end == len(doc)
            start = end


def encode_documents(docs: list[str], tokenizer, progress: bool = False,
                     desc: str = "tokenize") -> np.ndarray:
    """All documents' ids as one int64 array, each document ending in one eos (or "\\n")."""
    eos = tokenizer.eos_token_id
    sep = [eos] if eos is not None else list(tokenizer.encode("\n"))
    batch_encode = getattr(tokenizer, "encode_batch", None)
    total = sum(len(d) for d in docs)
    parts: list[np.ndarray] = []
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="char", unit_scale=True,
              disable=not progress or total < _BATCH_CHARS) as bar:
        pending: list[tuple[str, bool]] = []
        size = 0

        def flush():
            texts = [t for t, _ in pending]
            encoded = batch_encode(texts) if batch_encode else [tokenizer.encode(t) for t in texts]
            flat: list[int] = []
            for ids, (_, last) in zip(encoded, pending, strict=True):
                flat.extend(ids)
                # Exactly one separator per document: the word tokenizer already turns a final
                # newline into eos, and a second one would be a spurious empty "sentence".
                if last and (not sep or flat[-len(sep):] != sep):
                    flat.extend(sep)
            parts.append(np.asarray(flat, dtype=np.int64))
            bar.update(sum(len(t) for t in texts))
            pending.clear()

        for _, piece, last in _chunks(docs):
            pending.append((piece, last))
            size += len(piece)
            if size >= _BATCH_CHARS:
                flush()
                size = 0
        if pending:
            flush()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _slug(source: str) -> str:
    name = source[len("builtin:"):] if is_builtin(source) else Path(source).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:40] or "corpus"


def shard_key(source: str, split: str, tok_digest: str, valid: str | None = None) -> str:
    """The cache key of one split's shard (hex)."""
    ident = {"version": CACHE_VERSION, "source": fingerprint(source), "split": split, "tokenizer": tok_digest}
    if valid is not None and split == "valid":
        ident["valid"] = fingerprint(valid)
    elif valid is not None:
        ident["valid_given"] = True  # a separate valid file changes what the train split holds
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def prepare_tokens(source: str, tokenizer, cache_dir: str | Path | None = None, *,
                   valid: str | None = None, splits: tuple[str, ...] = ("train", "valid"),
                   seq_len: int | None = None, progress: bool = True) -> dict[str, Shard]:
    """{split: Shard} for `source` tokenized with `tokenizer`, from the cache when it is there.

    `cache_dir` defaults to $LMLAB_CACHE/shards. With `seq_len`, every split must hold at least
    seq_len + 1 tokens (DataError naming the source and both numbers), checked before training.
    """
    source = str(source)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "shards"
    digest = tokenizer_digest(tokenizer)
    out: dict[str, Shard] = {}
    for split in splits:
        path = cache / f"{_slug(source)}-{split}-{shard_key(source, split, digest, valid)[:24]}.bin"
        shard = _open_cached(path)
        if shard is None:
            docs = read_corpus(source, split, valid=valid)
            ids = encode_documents(docs, tokenizer, progress=progress, desc=f"tokenize {split}")
            if ids.size == 0:
                raise DataError(f"{source}: the {split} split gives no tokens")
            meta = {"source": source, "split": split, "documents": len(docs), "tokenizer_sha256": digest}
            write_shard(path, ids, tokenizer.vocab_size, meta=meta)
            shard = open_shard(path, verify=False)  # just written from `ids`; no need to re-hash
        if shard.vocab_size != tokenizer.vocab_size:
            raise DataError(f"{path}: shard vocab size {shard.vocab_size} differs from the tokenizer's "
                            f"{tokenizer.vocab_size}")
        if seq_len is not None:
            check_length(shard, seq_len, source, split)
        out[split] = shard
    return out


def _open_cached(path: Path) -> Shard | None:
    if not path.exists():
        return None
    try:
        return open_shard(path, verify=True)
    except DataError as e:
        warnings.warn(f"rebuilding a damaged cached shard: {e}", stacklevel=3)
        return None
