"""GPT-2 byte-level BPE: lossless round trips, and ids identical to transformers' GPT-2 tokenizer."""

import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import TokenizerError
from lmlab.tokenizers import load_tokenizer
from lmlab.tokenizers.byte_bpe import EOT, ByteBPETokenizer

ENGLISH = (
    "The quick brown fox jumps over the lazy dog. It's 2019, and we've trained 1,500 models!\n"
    "Language models don't read words; they read bytes -- all 256 of them.   Tabs\tand\r\nCRLF.\n"
)
KOREAN = "안녕하세요. 오늘 날씨가 좋네요! 언어 모델은 바이트를 읽습니다. 한국어 문장도 잘 됩니다.\n"
OTHER = "Emoji 😀🎉👍🏽, accents café naïve, math ∑∫√, Chinese 中文, Arabic مرحبا.\n"
MIXED = [
    "Hello world! 안녕하세요 세계 😀",
    "  leading spaces, trailing spaces   ",
    f"doc one{EOT}doc two {EOT} doc three",
    "numbers 123456789 and contractions: I'm, you're, they'll, it's, we'd",
    "control \x00\x01\x1b[0m chars\n\n\tand newlines\r\n",
    "мир 世界 🌍 ½ ﬁ é e\u0301",
    "",
]


@pytest.fixture(scope="module")
def corpus():
    docs = []
    for i in range(40):  # a few KB: enough for hundreds of merges
        docs.append(f"{ENGLISH}{KOREAN * (1 + i % 3)}{OTHER} Document number {i}.")
    return docs


@pytest.fixture(scope="module")
def tok(corpus):
    return ByteBPETokenizer.train(corpus, vocab_size=600)


@pytest.fixture(scope="module")
def hf_dir(tok, tmp_path_factory):
    # Only the GPT-2 files: transformers must read vocab.json + merges.txt, nothing else.
    d = tmp_path_factory.mktemp("hf")
    tok.save_gpt2_files(d)
    return d


@pytest.fixture(scope="module")
def hf_tok(hf_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.GPT2TokenizerFast.from_pretrained(str(hf_dir))


def tok_files(tok, d):
    tok.save(d)
    return d / "vocab.json", d / "merges.txt"


def test_train_layout(tok):
    assert 257 < tok.vocab_size <= 600
    assert tok.eos_token_id == tok.vocab_size - 1 == tok.token_to_id(EOT)  # last, as in GPT-2
    assert tok.special_tokens == [EOT]
    assert tok.id_to_token(tok.eos_token_id) == EOT
    # learned merges shorten text well below one token per byte
    assert len(tok.encode(KOREAN)) < len(KOREAN.encode("utf-8")) / 2


def test_train_rejects_tiny_vocab():
    with pytest.raises(TokenizerError, match="vocab_size"):
        ByteBPETokenizer.train(["abc"], vocab_size=100)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="안녕하세요 세계😀🎉 abc\n\t<|endoftext|>"),
                 st.text(st.characters(codec="utf-8"), max_size=50)))
def test_roundtrip_any_text(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_every_utf8_byte_roundtrips(tok):
    # 1-, 2-, 3- and 4-byte characters: every byte that valid UTF-8 can contain.
    chars = [chr(c) for c in range(0x800) if not 0xD800 <= c < 0xE000]
    chars += [chr(c) for c in range(0x800, 0x110000, 997) if not 0xD800 <= c < 0xE000]
    text = "".join(chars)
    assert tok.decode(tok.encode(text)) == text


def test_endoftext_is_one_special_id(tok):
    ids = tok.encode(f"a{EOT}b")
    assert ids.count(tok.eos_token_id) == 1
    assert tok.decode(ids) == f"a{EOT}b"
    # a partial spelling is ordinary text
    assert tok.eos_token_id not in tok.encode("<|endoftext|")


def test_ids_match_transformers(tok, hf_tok):
    for text in MIXED + [ENGLISH, KOREAN, OTHER]:
        ids = tok.encode(text)
        assert hf_tok.encode(text, add_special_tokens=False) == ids, text
        assert hf_tok.decode(ids) == tok.decode(ids)
    assert hf_tok.eos_token_id == tok.eos_token_id
    assert len(hf_tok) == tok.vocab_size


def test_encode_batch_matches_encode(tok):
    assert tok.encode_batch(MIXED) == [tok.encode(t) for t in MIXED]


def test_incomplete_utf8_decodes_with_replacement(tok):
    raw = "😀".encode("utf-8")
    ids = tok.encode("x😀")
    pieces = [tok.decode_bytes([i]) for i in ids]
    assert b"".join(pieces) == b"x" + raw  # streaming by bytes never splits the emoji
    for k in range(len(ids) + 1):
        assert tok.decode(ids[:k]) == tok.decode_bytes(ids[:k]).decode("utf-8", errors="replace")
    assert tok.decode(ids[:-1]).startswith("x\ufffd")


def test_lone_surrogate_is_rejected(tok):
    with pytest.raises(TokenizerError, match="surrogate"):
        tok.encode("ok \ud800")
    with pytest.raises(TokenizerError, match="surrogate"):
        tok.encode_batch(["fine", "bad \udfff"])


def test_decode_bad_id(tok):
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.decode([-1])


def test_save_load_roundtrip(tok, tmp_path):
    tok.save(tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    assert spec["kind"] == "byte_bpe" and spec["special_tokens"] == [EOT]
    back = load_tokenizer(tmp_path)
    assert isinstance(back, ByteBPETokenizer)
    assert back.vocab_size == tok.vocab_size and back.eos_token_id == tok.eos_token_id
    for text in MIXED:
        assert back.encode(text) == tok.encode(text)


def test_add_special_tokens(corpus, tmp_path):
    tok = ByteBPETokenizer.train(corpus[:5], vocab_size=300)
    n = tok.vocab_size
    ids = tok.add_special_tokens(["<start>", "<delim>", "<extract>"])
    assert ids == [n, n + 1, n + 2] and tok.vocab_size == n + 3
    assert tok.add_special_tokens(["<delim>", EOT]) == [n + 1, tok.eos_token_id]  # already known
    text = "<start>a question<delim>an answer<extract>"
    got = tok.encode(text)
    assert got[0] == n and got[-1] == n + 2 and n + 1 in got
    assert tok.decode(got) == text
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.encode(text) == got and back.special_tokens == [EOT, "<start>", "<delim>", "<extract>"]
    with pytest.raises(TokenizerError):
        tok.add_special_tokens([""])


def test_openai_file_names(tok, tmp_path):
    vocab, merges = tok_files(tok, tmp_path / "saved")
    shutil.copy(vocab, tmp_path / "encoder.json")
    shutil.copy(merges, tmp_path / "vocab.bpe")
    back = ByteBPETokenizer.from_dir(tmp_path)
    assert [back.encode(t) for t in MIXED] == [tok.encode(t) for t in MIXED]
    assert back.eos_token_id == tok.eos_token_id


def test_transformers_saved_dir(hf_tok, tok, tmp_path):
    # Newer transformers save only an HF tokenizer.json; both layouts must load.
    hf_tok.save_pretrained(str(tmp_path))
    back = ByteBPETokenizer.from_dir(tmp_path)
    assert [back.encode(t) for t in MIXED] == [tok.encode(t) for t in MIXED]
    assert back.eos_token_id == tok.eos_token_id


def test_find_in_dir(tmp_path):
    assert ByteBPETokenizer.find_in_dir(tmp_path) is None
    assert load_tokenizer(tmp_path) is None
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        ByteBPETokenizer.from_dir(tmp_path)
    # a tokenizer.json of another kind (BERT's WordPiece, lmlab's chars) is not a GPT-2 tokenizer
    for spec in ({"model": {"type": "WordPiece", "vocab": {}}}, {"kind": "chars", "tokens": []}):
        (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
        assert ByteBPETokenizer.find_in_dir(tmp_path) is None


def test_missing_file(tok, tmp_path):
    vocab, merges = tok_files(tok, tmp_path)
    merges.unlink()
    with pytest.raises(TokenizerError, match="merges.txt.*not found"):
        ByteBPETokenizer.load(tmp_path)
    with pytest.raises(TokenizerError, match="nothing.json.*not found"):
        ByteBPETokenizer.from_files(tmp_path / "nothing.json", vocab)


def test_corrupt_json(tok, tmp_path):
    vocab, merges = tok_files(tok, tmp_path)
    vocab.write_text('{"a": 0, ', encoding="utf-8")
    with pytest.raises(TokenizerError, match="vocab.json"):
        ByteBPETokenizer.from_files(vocab, merges)
    vocab.write_text('["a", "b"]', encoding="utf-8")
    with pytest.raises(TokenizerError, match="vocab.json.*JSON object"):
        ByteBPETokenizer.from_files(vocab, merges)
    (tmp_path / "tokenizer.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_malformed_merges_line(tok, tmp_path):
    vocab, merges = tok_files(tok, tmp_path)
    lines = merges.read_text(encoding="utf-8").split("\n")
    lines[2] = "onlyonetoken"
    merges.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"merges.txt: line 3: malformed"):
        ByteBPETokenizer.from_files(vocab, merges)
    lines[2] = "Ġ zzzunknown"
    merges.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"merges.txt: line 3: token 'zzzunknown' is not in vocab.json"):
        ByteBPETokenizer.from_files(vocab, merges)
