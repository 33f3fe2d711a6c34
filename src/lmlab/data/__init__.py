"""Corpus -> token shards -> batches.

    read_corpus("builtin:ptb", "train")            -> list of documents (str)
    prepare_tokens(source, tokenizer, cache_dir)   -> {"train": Shard, "valid": Shard}
    RandomWindowSampler(shard, seq_len, batch_size, seed, rank, world_size)  -> (x, y) batches
    SequentialWindows(shard, seq_len, stride)      -> (x, y, mask) evaluation batches
"""

from lmlab.data.corpora import BUILTINS, list_corpora, read_corpus
from lmlab.data.prepare import build_tokenizer_for, check_corpus, check_length, check_vocab, prepare_tokens
from lmlab.data.sampler import ContiguousStreams, RandomWindowSampler, SequentialWindows
from lmlab.data.shards import Shard, open_shard, write_shard

__all__ = [
    "BUILTINS", "ContiguousStreams", "RandomWindowSampler", "SequentialWindows", "Shard",
    "build_tokenizer_for", "check_corpus", "check_length", "check_vocab", "list_corpora", "open_shard",
    "prepare_tokens", "read_corpus", "write_shard",
]
