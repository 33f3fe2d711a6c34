"""The invertible detokenizers (GPT-2 §3.1) and `lmlab evaluate --detokenizer`."""

from __future__ import annotations

import json
import math

import pytest

import lmlab
from lmlab.cli import main
from lmlab.data.prepare import encode_documents
from lmlab.errors import ConfigError
from lmlab.eval.cli import evaluate_command
from lmlab.eval.detokenize import (
    DETOKENIZERS,
    detokenizer,
    original_words,
    ptb_detokenize,
    wikitext_detokenize,
)
from lmlab.tokenizers.byte_bpe import ByteBPETokenizer
from lmlab.tokenizers.words import WordTokenizer


@pytest.mark.parametrize("raw,want", [
    ("viewers ' opinions", "viewers' opinions"),
    ("abc 's monday night football", "abc's monday night football"),
    ("they do n't know", "they don't know"),
    ("we 're here , we 've seen it and we 'll stay", "we're here, we've seen it and we'll stay"),
    ("i 'm sure he 'd go", "i'm sure he'd go"),
    ("a $ N million deal", "a $N million deal"),
    ("prices rose N % .", "prices rose N%."),
    ("he said -LRB- quietly -RRB- : `` no '' .", 'he said (quietly): "no".'),
    ("a\\/s and 1\\*", "a/s and 1*"),
    (" consumers may want <unk> \n another line ", "consumers may want <unk>\nanother line"),
])
def test_ptb(raw, want):
    assert ptb_detokenize(raw) == want


@pytest.mark.parametrize("raw,want", [
    (" = = Career = = \n", "== Career ==\n"),
    (" = = = Early life = = = \n", "=== Early life ===\n"),
    (" = Valkyria Chronicles III = \n", "= Valkyria Chronicles III =\n"),
    ("In 1 @,@ 000 games", "In 1,000 games"),
    ("a state @-@ of @-@ the @-@ art ship", "a state-of-the-art ship"),
    ("it weighs 2 @.@ 5 kg", "it weighs 2.5 kg"),
    ('the " big " ship ( a boat ) ; it was n\'t .', 'the "big" ship (a boat); it wasn\'t.'),
    ("x = 5 , y ?", "x = 5, y?"),
    ("Sega 's [ 2 ] game !", "Sega's [2] game!"),
])
def test_wikitext(raw, want):
    assert wikitext_detokenize(raw) == want


def test_registry_and_word_count():
    assert set(DETOKENIZERS) == {"none", "ptb", "wikitext"}
    assert detokenizer("none")(" a  b ") == " a  b "
    with pytest.raises(ConfigError, match="unknown detokenizer"):
        detokenizer("moses")
    assert original_words("a b c\n\nd e\n") == 3 + 1 + 2 + 1  # words + one <eos> per line


WIKI = "".join(f" = = Part {i} = = \n The ship 's hull , {i} @,@ 000 tons , was n't " f"( nearly ) done . \n"
               for i in range(30))


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("bpe")
    tok = ByteBPETokenizer.train([WIKI, wikitext_detokenize(WIKI)], vocab_size=320)
    tiny_model_dir("gpt2", tok, max_seq_len=32).rename(d / "m")
    (d / "wiki.txt").write_text(WIKI)
    return d


def test_evaluate_detokenized_text_and_word_ppl(bpe_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    model_dir, data = bpe_dir / "m", str(bpe_dir / "wiki.txt")
    got = evaluate_command(str(model_dir), data, split="all", detokenize="wikitext")
    _, tok = lmlab.load(model_dir)
    ids = encode_documents([wikitext_detokenize(WIKI)], tok)
    assert got["tokens"] == len(ids) - 1  # the detokenized text was scored
    assert got["detokenizer"] == "wikitext" and got["words"] == original_words(WIKI)
    assert got["word_ppl"] == pytest.approx(math.exp(got["loss"] * got["tokens"] / got["words"]))
    plain = evaluate_command(str(model_dir), data, split="all")
    assert plain["tokens"] == len(encode_documents([WIKI], tok)) - 1 and "word_ppl" not in plain
    assert plain["tokens"] != got["tokens"]
    assert "word_ppl" not in evaluate_command(str(model_dir), data, split="all", detokenize="wikitext",
                                              max_tokens=50)


def test_cli_detokenizer(bpe_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    args = ["evaluate", str(bpe_dir / "m"), "--data", str(bpe_dir / "wiki.txt"), "--split", "all",
            "--detokenizer", "wikitext"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["detokenizer"] == "wikitext"


def test_refused_for_word_vocabularies_and_shards(bpe_dir, tmp_path):
    d = tmp_path / "words"
    tok = WordTokenizer.train([WIKI])
    lmlab.save(lmlab.build("gpt2", "tiny", vocab_size=tok.vocab_size), tok, d)
    with pytest.raises(ConfigError, match="word vocabulary"):
        evaluate_command(str(d), str(bpe_dir / "wiki.txt"), split="all", detokenize="ptb")
    with pytest.raises(ConfigError, match="token shard"):
        evaluate_command(str(bpe_dir / "m"), str(tmp_path / "x.bin"), detokenize="ptb")
    with pytest.raises(ConfigError, match="unknown detokenizer"):
        evaluate_command(str(bpe_dir / "m"), str(bpe_dir / "wiki.txt"), detokenize="moses")
