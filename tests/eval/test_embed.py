"""`lmlab embed`: per-layer features of BERT and GPT-2 model dirs, with word and mean pooling."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import lmlab
from lmlab.cli import main
from lmlab.errors import ConfigError
from lmlab.eval.embed import embed_texts, parse_layers, token_offsets, word_index
from lmlab.tokenizers.byte_bpe import ByteBPETokenizer
from lmlab.tokenizers.wordpiece import WordPieceTokenizer

TEXTS = ["The cat sat on the mat.", "A dog ran", "unbelievably, the catamaran sailed home quickly today"]
TRAIN = [" ".join(TEXTS)] * 3 + ["the cats and dogs sat on mats and ran home"] * 3


@pytest.fixture(scope="module")
def bert_dir(tiny_model_dir):
    return tiny_model_dir("bert", WordPieceTokenizer.train(TRAIN, vocab_size=80))


@pytest.fixture(scope="module")
def gpt2_dir(tiny_model_dir):
    return tiny_model_dir("gpt2", ByteBPETokenizer.train(TRAIN, vocab_size=300))


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text(TEXTS[0] + "\n\n" + TEXTS[1] + "\n" + TEXTS[2] + "\n")  # a blank line is skipped
    return path


def test_bert_per_token_states_of_chosen_layers(bert_dir, input_file, tmp_path):
    out = tmp_path / "f.safetensors"
    args = ["embed", str(bert_dir), "--input", str(input_file), "--out", str(out), "--layers", "-1,0"]
    assert main(args) == 0
    tensors = load_file(str(out))
    model, tok = lmlab.load(bert_dir)
    with safe_open(str(out), "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    assert meta["layers"] == [2, 0] and meta["pool"] == "none" and meta["line_numbers"] == [1, 3, 4]
    for i, text in enumerate(TEXTS):
        ids = [tok.cls_token_id, *tok.encode(text), tok.sep_token_id]
        assert tensors[f"text.{i}.input_ids"].tolist() == ids
        alone = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for j in (0, 2):
            assert tensors[f"text.{i}.layer.{j}"].shape == (len(ids), 32)
            torch.testing.assert_close(tensors[f"text.{i}.layer.{j}"], alone[j][0], atol=1e-5, rtol=1e-5)


def test_word_pooling_is_the_mean_of_each_words_sub_tokens(bert_dir):
    model, tok = lmlab.load(bert_dir)
    text = TEXTS[2]
    tensors = embed_texts(model, tok, [text], layers="-1", pool="word")
    ids, offsets = tok.encode_with_offsets(text)
    states = model(torch.tensor([[tok.cls_token_id, *ids, tok.sep_token_id]]), output_hidden_states=True)
    h = states.hidden_states[-1][0, 1:-1]  # without [CLS]/[SEP]
    words = text.split()
    assert tensors["text.0.layer.2"].shape == (len(words), 32)
    assert tensors["text.0.words"].tolist() == list(range(len(words)))
    assert len(ids) > len(words)  # some words are several pieces (and "," is a word piece of its own)
    for w, word in enumerate(words):
        start = text.index(word) if w == 0 else text.index(word, sum(len(x) + 1 for x in words[:w]))
        pieces = [t for t, (s, _) in enumerate(offsets) if start <= s < start + len(word)]
        torch.testing.assert_close(tensors["text.0.layer.2"][w], h[pieces].mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which", ["bert", "gpt2"])
def test_mean_pooling_ignores_pads(which, bert_dir, gpt2_dir):
    model, tok = lmlab.load(bert_dir if which == "bert" else gpt2_dir)
    together = embed_texts(model, tok, TEXTS, layers="all", pool="mean", batch_size=3)
    n_states = model.config.n_layers + 1
    assert sorted(together) == [f"layer.{j}" for j in range(n_states)]
    for i, text in enumerate(TEXTS):  # a short text padded in a batch = the text alone
        alone = embed_texts(model, tok, [text], layers="all", pool="mean")
        for j in range(n_states):
            assert together[f"layer.{j}"].shape == (3, model.config.d_model)
            torch.testing.assert_close(together[f"layer.{j}"][i], alone[f"layer.{j}"][0],
                                       atol=1e-5, rtol=1e-5)


def test_gpt2_dir_per_token_and_word_pooling(gpt2_dir, input_file, tmp_path):
    out = tmp_path / "g.safetensors"
    args = ["embed", str(gpt2_dir), "--input", str(input_file), "--out", str(out), "--pool", "word"]
    assert main(args) == 0
    tensors = load_file(str(out))
    model, tok = lmlab.load(gpt2_dir)
    for i, text in enumerate(TEXTS):
        assert tensors[f"text.{i}.layer.{model.config.n_layers}"].shape == (len(text.split()), 48)
    ids, offsets = token_offsets(tok, TEXTS[2])
    assert ids == tok.encode(TEXTS[2]) and "".join(TEXTS[2][s:e] for s, e in offsets) == TEXTS[2]
    assert word_index("a  bc d", [(0, 1), (1, 3), (3, 5), (5, 7)]) == [0, -1, 1, 2]


def test_errors_name_the_problem(bert_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    out = str(tmp_path / "x.safetensors")
    assert main(["embed", str(bert_dir), "--input", str(empty), "--out", out]) == 2
    long = tmp_path / "long.txt"
    long.write_text("short line\n" + " ".join(["cat"] * 80) + "\n")
    with pytest.raises(Exception, match=r"long.txt:2: 82 tokens.*--max-len"):
        from lmlab.eval.embed import embed_command

        embed_command(str(bert_dir), str(long), out)
    assert main(["embed", str(bert_dir), "--input", str(long), "--out", out, "--max-len", "16"]) == 0
    tensors = load_file(out)
    assert tensors["text.1.layer.2"].shape == (16, 32)
    assert tensors["text.1.input_ids"][-1] == 3  # still ends in [SEP]
    with pytest.raises(ConfigError, match="layer 7"):
        parse_layers("7", 3)
    assert parse_layers("-1,-3", 3) == [2, 0] and parse_layers("all", 3) == [0, 1, 2]
