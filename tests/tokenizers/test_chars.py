"""Character vocabulary: fixed layout, <unk> for unseen characters, specials matched whole."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import TokenizerError
from lmlab.tokenizers import load_tokenizer
from lmlab.tokenizers.chars import EOS, UNK, CharTokenizer

TEXTS = ["hello world\n", "안녕 세계 😀\n", "tab\there"]


@pytest.fixture
def tok():
    return CharTokenizer.train(TEXTS)


def test_layout(tok):
    assert tok.id_to_token(0) == UNK and tok.id_to_token(1) == EOS
    assert tok.unk_token_id == 0 and tok.eos_token_id == 1
    chars = [tok.id_to_token(i) for i in range(2, tok.vocab_size)]
    assert chars == sorted(set("".join(TEXTS)))  # code-point order
    assert tok.special_tokens == [UNK, EOS]


def test_unknown_char_is_unk(tok):
    assert tok.encode("hez") == [tok.token_to_id("h"), tok.token_to_id("e"), 0]
    assert tok.decode(tok.encode("hez")) == "he" + UNK


def test_min_count_and_extra():
    tok = CharTokenizer.train(["aaab"], min_count=2, extra="xy")
    assert tok.token_to_id("a") is not None and tok.token_to_id("b") is None
    assert tok.token_to_id("x") is not None and tok.token_to_id("y") is not None
    with pytest.raises(TokenizerError, match="single character"):
        CharTokenizer.train(["a"], extra=["ab"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([*set("".join(TEXTS)), EOS, UNK]), max_size=40).map("".join))
def test_roundtrip_known_text(text):
    tok = CharTokenizer.train(TEXTS)
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_any_text_encodes_in_range(text):
    tok = CharTokenizer.train(TEXTS)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert len(ids) <= len(text)  # one id per character at most; specials take one for several


def test_eos_in_text_is_one_id(tok):
    assert tok.encode(f"he{EOS}") == [tok.token_to_id("h"), tok.token_to_id("e"), 1]


def test_add_special_tokens(tok, tmp_path):
    n = tok.vocab_size
    assert tok.add_special_tokens(["<start>", "<delim>"]) == [n, n + 1]
    assert tok.add_special_tokens(["<start>"]) == [n]
    assert tok.encode("<start>he<delim>") == [n, tok.token_to_id("h"), tok.token_to_id("e"), n + 1]
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, CharTokenizer)
    assert back.encode("<start>he<delim>") == tok.encode("<start>he<delim>")
    with pytest.raises(TokenizerError):
        tok.add_special_tokens([" "])


def test_save_load_roundtrip(tok, tmp_path):
    tok.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))["kind"] == "chars"
    back = load_tokenizer(tmp_path)
    assert back.vocab_size == tok.vocab_size and back.eos_token_id == tok.eos_token_id
    for text in TEXTS:
        assert back.encode(text) == tok.encode(text)


def test_decode_bad_id(tok):
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.id_to_token(-1)


def test_bad_files(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.json: file not found"):
        CharTokenizer.load(tmp_path)
    path = tmp_path / "tokenizer.json"
    path.write_text('{"kind": "chars", "tokens": [', encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    spec = {"kind": "chars", "tokens": ["<unk>", "ab"], "special_tokens": ["<unk>"]}
    path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json.*'ab'"):
        load_tokenizer(tmp_path)
    path.write_text('{"kind": "chars", "tokens": "abc", "special_tokens": []}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json.*'tokens'"):
        load_tokenizer(tmp_path)
