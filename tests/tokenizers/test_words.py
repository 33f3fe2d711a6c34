"""Whitespace word vocabulary with the PTB convention: every newline is <eos>."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import TokenizerError
from lmlab.tokenizers import load_tokenizer
from lmlab.tokenizers.words import EOS, UNK, WordTokenizer

PTB = " the cat sat on the mat \n the dog sat <unk> \n a cat \n"


@pytest.fixture
def tok():
    return WordTokenizer.train([PTB])


def test_layout_by_count_then_word(tok):
    words = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    # the:3, cat:2, sat:2, then count-1 words alphabetically; <unk> in text is not a word
    assert words == [UNK, EOS, "the", "cat", "sat", "a", "dog", "mat", "on"]
    assert tok.unk_token_id == 0 and tok.eos_token_id == 1


def test_each_line_ends_with_eos(tok):
    ids = tok.encode(PTB)
    assert ids.count(tok.eos_token_id) == 3 and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == "the cat sat on the mat\nthe dog sat <unk>\na cat\n"
    assert tok.encode("the cat") == [tok.token_to_id("the"), tok.token_to_id("cat")]  # no final <eos>


def test_unknown_word_is_unk(tok):
    assert tok.encode("the zebra") == [tok.token_to_id("the"), 0]
    assert tok.encode("the <unk>") == [tok.token_to_id("the"), 0]


def test_max_size_and_min_count():
    tok = WordTokenizer.train([PTB], max_size=4)
    assert tok.vocab_size == 4 and tok.id_to_token(3) == "cat"
    tok = WordTokenizer.train([PTB], min_count=2)
    assert {tok.id_to_token(i) for i in range(2, tok.vocab_size)} == {"the", "cat", "sat"}
    with pytest.raises(TokenizerError, match="max_size"):
        WordTokenizer.train([PTB], max_size=1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 8), max_size=30))
def test_ids_roundtrip(ids):
    tok = WordTokenizer.train([PTB])
    assert tok.encode(tok.decode(ids)) == ids


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_any_text_encodes_in_range(text):
    tok = WordTokenizer.train([PTB])
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert ids.count(tok.eos_token_id) >= text.count("\n")


def test_add_special_tokens(tok, tmp_path):
    n = tok.vocab_size
    assert tok.add_special_tokens(["<start>", "<delim>"]) == [n, n + 1]
    ids = tok.encode("<start>the cat<delim>dog")
    assert ids == [n, tok.token_to_id("the"), tok.token_to_id("cat"), n + 1, tok.token_to_id("dog")]
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, WordTokenizer) and back.encode("<start>the cat<delim>dog") == ids
    with pytest.raises(TokenizerError):
        tok.add_special_tokens(["a\nb"])


def test_save_load_roundtrip(tok, tmp_path):
    tok.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))["kind"] == "words"
    back = load_tokenizer(tmp_path)
    assert back.encode(PTB) == tok.encode(PTB) and back.vocab_size == tok.vocab_size


def test_decode_bad_id(tok):
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.decode([0, 99])


def test_bad_files(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.json: file not found"):
        WordTokenizer.load(tmp_path)
    path = tmp_path / "tokenizer.json"
    path.write_text("not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    path.write_text('{"kind": "words", "tokens": ["<unk>", "<eos>", "two words"], '
                    '"special_tokens": ["<unk>", "<eos>"]}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json.*'two words'"):
        load_tokenizer(tmp_path)
    path.write_text('{"kind": "words", "tokens": ["a"], "special_tokens": []}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json.*'<unk>'"):
        load_tokenizer(tmp_path)
