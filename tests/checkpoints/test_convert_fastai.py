"""fastai AWD-LSTM language models <-> lmlab (lmlab.checkpoints.convert.fastai_awd): the files fastai
wrote (tests/oracles/ulmfit), both vocabulary formats, the way back, and bad inputs as one line."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.cli import main
from lmlab.errors import ConversionError

GOLDENS = Path(__file__).resolve().parents[1] / "oracles" / "ulmfit"
PTH, ITOS = GOLDENS / "lm.pth", GOLDENS / "itos.pkl"


def outputs(model, seed=0):
    ids = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(ids).logits


def itos() -> list[str]:
    with open(ITOS, "rb") as f:
        return pickle.load(f)  # the test's own fixture, written by the oracle script


def test_text_vocabulary_gives_the_same_model_and_tokens(tmp_path):
    model, tok = lmlab.from_original("ulmfit", PTH, ITOS)
    (tmp_path / "vocab.txt").write_text("\n".join(itos()) + "\n", encoding="utf-8")
    again, tok2 = lmlab.from_original("ulmfit", PTH, tmp_path / "vocab.txt")
    torch.testing.assert_close(outputs(again), outputs(model), rtol=0, atol=0)
    assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == itos()
    assert tok2.vocab_size == tok.vocab_size and tok.kind == "fastai_words"


def test_to_fastai_writes_fastais_names_and_converts_back(tmp_path):
    model, tok = lmlab.from_original("ulmfit", PTH, ITOS)
    lmlab.to_original(model, tok, tmp_path / "fa")
    theirs = torch.load(PTH, weights_only=True)
    ours = torch.load(tmp_path / "fa" / "lm.pth", weights_only=True)
    assert list(ours) == list(theirs)
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)
    back, _ = lmlab.from_original("ulmfit", tmp_path / "fa" / "lm.pth", tmp_path / "fa" / "itos.pkl")
    torch.testing.assert_close(outputs(back), outputs(model), rtol=0, atol=0)


def test_fastai_v1_files_and_learn_save_wrappers_load(tmp_path):
    state = torch.load(PTH, weights_only=True)
    # v1 kept the last dropped copy of W_hh too: ignored
    v1 = dict(state)
    for i in range(3):
        v1[f"0.rnns.{i}.module.weight_hh_l0"] = torch.zeros_like(state[f"0.rnns.{i}.weight_hh_l0_raw"])
    torch.save({"model": v1, "opt": {"state": {}, "param_groups": [{"lr": 0.1}]}}, tmp_path / "v1.pth")
    model, _ = lmlab.from_original("ulmfit", tmp_path / "v1.pth", ITOS)
    reference, _ = lmlab.from_original("ulmfit", PTH, ITOS)
    torch.testing.assert_close(outputs(model), outputs(reference), rtol=0, atol=0)


def test_cli_converts_both_ways(tmp_path, capsys):
    assert main(["convert", "--from-fastai", str(PTH), str(ITOS), "--out", str(tmp_path / "m")]) == 0
    model, tok = lmlab.load(tmp_path / "m")
    assert lmlab.models.registry.family_of(model) == "ulmfit" and tok.kind == "fastai_words"
    assert main(["convert", "--to-fastai", str(tmp_path / "m"), "--out", str(tmp_path / "fa")]) == 0
    assert (tmp_path / "fa" / "lm.pth").is_file() and (tmp_path / "fa" / "itos.pkl").is_file()


def test_a_vocabulary_of_another_model_names_both_sizes(tmp_path, capsys):
    (tmp_path / "vocab.txt").write_text("\n".join(itos()[:-3]) + "\n", encoding="utf-8")
    with pytest.raises(ConversionError, match=r"vocabulary has 37 tokens but the weights' embedding .* 40 r"):
        lmlab.from_original("ulmfit", PTH, tmp_path / "vocab.txt")
    assert main(["convert", "--from-fastai", str(PTH), str(tmp_path / "vocab.txt"), "--out",
                 str(tmp_path / "m")]) == 2
    assert "\n" not in capsys.readouterr().err.strip()


class Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


@pytest.mark.parametrize("payload", [Payload(), {"a": 1}, ["ok", 3], {"xxunk"}], ids=str)
def test_the_vocabulary_unpickler_admits_a_list_of_strings_only(tmp_path, payload, capsys):
    path = tmp_path / "itos.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ConversionError, match="list of strings"):
        lmlab.from_original("ulmfit", PTH, path)
    assert "pickle code ran" not in capsys.readouterr().out


def test_weights_that_are_not_an_awd_lstm_are_one_line(tmp_path):
    torch.save({"weight": torch.zeros(3, 3)}, tmp_path / "x.pth")
    with pytest.raises(ConversionError, match="missing tensor 0.encoder.weight"):
        lmlab.from_original("ulmfit", tmp_path / "x.pth", ITOS)
    state = torch.load(PTH, weights_only=True)
    state["1.decoder.weight"] = state["1.decoder.weight"] + 1
    torch.save(state, tmp_path / "untied.pth")
    with pytest.raises(ConversionError, match="only tied"):
        lmlab.from_original("ulmfit", tmp_path / "untied.pth", ITOS)
    with pytest.raises(ConversionError, match="takes 2 files"):
        lmlab.from_original("ulmfit", PTH)
