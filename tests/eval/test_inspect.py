"""`lmlab inspect`: per-token loss, entropy and rank equal the model's own numbers; the PNG reads back."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import imread

import lmlab
from lmlab.cli import main
from lmlab.errors import DataError
from lmlab.eval import token_losses
from lmlab.eval.inspect import inspect_text, plot_inspection, token_label, token_statistics
from lmlab.tokenizers.byte_bpe import ByteBPETokenizer
from lmlab.tokenizers.chars import CharTokenizer
from lmlab.tokenizers.words import WordTokenizer

TEXT = "the cat sat on the mat.\nthe dog ran to the house, é!\n"


def tokenizers():
    corpus = [TEXT * 20]
    return {"byte_bpe": ByteBPETokenizer.train(corpus, vocab_size=280), "words": WordTokenizer.train(corpus),
            "chars": CharTokenizer.train(corpus)}


@pytest.fixture(scope="module")
def saved(tiny_model_dir):
    return {kind: tiny_model_dir("gpt2", tok, max_seq_len=16) for kind, tok in tokenizers().items()}


def by_hand(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()  # (N-1, V)
    target = torch.tensor(ids[1:])
    loss = F.cross_entropy(logits, target, reduction="none")
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    rank = [1 + sum(int(v > logits[t, ids[t + 1]]) for v in logits[t]) for t in range(len(ids) - 1)]
    return loss, entropy, rank


@pytest.mark.parametrize("kind", ["byte_bpe", "words", "chars"])
def test_numbers_equal_the_models_own(saved, kind):
    model, tok = lmlab.load(saved[kind])
    text = "the cat sat on"  # fits the 16-token context
    ids = tok.encode(text)
    assert len(ids) <= 16
    got = inspect_text(model, tok, text)
    loss, entropy, rank = by_hand(model, ids)
    assert got["loss"][0] is None and got["entropy"][0] is None and got["rank"][0] is None
    assert torch.allclose(torch.tensor(got["loss"][1:], dtype=torch.float64), loss, atol=1e-5)
    assert torch.allclose(torch.tensor(got["entropy"][1:], dtype=torch.float64), entropy, atol=1e-5)
    assert got["rank"][1:] == rank
    assert got["ids"] == ids and len(got["tokens"]) == len(ids)
    bits = inspect_text(model, tok, text, unit="bits")
    assert bits["loss"][1] == pytest.approx(got["loss"][1] / math.log(2))
    assert bits["entropy"][2] == pytest.approx(got["entropy"][2] / math.log(2))


def test_long_text_uses_sliding_windows(saved):
    model, tok = lmlab.load(saved["chars"])
    ids = tok.encode(TEXT * 2)  # ~100 characters, context 16
    stats = token_statistics(model, ids, stride=5)
    want = token_losses(model, torch.tensor(ids), window=16, stride=5)
    assert torch.allclose(stats["loss"], want, atol=1e-5)
    assert stats["rank"].min() >= 1 and stats["entropy"].max() <= math.log(model.config.vocab_size) + 1e-5
    assert len(inspect_text(model, tok, TEXT * 2)["loss"]) == len(ids)


def test_labels_show_whitespace_and_partial_bytes():
    toks = tokenizers()
    bpe = toks["byte_bpe"]
    labels = [token_label(bpe, i) for i in bpe.encode("the cat\n\tx")]
    assert "␣cat" in labels and any("⏎" in x for x in labels) and any("⇥" in x for x in labels)
    e_bytes = [token_label(bpe, i) for i in bpe.encode("é")]
    assert "".join(e_bytes) in ("é", "\\xc3\\xa9")
    assert token_label(bpe, bpe.token_to_id("Ã")) == "\\xc3"  # the first byte of é alone
    words = toks["words"]
    assert [token_label(words, i) for i in words.encode("the cat\nsat")] == ["the", "cat", "⏎", "sat"]
    assert [token_label(toks["chars"], i) for i in toks["chars"].encode("a c")] == ["a", "␣", "c"]


@pytest.mark.parametrize("kind", ["byte_bpe", "words", "chars"])
def test_cli_writes_a_readable_png_and_json(saved, kind, tmp_path, capsys):
    out = tmp_path / "plots" / f"{kind}.png"
    args = ["inspect", str(saved[kind]), "--text", TEXT * 2, "--out", str(out), "--per-strip", "24"]
    assert main(args) == 0
    image = imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert set(data) >= {"tokens", "loss", "entropy", "rank", "unit"}
    assert data["loss"][0] is None and len(data["loss"]) == len(data["tokens"])
    assert "mean loss" in capsys.readouterr().out


def test_json_path_bits_and_errors(saved, tmp_path):
    js = tmp_path / "numbers.json"
    assert main(["inspect", str(saved["words"]), "--text", "the cat sat", "--out", str(tmp_path / "a.png"),
                 "--json", str(js), "--bits"]) == 0
    assert json.loads(js.read_text())["unit"] == "bits"
    model, tok = lmlab.load(saved["words"])
    with pytest.raises(DataError, match="at least 2"):
        inspect_text(model, tok, "the")
    assert main(["inspect", str(saved["words"]), "--text", "", "--out", str(tmp_path / "b.png")]) == 2


@pytest.mark.parametrize("flag", ["--out", "--json"])
def test_an_output_path_that_is_a_folder_is_refused_before_any_work(saved, tmp_path, capsys, flag):
    paths = {"--out": str(tmp_path / "a.png"), "--json": str(tmp_path / "a.json"), flag: str(tmp_path)}
    args = ["inspect", str(saved["words"]), "--text", "the cat sat", "--out", paths["--out"],
            "--json", paths["--json"]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{flag} {tmp_path} is a folder; expected the path of a file to write"), err
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "a.json").exists()


def test_single_strip_plot(saved, tmp_path):
    model, tok = lmlab.load(saved["words"])
    plot_inspection(inspect_text(model, tok, "the cat sat"), tmp_path / "x.png")
    assert imread(tmp_path / "x.png").shape[2] in (3, 4)


def test_character_transformer_after_a_seed_text(tiny_model_dir, tmp_path):
    """The lecture's Fig. 6 strip: a character model reads a seed first; every shown character then
    has a prediction, equal to the paper's protocol (stride 1) over seed + text."""
    tok = tokenizers()["chars"]
    model_dir = tiny_model_dir("char-transformer", tok, max_seq_len=16)
    model, _ = lmlab.load(model_dir)
    seed, text = "the dog ran to the house, ", "the cat sat"
    out = tmp_path / "fig6.png"
    assert main(["inspect", str(model_dir), "--text", text, "--seed-text", seed * 3, "--out", str(out),
                 "--stride", "1", "--bits"]) == 0
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert data["seed_tokens"] == 16 and len(data["loss"]) == len(data["tokens"]) == len(text)
    assert None not in data["loss"]
    ids = tok.encode((seed * 3)[-16:] + text)
    want = token_losses(model, torch.tensor(ids), window=16, stride=1)[-len(text):] / math.log(2)
    assert torch.allclose(torch.tensor(data["loss"], dtype=torch.float64), want.double(), atol=1e-5)
    assert imread(out).ndim == 3
    one = inspect_text(model, tok, "x", seed_text="the")  # after a seed, one character is enough
    assert len(one["loss"]) == 1 and one["loss"][0] is not None
