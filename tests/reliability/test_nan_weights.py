"""NaN or infinite weights are refused when they are read (issue 16, class 9b).

`lmlab.load` and `from_hf` (every layout, safetensors, sharded and `.bin` files) raise one line
naming the file and the tensor, instead of loading a model whose every output is NaN; `lmlab
evaluate` on such a dir says so instead of printing a NaN perplexity.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmlab
from checks import one_line_error
from lmlab.checkpoints.atomic import MANIFEST, write_manifest
from lmlab.cli import main
from lmlab.errors import CheckpointError, ConversionError
from lmlab.tokenizers.chars import CharTokenizer

BAD = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def tiny(family, **overrides):
    torch.manual_seed(0)
    return lmlab.build(family, "tiny", **overrides).eval()


def spoil(path: Path, name: str, value: float, index: int = 7) -> None:
    """Set one element of tensor `name` in the safetensors file `path` to `value`."""
    state = load_file(str(path))
    state[name].view(-1)[index] = value
    save_file(state, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("family, name", [("gpt2", "blocks.1.attn.c_attn.weight"), ("bert", "emb_ln.bias"),
                                          ("transfo-xl", "u")])
def test_lmlab_load(tmp_path, family, name, bad):
    saved = lmlab.save(tiny(family), None, tmp_path / "model")
    spoil(saved / "model.safetensors", name, BAD[bad], index=0)
    write_manifest(saved, sorted(json.loads((saved / MANIFEST).read_text())["files"]))
    what = "NaN" if bad == "nan" else "an infinite value"
    one_line_error(CheckpointError, lambda: lmlab.load(saved), str(saved / "model.safetensors"),
                   f"tensor {name} ", what)


def test_lmlab_load_half_precision(tmp_path):
    saved = lmlab.save(tiny("gpt2").to(torch.bfloat16), None, tmp_path / "model")
    spoil(saved / "model.safetensors", "wpe.weight", float("nan"), index=100)
    write_manifest(saved, ["config.json", "model.safetensors"])
    one_line_error(CheckpointError, lambda: lmlab.load(saved), "tensor wpe.weight holds NaN", "index 100 ")


def test_evaluate_refuses_instead_of_printing_nan(tmp_path, corpus, capsys):
    tokenizer = CharTokenizer.train([corpus.read_text()])
    saved = lmlab.save(tiny("gpt2", vocab_size=tokenizer.vocab_size), tokenizer, tmp_path / "model")
    spoil(saved / "model.safetensors", "ln_f.weight", float("nan"))
    write_manifest(saved, sorted(json.loads((saved / MANIFEST).read_text())["files"]))
    capsys.readouterr()
    code = main(["evaluate", str(saved), "--data", str(corpus), "--split", "train", "--max-tokens", "200"])
    captured = capsys.readouterr()
    assert code == 2 and "NaN" not in captured.out, captured
    assert captured.err.startswith("lmlab evaluate: error: "), captured
    assert "tensor ln_f.weight holds NaN" in captured.err, captured


@pytest.mark.parametrize("family, name", [("gpt2", "transformer.h.0.mlp.c_fc.weight"),
                                          ("gpt", "transformer.tokens_embed.weight"),
                                          ("bert", "bert.encoder.layer.1.output.dense.bias"),
                                          ("transfo-xl", "transformer.layers.1.pos_ff.CoreNet.3.weight")])
def test_from_hf(tmp_path, family, name):
    hf = lmlab.to_hf(tiny(family), None, tmp_path / "hf")
    spoil(hf / "model.safetensors", name, float("nan"))
    one_line_error(ConversionError, lambda: lmlab.from_hf(hf), str(hf / "model.safetensors"),
             f"tensor {name} holds NaN")


def test_from_hf_bin_and_shards(tmp_path):
    hf = lmlab.to_hf(tiny("gpt2"), None, tmp_path / "hf")
    state = load_file(str(hf / "model.safetensors"))
    state["transformer.ln_f.bias"][3] = float("inf")
    (hf / "model.safetensors").unlink()
    torch.save(state, hf / "pytorch_model.bin")
    one_line_error(ConversionError, lambda: lmlab.from_hf(hf), str(hf / "pytorch_model.bin"),
             "tensor transformer.ln_f.bias holds an infinite value")
    (hf / "pytorch_model.bin").unlink()
    names = sorted(state)
    shards = {"a.safetensors": [n for n in names if n != "transformer.ln_f.bias"],
              "b.safetensors": ["transformer.ln_f.bias"]}
    for shard, part in shards.items():
        save_file({n: state[n] for n in part}, str(hf / shard), metadata={"format": "pt"})
    index = {"weight_map": {n: shard for shard, part in shards.items() for n in part}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    one_line_error(ConversionError, lambda: lmlab.from_hf(hf), str(hf / "b.safetensors"),
                   "transformer.ln_f.bias")


def test_finite_weights_still_load(tmp_path):
    saved = lmlab.save(tiny("gpt2"), None, tmp_path / "model")
    model, _ = lmlab.load(saved)
    converted, _ = lmlab.from_hf(lmlab.to_hf(model, None, tmp_path / "hf"))
    assert all(torch.isfinite(p).all() for p in converted.parameters())
