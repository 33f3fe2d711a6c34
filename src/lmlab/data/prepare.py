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

from lmlab.data.corpora import builtin, fingerprint, is_builtin, read_corpus, read_splits
from lmlab.data.corpora import cache_dir as default_cache_dir
from lmlab.data.shards import Shard, open_shard, write_shard
from lmlab.errors import ConfigError, DataError

CACHE_VERSION = 1
DEFAULT_BPE_VOCAB = 8192
# The smallest --vocab-size each tokenizer kind can train (see its `train`): words need <unk> and
# <eos>, byte_bpe the 256 bytes and <|endoftext|>, wordpiece its 5 specials and one more id,
# word_chars (ELMo's words + characters) <S>, </S> and <unk>, parallel_words (CoVe's target words) its
# 4 specials and one word, fastai_words fastai's 9 specials.
MIN_VOCAB = {"words": 2, "chars": None, "byte_bpe": 257, "wordpiece": 6, "word_chars": 3, "parallel_words": 5,
             "fastai_words": 9}
_BATCH_CHARS = 1 << 20  # encode about 1M characters per call: bounded memory, a live progress bar
# Long documents are cut only where every tokenizer here (characters, whitespace words, BERT's
# whitespace/punctuation split, GPT-2's pre-tokenizer regex) starts a new piece whatever came
# before, so the pieces give exactly the ids of encoding the whole document: after a newline with
# non-space on both sides (preferred), or before a space that follows a non-space (GPT-2's regex
# has no lookbehind and none of its matches runs from a non-space into a space). A one-line
# document is then encoded ~1M characters at a time too; only a run without any space is whole.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_ANY_CUT = re.compile(r"(?<=\S\n)(?=\S)|(?<=\S)(?= )")


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


def check_corpus(source: str, valid: str | None = None, seq_len: int | None = None) -> dict[str, list[str]]:
    """{"train": docs, "valid": docs} of `source`, after every check that needs no tokenizer.

    Each is a DataError naming the source: a missing or unreadable file, text that is not UTF-8
    (file and line) or a bad JSONL line, an empty split, a text too short to hold out a valid
    part, and with `seq_len` a split that cannot reach seq_len + 1 tokens with any tokenizer
    here (none gives more than one token per UTF-8 byte plus one eos per document). Run before a
    tokenizer is trained, so that these fail in seconds, not after minutes of training.
    """
    splits = read_splits(source, ("train", "valid"), valid)
    if seq_len is not None:
        for split, docs in splits.items():
            most = sum(len(d.encode("utf-8")) for d in docs) + len(docs)
            if most < seq_len + 1:
                where = valid if split == "valid" and valid is not None else source
                raise DataError(f"{where}: the {split} split has at most {most} tokens (one per byte, one "
                                f"eos per document), fewer than seq_len + 1 = {seq_len + 1}; use a "
                                f"shorter --seq-len or more text")
    return splits


def build_tokenizer_for(source: str, kind: str | None = None, vocab_size: int | None = None,
                        valid: str | None = None, seq_len: int | None = None):
    """Train a tokenizer of `kind` ("words", "chars", "byte_bpe", "wordpiece", "word_chars"; default: the
    corpus's own) on the train split of `source`. `vocab_size` caps words (default: every word)
    and sets the byte_bpe and wordpiece sizes (default 8192); characters take every character seen.

    `check_corpus(source, valid, seq_len)` runs first: pass the `valid` and `seq_len` the run
    will use, so a corpus that cannot be trained on fails before the tokenizer is trained.
    """
    kind = kind or default_tokenizer_kind(source)
    if kind not in MIN_VOCAB:
        raise DataError(f"unknown tokenizer kind {kind!r}; expected {', '.join(MIN_VOCAB)}")
    if vocab_size is not None:  # before the corpus is read
        if MIN_VOCAB[kind] is None:
            raise ConfigError(f"--vocab-size does not apply to the {kind} tokenizer (it takes every "
                              f"character seen); leave it out")
        if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB[kind]:
            raise ConfigError(f"--vocab-size must be an integer >= {MIN_VOCAB[kind]} for the {kind} "
                              f"tokenizer, got {vocab_size!r}")
    if kind == "parallel_words":  # translation (CoVe): two vocabularies from parallel text
        from lmlab.data.parallel import train_tokenizer

        return train_tokenizer(source, vocab_size, valid)
    docs = check_corpus(source, valid, seq_len)["train"]
    if kind == "words":
        from lmlab.tokenizers.words import WordTokenizer

        return WordTokenizer.train(docs, max_size=vocab_size)
    if kind == "fastai_words":  # the words after fastai's rules (ULMFiT)
        from lmlab.tokenizers.fastai_words import FastaiWordTokenizer

        return FastaiWordTokenizer.train(docs, max_size=vocab_size)
    if kind == "chars":
        from lmlab.tokenizers.chars import CharTokenizer

        return CharTokenizer.train(docs)
    if kind == "word_chars":
        from lmlab.tokenizers.word_chars import WordCharTokenizer

        return WordCharTokenizer.train(docs, max_size=vocab_size)
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


def _splits_special(doc: str, cut: int, specials: list[str]) -> bool:
    """Whether an occurrence of one of `specials` spans position `cut` of `doc`."""
    for s in specials:
        i = doc.find(s, max(0, cut - len(s) + 1), cut + len(s) - 1)
        while i != -1 and i < cut:
            if i + len(s) > cut:
                return True
            i = doc.find(s, i + 1, cut + len(s) - 1)
    return False


def _next_cut(doc: str, start: int, specials: list[str]) -> int:
    """Where the piece of `doc` that starts at `start` ends: a safe cut ~_BATCH_CHARS on, else the end."""
    lo = start + _BATCH_CHARS
    # A newline cut within the next batch, else the first newline or space cut anywhere after.
    for pattern, hi in ((_SAFE_CUT, lo + _BATCH_CHARS), (_ANY_CUT, len(doc))):
        for m in pattern.finditer(doc, lo, hi):
            if not _splits_special(doc, m.start(), specials):
                return m.start()
    return len(doc)


def _chunks(docs: list[str], specials: list[str] = ()):
    """(document index, text piece, is last piece of its document), pieces of ~_BATCH_CHARS or
    less wherever the text has a newline or a space to cut at (never inside one of `specials`)."""
    specials = [s for s in specials if any(c.isspace() for c in s)]  # only these can span a cut
    for i, doc in enumerate(docs):
        if len(doc) <= _BATCH_CHARS:
            yield i, doc, True
            continue
        start = 0
        while start < len(doc):
            end = len(doc) if len(doc) - start <= _BATCH_CHARS else _next_cut(doc, start, specials)
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

        for _, piece, last in _chunks(docs, getattr(tokenizer, "special_tokens", [])):
            pending.append((piece, last))
            size += len(piece)
            if size >= _BATCH_CHARS:
                flush()
                size = 0
        if pending:
            flush()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def cache_slug(source: str) -> str:
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
        path = cache / f"{cache_slug(source)}-{split}-{shard_key(source, split, digest, valid)[:24]}.bin"
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
