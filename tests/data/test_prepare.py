"""Corpus -> cached shards, and the checks that fail before step 0."""

import numpy as np
import pytest

from lmlab.data import prepare
from lmlab.data.prepare import (
    build_tokenizer_for,
    check_length,
    check_vocab,
    encode_documents,
    prepare_tokens,
)
from lmlab.errors import ConfigError, DataError
from lmlab.tokenizers.byte_bpe import ByteBPETokenizer
from lmlab.tokenizers.chars import CharTokenizer
from lmlab.tokenizers.words import WordTokenizer


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"the cat sat on mat number {i}\n" for i in range(100)))
    return path


def test_prepare_joins_documents_with_eos_and_caches(corpus, tmp_path, monkeypatch):
    tok = build_tokenizer_for(str(corpus), "chars")
    assert isinstance(tok, CharTokenizer)
    shards = prepare_tokens(str(corpus), tok, tmp_path / "cache")
    train, valid = shards["train"], shards["valid"]
    assert train.vocab_size == tok.vocab_size and train.meta["split"] == "train"
    text = corpus.read_text()
    assert tok.decode(train.tokens[:-1].tolist()) + tok.decode(valid.tokens[:-1].tolist()) == text
    assert train.tokens[-1] == tok.eos_token_id and valid.tokens[-1] == tok.eos_token_id

    def no_reading(*args, **kwargs):
        raise AssertionError("a cache hit must not read the corpus")

    monkeypatch.setattr(prepare, "read_corpus", no_reading)
    again = prepare_tokens(str(corpus), tok, tmp_path / "cache")
    assert again["train"].path == train.path
    np.testing.assert_array_equal(again["train"].tokens, train.tokens)


def test_cache_key_follows_content_and_tokenizer(corpus, tmp_path):
    tok = build_tokenizer_for(str(corpus), "chars")
    first = prepare_tokens(str(corpus), tok, tmp_path)["train"].path
    corpus.write_text(corpus.read_text() + "one more line\n")
    second = prepare_tokens(str(corpus), tok, tmp_path)["train"].path
    other_tok = CharTokenizer.train([corpus.read_text() + "XYZ"])
    third = prepare_tokens(str(corpus), other_tok, tmp_path)["train"].path
    assert len({first, second, third}) == 3


def test_damaged_cached_shard_is_rebuilt(corpus, tmp_path):
    tok = build_tokenizer_for(str(corpus), "chars")
    shard = prepare_tokens(str(corpus), tok, tmp_path)["train"]
    expected = np.array(shard.tokens)
    shard.path.write_bytes(shard.path.read_bytes()[:-7])
    with pytest.warns(UserWarning, match="rebuilding a damaged cached shard"):
        rebuilt = prepare_tokens(str(corpus), tok, tmp_path)["train"]
    np.testing.assert_array_equal(rebuilt.tokens, expected)


def test_word_tokenizer_gives_one_eos_per_line(corpus, tmp_path):
    tok = build_tokenizer_for(str(corpus), "words")
    assert isinstance(tok, WordTokenizer)
    train = prepare_tokens(str(corpus), tok, tmp_path)["train"].tokens
    lines = corpus.read_text().splitlines()
    # the file ends with a newline: its <eos> is the document's, not a second one
    n_train_lines = int((train == tok.eos_token_id).sum())
    assert len(train) == sum(len(line.split()) + 1 for line in lines[:n_train_lines])


def test_ptb_end_to_end_token_counts(tmp_path):
    tok = build_tokenizer_for("builtin:ptb")
    assert isinstance(tok, WordTokenizer) and tok.vocab_size == 10000
    shards = prepare_tokens("builtin:ptb", tok, tmp_path, progress=False)
    assert (len(shards["train"]), len(shards["valid"])) == (929589, 73760)
    assert shards["train"].dtype == "uint16"


def test_too_short_corpus_fails_with_both_numbers(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("tiny\ncorpus\n")
    tok = build_tokenizer_for(str(path), "chars")
    msg = r"short\.txt: the train split has 6 tokens, fewer than seq_len \+ 1 = 65"
    with pytest.raises(DataError, match=msg):
        prepare_tokens(str(path), tok, tmp_path / "c", seq_len=64)
    shards = prepare_tokens(str(path), tok, tmp_path / "c", seq_len=4)
    with pytest.raises(DataError, match="has 6 tokens, fewer than seq_len \\+ 1 = 7"):
        check_length(shards["train"], 6)


def test_empty_corpus_fails_before_training(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n   \n")
    with pytest.raises(DataError, match=r"empty\.txt: the train split holds no text"):
        build_tokenizer_for(str(path), "chars")
    with pytest.raises(DataError, match=r"empty\.txt: the train split holds no text"):
        prepare_tokens(str(path), CharTokenizer.train(["abc"]), tmp_path / "c")


def test_check_vocab_names_both_sizes():
    check_vocab(100, 100)
    check_vocab(90, 128)  # a padded model vocabulary is fine
    msg = "tokenizer vocab size 50257 is larger than the model's vocab size 50000"
    with pytest.raises(DataError, match=msg):
        check_vocab(50257, 50000)


def test_unknown_tokenizer_kind(corpus):
    with pytest.raises(DataError, match="unknown tokenizer kind 'sentencepiece'"):
        build_tokenizer_for(str(corpus), "sentencepiece")


@pytest.mark.parametrize("kind, size, expected", [
    ("byte_bpe", 0, "--vocab-size must be an integer >= 257 for the byte_bpe tokenizer, got 0"),
    ("byte_bpe", 256, ">= 257 for the byte_bpe"),
    ("wordpiece", 0, ">= 6 for the wordpiece"),
    ("words", 0, "--vocab-size must be an integer >= 2 for the words tokenizer, got 0"),
    ("chars", 100, "--vocab-size does not apply to the chars tokenizer"),
])
def test_a_vocab_size_that_cannot_be_honoured_names_the_flag(corpus, kind, size, expected):
    """0 used to mean the default (byte_bpe took 8192); chars ignored any size."""
    with pytest.raises(ConfigError, match=expected):
        build_tokenizer_for(str(corpus), kind, vocab_size=size)


@pytest.fixture(scope="module")
def bpe():
    text = "".join(f"Line {i}: the quick brown fox, it's {i * 7} jumps.\n" for i in range(300))
    return ByteBPETokenizer.train([text], 300)


@pytest.mark.parametrize("kind", ["chars", "words", "bpe"])
def test_long_documents_cut_into_pieces_encode_identically(kind, bpe, monkeypatch):
    doc = "".join(f"Line {i}:  the quick\tbrown fox, it's {i} jumps.\n\n x\n" for i in range(400))
    tok = {"chars": CharTokenizer.train([doc]), "words": WordTokenizer.train([doc]), "bpe": bpe}[kind]
    whole = encode_documents([doc, "tail"], tok)
    monkeypatch.setattr(prepare, "_BATCH_CHARS", 500)
    pieces = list(prepare._chunks([doc, "tail"]))
    assert len(pieces) > 10 and "".join(p for i, p, _ in pieces if i == 0) == doc
    np.testing.assert_array_equal(encode_documents([doc, "tail"], tok), whole)


def test_byte_bpe_tokenizer_for_local_text(corpus, tmp_path):
    tok = build_tokenizer_for(str(corpus), vocab_size=300)  # byte_bpe is the default for local text
    assert isinstance(tok, ByteBPETokenizer) and tok.vocab_size <= 300
    shards = prepare_tokens(str(corpus), tok, tmp_path)
    assert tok.decode(shards["valid"].tokens[:-1].tolist()) == prepare.read_corpus(str(corpus), "valid")[0]
