"""Sentence pairs for BERT pretraining (Devlin et al. 2018, §3.1 Task #2 and Appendix A.2).

Documents -> sentences -> token ids, tokenized once and cached; then pairs, masked, in batches.

Sentences. A document is cut at newlines and, inside a line, after . ! ? followed by a space and
a capital letter or digit (a simple splitter; PTB has one sentence per line already). NSP needs
documents with several sentences: when most documents hold a single sentence (`builtin:ptb`
stores one sentence per document) or there is only one document, all sentences are read as one
running text cut into pseudo-documents of PSEUDO_DOC_SENTENCES sentences (PTB's lines follow
the order of its articles, so neighbouring lines are mostly neighbouring sentences).

Pairs (A.2). The input is `[CLS] A [SEP] B [SEP]` of at most T = seq_len tokens, so A and B hold
at most T - 3. With probability 0.1 the target length is drawn uniformly from [2, T - 3] instead
("short sequences", to reduce the mismatch with short fine-tuning inputs). From a random start
sentence, whole sentences are gathered until the target is reached or the document ends; A is a
random number of the first of them. With probability 0.5 B is the rest of them (IsNext, NSP label
0); otherwise B is text from a random start in a different document, as long as the target leaves
(NotNext, label 1). Then tokens are removed one at a time from the longer of A and B (B on a tie),
each time from its front or its back at random, until the pair fits. Unlike the paper's script,
which walks each document once, the start sentence is drawn at random, so a pair is a pure
function of its generator: the label is an exact coin flip, and batch k depends only on (seed, k).
An IsNext start is a sentence that has a successor in its document; a NotNext pair starts from the
same distribution, so A alone says nothing about the label.

Masking (`lmlab.data.masking`): dynamic (each row of each step masked afresh, keyed by
(seed, step, row)) or static (a pool of `num_instances` pairs, each masked `dupe_factor` times
once; each epoch reads the pool in a fresh order keyed by (seed, epoch)).

Cache: the tokens of every sentence, concatenated, in one token shard, and an index shard holding
the sentence start offsets (n_sentences + 1) then the document starts in sentences (n_documents +
1); as the index "ids" are offsets, its vocab_size is the token count + 1. Both are keyed like the
LM shards (source fingerprint, split, tokenizer bytes) and rebuilt when either fails its check.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmlab.data.corpora import cache_dir as default_cache_dir
from lmlab.data.corpora import fingerprint, read_corpus
from lmlab.data.masking import MaskingSpec, dynamic_mask, static_mask
from lmlab.data.prepare import cache_slug, tokenizer_digest
from lmlab.data.sampler import Stepper
from lmlab.data.shards import open_shard, write_shard
from lmlab.errors import ConfigError, DataError

PAIRS_VERSION = 1
PSEUDO_DOC_SENTENCES = 64
SHORT_SEQ_PROB = 0.1  # A.2: "10% of the time" a shorter target length
DUPE_FACTOR = 10  # the released create_pretraining_data default
MASKINGS = ("dynamic", "static")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_ENCODE_BATCH = 50_000  # sentences per encode_batch call


def split_sentences(document: str) -> list[str]:
    """The sentences of a document: its non-blank lines, each cut after . ! ? before a capital."""
    out = []
    for line in document.splitlines():
        out.extend(s.strip() for s in _SENTENCE_END.split(line.strip()) if s.strip())
    return out


def nsp_documents(docs: list[str], block: int = PSEUDO_DOC_SENTENCES) -> list[list[str]]:
    """Documents as lists of sentences; single-sentence corpora become pseudo-documents."""
    split = [s for s in (split_sentences(d) for d in docs) if s]
    if len(split) >= 2 and np.median([len(s) for s in split]) >= 2:
        return split
    stream = [s for doc in split for s in doc]
    block = max(2, min(block, len(stream) // 2))  # at least two pseudo-documents when possible
    return [stream[i : i + block] for i in range(0, len(stream), block)]


class PairData:
    """Tokenized sentences grouped in documents.

    tokens (N,) ids; sent_start (S + 1,) token offsets of the sentences; doc_start (D + 1,)
    sentence offsets of the documents. `starts` lists the sentences with a successor in their
    document (where a pair may start).
    """

    def __init__(self, tokens: np.ndarray, sent_start: np.ndarray, doc_start: np.ndarray,
                 where: str = "pairs"):
        self.tokens, self.where = tokens, where
        self.sent_start = np.asarray(sent_start, dtype=np.int64)
        self.doc_start = np.asarray(doc_start, dtype=np.int64)
        ok = (self.sent_start.size >= 2 and self.doc_start.size >= 2 and self.sent_start[0] == 0
              and self.sent_start[-1] == len(tokens) and np.all(np.diff(self.sent_start) > 0)
              and self.doc_start[0] == 0 and self.doc_start[-1] == self.num_sentences
              and np.all(np.diff(self.doc_start) > 0))
        if not ok:
            raise DataError(f"{where}: inconsistent sentence/document index")
        self.sent_doc = np.repeat(np.arange(self.num_documents), np.diff(self.doc_start))  # (S,)
        self.starts = np.flatnonzero(np.arange(self.num_sentences) + 1 < self.doc_start[self.sent_doc + 1])
        if self.num_documents < 2 or self.starts.size == 0:
            raise DataError(f"{where}: next sentence prediction needs at least two documents and one "
                            f"with two sentences; got {self.num_documents} documents, "
                            f"{self.num_sentences} sentences")

    @property
    def num_sentences(self) -> int:
        return int(self.sent_start.size - 1)

    @property
    def num_documents(self) -> int:
        return int(self.doc_start.size - 1)

    @classmethod
    def from_ids(cls, documents: list[list[list[int]]], where: str = "pairs") -> PairData:
        """From documents of sentences of ids; empty sentences and documents are dropped."""
        docs = [[s for s in doc if len(s)] for doc in documents]
        docs = [d for d in docs if d]
        sentences = [s for d in docs for s in d]
        lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
        tokens = np.fromiter((t for s in sentences for t in s), dtype=np.int64, count=int(lengths.sum()))
        sent_start = np.concatenate([[0], np.cumsum(lengths)])
        doc_start = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
        return cls(tokens, sent_start, doc_start, where)

    def sentence(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.sent_start[i] : self.sent_start[i + 1]])


def encode_sentences(docs: list[list[str]], tokenizer, progress: bool = False) -> list[list[list[int]]]:
    """The ids of every sentence, documents kept apart; one batched encode call per ~50k sentences."""
    from tqdm import tqdm

    flat = [s for d in docs for s in d]
    ids: list[list[int]] = []
    batch = getattr(tokenizer, "encode_batch", None)
    for i in tqdm(range(0, len(flat), _ENCODE_BATCH), desc="tokenize sentences",
                  disable=not progress or len(flat) <= _ENCODE_BATCH):
        chunk = flat[i : i + _ENCODE_BATCH]
        ids.extend(batch(chunk) if batch else [tokenizer.encode(s) for s in chunk])
    out, k = [], 0
    for d in docs:
        out.append(ids[k : k + len(d)])
        k += len(d)
    return out


def load_pairs(source: str, split: str, tokenizer, cache_dir: str | Path | None = None,
               valid: str | None = None, progress: bool = False) -> PairData:
    """The PairData of one split of `source`, from the cache or tokenized (and cached) now."""
    source = str(source)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "shards"
    digest = tokenizer_digest(tokenizer)
    ident = {"version": PAIRS_VERSION, "source": fingerprint(source), "split": split, "tokenizer": digest,
             "valid": fingerprint(valid) if valid is not None and split == "valid" else valid is not None,
             "pseudo_doc": PSEUDO_DOC_SENTENCES}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    tok_path = cache / f"{cache_slug(source)}-{split}-pairs-{key}.bin"
    idx_path = cache / f"{cache_slug(source)}-{split}-pairs-{key}.index.bin"
    data = _open_cached(tok_path, idx_path, f"{source} ({split})")
    if data is not None:
        return data
    docs = nsp_documents(read_corpus(source, split, valid=valid))
    data = PairData.from_ids(encode_sentences(docs, tokenizer, progress), where=f"{source} ({split})")
    meta = {"source": source, "split": split, "tokenizer_sha256": digest}
    write_shard(tok_path, data.tokens, tokenizer.vocab_size, meta={**meta, "kind": "nsp_sentences"})
    index = np.concatenate([data.sent_start, data.doc_start])
    write_shard(idx_path, index, len(data.tokens) + 1,
                meta={**meta, "kind": "nsp_index", "sentences": data.num_sentences,
                      "documents": data.num_documents, "tokens_sha256": open_shard(tok_path, False).sha256})
    return data


def _open_cached(tok_path: Path, idx_path: Path, where: str) -> PairData | None:
    if not (tok_path.exists() and idx_path.exists()):
        return None
    try:
        tokens, index = open_shard(tok_path), open_shard(idx_path)
        n_sent, n_doc = int(index.meta["sentences"]), int(index.meta["documents"])
        if index.meta.get("tokens_sha256") != tokens.sha256 or len(index) != n_sent + n_doc + 2:
            raise DataError(f"{idx_path}: index does not match {tok_path.name}")
        arr = np.asarray(index.tokens, dtype=np.int64)
        return PairData(tokens.tokens, arr[: n_sent + 1], arr[n_sent + 1 :], where)
    except (DataError, KeyError, TypeError, ValueError):
        return None  # damaged or mismatched: rebuild both


# ---------------------------------------------------------------- pairs


@dataclass
class Pair:
    """One NSP instance before [CLS]/[SEP]. Spans are [start, end) sentence indices before
    truncation; `target` is the drawn target length, `short` whether it was a short draw."""

    tokens_a: np.ndarray
    tokens_b: np.ndarray
    is_random_next: bool
    a_span: tuple[int, int]
    b_span: tuple[int, int]
    target: int
    short: bool


def _gather_end(data: PairData, start: int, need: int, least: int) -> int:
    """End of the sentences from `start` that hold >= `need` tokens, within the document, >= start+least."""
    doc_end = int(data.doc_start[data.sent_doc[start] + 1])
    end = int(np.searchsorted(data.sent_start, data.sent_start[start] + need, side="left"))
    return max(min(end, doc_end), min(start + least, doc_end))


def fit_lengths(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """Lengths after taking tokens one at a time from the longer side (B on a tie) until they fit."""
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return len_a, len_b
    first = min(excess, abs(len_a - len_b))  # from the longer one until they are equal
    len_a, len_b = (len_a - first, len_b) if len_a > len_b else (len_a, len_b - first)
    rest = excess - first  # then alternately, B first
    return len_a - rest // 2, len_b - (rest - rest // 2)


def make_pair(data: PairData, max_tokens: int, rng: np.random.Generator,
              short_seq_prob: float = SHORT_SEQ_PROB) -> Pair:
    """One (A, B, is_random_next) pair with len(A) + len(B) <= max_tokens, both non-empty."""
    short = bool(rng.random() < short_seq_prob)
    target = int(rng.integers(2, max_tokens + 1)) if short else max_tokens
    random_next = bool(rng.random() < 0.5)
    start = int(data.starts[rng.integers(data.starts.size)])
    end = _gather_end(data, start, target, 1 if random_next else 2)
    a_end = start + 1 if end - start < 2 else int(rng.integers(start + 1, end))
    if random_next:
        doc = int(rng.integers(data.num_documents - 1))
        doc += doc >= data.sent_doc[start]  # any document but A's
        b_start = int(rng.integers(data.doc_start[doc], data.doc_start[doc + 1]))
        used = int(data.sent_start[a_end] - data.sent_start[start])
        b_span = (b_start, _gather_end(data, b_start, max(1, target - used), 1))
    else:
        b_span = (a_end, end)
    a = np.asarray(data.tokens[data.sent_start[start] : data.sent_start[a_end]], dtype=np.int64)
    b = np.asarray(data.tokens[data.sent_start[b_span[0]] : data.sent_start[b_span[1]]], dtype=np.int64)
    # Each removed token comes off the front or the back with probability 1/2: the number taken
    # from the front is Binomial(removed, 1/2), the same law as one coin per token.
    new_a, new_b = fit_lengths(len(a), len(b), max_tokens)
    front_a, front_b = rng.binomial(len(a) - new_a, 0.5), rng.binomial(len(b) - new_b, 0.5)
    return Pair(a[front_a : front_a + new_a], b[front_b : front_b + new_b], random_next,
                (start, a_end), b_span, target, short)


def pair_row(pair: Pair, seq_len: int, cls_id: int, sep_id: int, pad_id: int):
    """(input_ids, token_type_ids, attention_mask), each (seq_len,): [CLS] A [SEP] B [SEP] [PAD]..."""
    n_a, n_b = len(pair.tokens_a), len(pair.tokens_b)
    n = n_a + n_b + 3
    ids = np.full(seq_len, pad_id, dtype=np.int64)
    ids[:n] = np.concatenate([[cls_id], pair.tokens_a, [sep_id], pair.tokens_b, [sep_id]])
    types = np.zeros(seq_len, dtype=np.int64)
    types[n_a + 2 : n] = 1  # B and the [SEP] that ends it
    mask = np.zeros(seq_len, dtype=np.int64)
    mask[:n] = 1
    return ids, types, mask


# ---------------------------------------------------------------- the sampler


def _generator(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


_PAIR, _STATIC_PAIR, _EPOCH = 10, 11, 12  # generator streams (the masking streams are 0 and 1)


class PairSampler(Stepper):
    """Infinite dict batches {input_ids, token_type_ids, attention_mask, mlm_labels, nsp_labels},
    (B_rank, seq_len) each (nsp_labels (B_rank,)); global batch `step` depends only on (seed, step).

    Rank r of W gets rows r*B/W : (r+1)*B/W of the global batch. dynamic: row g of step k is the
    pair and masking keyed by (seed, k, g). static: position k*B + g of an endless read of the
    pool of num_instances * dupe_factor (pair, masking) entries, shuffled anew each epoch.
    """

    kind = "nsp_pairs"

    def __init__(self, data: PairData, seq_len: int, batch_size: int, spec: MaskingSpec, cls_id: int,
                 sep_id: int, pad_id: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 masking: str = "dynamic", dupe_factor: int = DUPE_FACTOR, num_instances: int | None = None,
                 short_seq_prob: float = SHORT_SEQ_PROB):
        for name, value, low in (("seq_len", seq_len, 5), ("batch_size", batch_size, 1),
                                 ("world_size", world_size, 1), ("dupe_factor", dupe_factor, 1)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if masking not in MASKINGS:
            raise ConfigError(f"masking must be dynamic or static, got {masking!r}")
        if not 0 <= rank < world_size or batch_size % world_size:
            raise ConfigError(f"rank {rank} of {world_size} processes cannot share a batch of {batch_size}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.shard = data  # Stepper's state counts len(data.tokens)
        self.data, self.spec, self.masking = data, spec, masking
        self.seq_len, self.batch_size, self.seed = int(seq_len), int(batch_size), int(seed)
        self.rank, self.world_size, self.dupe_factor = int(rank), int(world_size), int(dupe_factor)
        self.ids = (int(cls_id), int(sep_id), int(pad_id))
        self.short_seq_prob = short_seq_prob
        # Static: about one pass over the text per copy, as the paper's script makes.
        self.num_instances = int(num_instances or max(1, len(data.tokens) // (self.seq_len - 3)))
        self._perm: tuple[int, np.ndarray] | None = None
        self.step = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "masking": self.masking, "dupe_factor": self.dupe_factor,
                "num_sentences": self.data.num_sentences}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("masking", "dupe_factor", "num_sentences"):
            if state.get(key) != mine[key]:
                raise DataError(f"sampler state was saved with {key}={state.get(key)!r} but this run has "
                                f"{key}={mine[key]!r}; resume needs the same data and masking options")
        super().load_state_dict(state)

    def pair(self, step: int, row: int) -> tuple[Pair, tuple[str, int, int]]:
        """The pair of global row `row` of batch `step`, and its masking key."""
        if self.masking == "dynamic":
            rng = _generator(self.seed, _PAIR, step, row)
            return self._make(rng), ("dynamic", step, row)
        pool = self.num_instances * self.dupe_factor
        epoch, k = divmod(step * self.batch_size + row, pool)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, _generator(self.seed, _EPOCH, epoch).permutation(pool))
        instance, dupe = divmod(int(self._perm[1][k]), self.dupe_factor)
        return self._make(_generator(self.seed, _STATIC_PAIR, instance)), ("static", instance, dupe)

    def _make(self, rng) -> Pair:
        return make_pair(self.data, self.seq_len - 3, rng, self.short_seq_prob)

    def example(self, step: int, row: int) -> tuple[np.ndarray, ...]:
        """(input_ids, token_type_ids, attention_mask, mlm_labels, nsp_label) of one global row."""
        pair, (how, a, b) = self.pair(step, row)
        ids, types, mask = pair_row(pair, self.seq_len, *self.ids)
        masker = dynamic_mask if how == "dynamic" else static_mask
        ids, labels = masker(ids, self.spec, self.seed, a, b)
        return ids, types, mask, labels, np.int64(pair.is_random_next)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rows = [self.example(step, g) for g in range(self.batch_size)[self._rows()]]
        cols = [torch.from_numpy(np.stack(c)) for c in zip(*rows, strict=True)]
        return dict(zip(("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "nsp_labels"),
                        cols, strict=True))
