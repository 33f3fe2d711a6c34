"""ELMo's tokenizer: word ids framed <S> ... </S> per line, and bilm-tf's character ids (written out by
hand here from bilm-tf's UnicodeCharsVocabulary / Batcher: ids 0-255 bytes, 256-260 marks, then + 1)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.data.prepare import build_tokenizer_for
from lmlab.errors import TokenizerError
from lmlab.tokenizers import load_tokenizer
from lmlab.tokenizers.word_chars import WordCharTokenizer

PTB = " the cat sat on the mat \n the dog sat <unk> \n\n a cat \n"


@pytest.fixture
def tok():
    return WordCharTokenizer.train([PTB])


def bilm_tf_row(token: str, max_chars: int = 50) -> list[int]:
    """bilm-tf's row for one token, before and after its +1 (written from its source, not from lmlab)."""
    if token == "<S>":
        ids = [258, 256, 259]
    elif token == "</S>":
        ids = [258, 257, 259]
    else:
        ids = [258, *token.encode("utf-8", "ignore")[:max_chars - 2], 259]
    return [i + 1 for i in ids + [260] * (max_chars - len(ids))]


def test_layout_specials_first_then_by_count(tok):
    words = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert words == ["<S>", "</S>", "<unk>", "the", "cat", "sat", "a", "dog", "mat", "on"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)


def test_each_non_blank_line_is_one_framed_sentence(tok):
    ids = tok.encode(PTB)
    the, cat = tok.token_to_id("the"), tok.token_to_id("cat")
    assert ids[:3] == [0, the, cat] and ids[-4:] == [0, tok.token_to_id("a"), cat, 1]
    assert ids.count(0) == ids.count(1) == 3  # the blank line gives nothing
    assert tok.decode(ids) == "the cat sat on the mat\nthe dog sat <unk>\na cat\n"
    assert tok.encode("the zebra") == [0, the, 2, 1]


def test_char_ids_match_bilm_tf_rows_with_boundaries_and_cut_long_words(tok):
    words = ["the", "übermäßig", "<S>", "x" * 60, "日本語"]
    got = tok.char_ids(words)
    want = [bilm_tf_row("<S>"), *(bilm_tf_row(w) for w in words), bilm_tf_row("</S>")]
    assert got.dtype == np.int64 and got.tolist() == want
    assert got[4, 49] == 260  # a 60-byte word keeps 48 bytes: EOW lands in the last column
    assert tok.char_ids([]).shape == (2, 50)


def test_char_table_spells_every_word_id(tok):
    table = tok.char_table()
    assert table.shape == (tok.vocab_size, 50) and table.dtype == np.int16
    for i in range(tok.vocab_size):
        assert table[i].tolist() == bilm_tf_row(tok.id_to_token(i))


def test_a_word_without_utf8_form_is_one_line(tok):
    with pytest.raises(TokenizerError, match=r"word 'a\\udc80' is not valid Unicode") as e:
        tok.char_ids(["ok", "a\udc80"])
    assert "\n" not in str(e.value)


def test_save_load_round_trip_and_characters_only(tmp_path, tok):
    tok.save(tmp_path / "a")
    again = load_tokenizer(tmp_path / "a")
    assert isinstance(again, WordCharTokenizer) and again.encode(PTB) == tok.encode(PTB)
    assert json.loads((tmp_path / "a" / "tokenizer.json").read_text())["max_chars"] == 50
    chars = WordCharTokenizer([], max_chars=12)
    chars.save(tmp_path / "b")
    chars = load_tokenizer(tmp_path / "b")
    assert chars.vocab_size == 0 and chars.eos_token_id is None and chars.char_ids(["hi"]).shape == (3, 12)
    with pytest.raises(TokenizerError, match="no word vocabulary"):
        chars.encode("hi")


def test_added_special_tokens_are_matched_whole_and_survive_save_load(tmp_path, tok):
    ids = tok.add_special_tokens(["<extract>", "<two words>"])
    assert ids == [tok.vocab_size - 2, tok.vocab_size - 1]
    assert tok.encode("the <two words> cat<extract>") == [0, 3, ids[1], 4, ids[0], 1]
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode("a <two words>") == [0, 6, ids[1], 1]


def test_bad_vocabularies_are_refused():
    with pytest.raises(TokenizerError, match="must start with"):
        WordCharTokenizer(["a", "<S>", "</S>", "<unk>"])
    with pytest.raises(TokenizerError, match="max_chars"):
        WordCharTokenizer([], max_chars=2)
    with pytest.raises(TokenizerError, match="max_size"):
        WordCharTokenizer.train([PTB], max_size=2)
    assert WordCharTokenizer.train([PTB], max_size=4).vocab_size == 4


def test_pretrain_builds_it_for_a_corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(PTB * 40, encoding="utf-8")
    tok = build_tokenizer_for(str(path), "word_chars", vocab_size=8)
    assert isinstance(tok, WordCharTokenizer) and tok.vocab_size == 8


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
                        min_size=1, max_size=70), max_size=6))
def test_any_words_give_framed_rows_of_bytes(words):
    words = [w for w in words if w.split() == [w]]
    tok = WordCharTokenizer([])
    got = tok.char_ids(words)
    assert got.tolist() == [bilm_tf_row("<S>"), *(bilm_tf_row(w) for w in words), bilm_tf_row("</S>")]
