"""HF transfo-xl layout <-> lmlab, anchored on golden outputs of transformers 4.44.2's TransfoXLLMHeadModel.

Transformer-XL left transformers in v5, so the reference runs in a separate environment: the goldens in
tests/oracles/transfo_xl/ were written once by tests/oracles/make_transfo_xl_goldens.py (see its
docstring). Each golden dir is a real save_pretrained dir (safetensors, or .bin where u/v are shared)
plus three consecutive segments of log-probabilities and memories. The `oracle` test feeds lmlab's
own to_hf output back to that environment when it exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmlab
from lmlab.checkpoints.convert import read_hf_weights
from lmlab.errors import ConversionError

GOLDENS = Path(__file__).resolve().parents[1] / "oracles" / "transfo_xl"
MAKER = GOLDENS.parent / "make_transfo_xl_goldens.py"
REPO = Path(__file__).resolve().parents[2]
# `make oracle` builds .venv-oracle (transformers 4.44); LMLAB_ORACLE_PYTHON names another Python.
ORACLE_PYTHON = Path(os.environ.get("LMLAB_ORACLE_PYTHON", REPO / ".venv-oracle" / "bin" / "python"))
NAMES = ["plain", "adaptive", "proj", "untied"]
T, SEGMENTS = 5, 3


def goldens(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(GOLDENS / name / "goldens.safetensors"))


@torch.no_grad()
def run_segments(model, ids):
    mems, logprobs, all_mems = None, [], []
    for s in range(SEGMENTS):
        out = model(ids[:, s * T:(s + 1) * T], state=mems)
        mems = out.state
        logprobs.append(out.logits)
        all_mems.append(mems)
    return logprobs, all_mems


@pytest.mark.parametrize("name", NAMES)
def test_from_hf_reproduces_three_segments_with_memory(name):
    model, tokenizer = lmlab.from_hf(GOLDENS / name)
    assert tokenizer is None and lmlab.models.registry.family_of(model) == "transfo-xl"
    g = goldens(name)
    logprobs, mems = run_segments(model, g["input_ids"])
    for s in range(SEGMENTS):
        torch.testing.assert_close(logprobs[s], g[f"logprobs.{s}"], atol=1e-4, rtol=0)
        for layer, m in enumerate(mems[s]):  # HF stores memory (M, B, D), lmlab (B, M, D)
            torch.testing.assert_close(m.transpose(0, 1), g[f"mems.{s}.{layer}"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_hf_default_zero_memory_start(name):
    # HF's mems=None starts from mem_len zero vectors; lmlab reproduces that when given them.
    model, _ = lmlab.from_hf(GOLDENS / name)
    c = model.config
    ids = goldens(name)["input_ids"][:, :T]
    zeros = [torch.zeros(ids.shape[0], c.mem_len, c.d_model) for _ in range(c.n_layers)]
    with torch.no_grad():
        got = model(ids, state=zeros).logits
    torch.testing.assert_close(got, goldens(name)["logprobs_zero_mems.0"], atol=1e-4, rtol=0)


def test_config_fields_map():
    model, _ = lmlab.from_hf(GOLDENS / "untied")
    c = model.config
    fields = (c.vocab_size, c.cutoffs, c.div_val, c.d_embed, c.mem_len, c.clamp_len)
    assert fields == (80, (10, 40), 2, 16, 7, 4)
    assert c.pre_ln and c.same_length and not c.untie_r and not c.tie_weight and c.tie_projs == (False,) * 3
    model, _ = lmlab.from_hf(GOLDENS / "adaptive")
    assert model.config.tie_projs == (False, True, True) and model.config.tie_weight
    assert model.softmax.projs["2"] is model.embed.projs["2"]


@pytest.mark.parametrize("name", NAMES)
def test_to_hf_round_trip(tmp_path, name):
    model, _ = lmlab.from_hf(GOLDENS / name)
    out = lmlab.to_hf(model, None, tmp_path / "hf")
    assert (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "transfo-xl" and config["architectures"] == ["TransfoXLLMHeadModel"]
    back, _ = lmlab.from_hf(out)
    assert back.config == model.config
    ids = goldens(name)["input_ids"]
    for a, b in zip(run_segments(back, ids)[0], run_segments(model, ids)[0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    state = read_hf_weights(out)
    if not model.config.untie_r:  # shared u/v written under every name HF has for them
        assert {"transformer.r_w_bias", "transformer.layers.1.dec_attn.r_r_bias"} <= set(state)


def test_to_hf_of_fresh_lmlab_models(tmp_path):
    for i, overrides in enumerate([{}, dict(cutoffs=(50, 120), div_val=2, untie_r=True, pre_ln=True),
                                   dict(cutoffs=(64,), d_embed=16, tie_projs=(True, True),
                                        tie_weight=False, same_length=True, clamp_len=5)]):
        torch.manual_seed(i)
        model = lmlab.build("transfo-xl", "tiny", **overrides).eval()
        back, _ = lmlab.from_hf(lmlab.to_hf(model, None, tmp_path / str(i)))
        ids = torch.randint(0, 256, (2, 15))
        for a, b in zip(run_segments(back, ids)[0], run_segments(model, ids)[0], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.oracle
@pytest.mark.skipif(not ORACLE_PYTHON.exists(), reason=f"no oracle environment at {ORACLE_PYTHON}")
def test_to_hf_output_loads_in_transformers(tmp_path):
    args = []
    for name in NAMES:
        model, _ = lmlab.from_hf(GOLDENS / name)
        hf_dir = lmlab.to_hf(model, None, tmp_path / name)
        args += [str(hf_dir), str(GOLDENS / name / "goldens.safetensors"), str(tmp_path / f"{name}.out")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(ORACLE_PYTHON), str(MAKER), "run", *args],  # one process: one import
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in NAMES:
        got, g = load_file(str(tmp_path / f"{name}.out")), goldens(name)
        for s in range(SEGMENTS):
            torch.testing.assert_close(got[f"logprobs.{s}"], g[f"logprobs.{s}"], atol=1e-5, rtol=0)


# ---- bad checkpoints: one ConversionError each, naming the file and the field ----------------------
def copy_golden(tmp_path, name="adaptive", **config_changes) -> Path:
    d = tmp_path / name
    shutil.copytree(GOLDENS / name, d)
    config = json.loads((d / "config.json").read_text())
    config.update(config_changes)
    (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.mark.parametrize("changes,message", [
    (dict(cutoffs=[20, 500]), r"config.json: .*cutoffs=\[20, 500\].*vocab_size=120"),
    (dict(cutoffs=[50, 20]), r"cutoffs=\[50, 20\]"),
    (dict(attn_type=2), "attn_type=2"),
    (dict(sample_softmax=64), "sample_softmax"),
    (dict(architectures=["TransfoXLForSequenceClassification"]), "TransfoXLForSequenceClassification"),
    (dict(d_model=15), "d_model"),
    (dict(untie_r=True), r"unexpected tensor\(s\) r_r_bias, r_w_bias .*untie_r"),
    (dict(div_val=1), "unexpected tensor"),
    (dict(d_inner=40), r"pos_ff.CoreNet.0.weight has shape \(32, 16\), config.json implies \(40, 16\)"),
])
def test_bad_config_errors(tmp_path, changes, message):
    with pytest.raises(ConversionError, match=message):
        lmlab.from_hf(copy_golden(tmp_path, **changes))


def test_tied_copies_must_agree(tmp_path):
    d = copy_golden(tmp_path, "proj")  # tie_word_embeddings: crit.out_layers.0.weight may be stored too
    state = load_file(str(d / "model.safetensors"))
    state["crit.out_layers.0.weight"] = state["transformer.word_emb.emb_layers.0.weight"] + 1
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(ConversionError, match="differs from"):
        lmlab.from_hf(d)
    state["crit.out_layers.0.weight"] = state["transformer.word_emb.emb_layers.0.weight"].clone()
    save_file(state, str(d / "model.safetensors"))
    lmlab.from_hf(d)  # an equal copy is fine


def test_missing_head_is_an_error(tmp_path):
    d = copy_golden(tmp_path, "proj")
    state = {k: v for k, v in load_file(str(d / "model.safetensors")).items() if not k.startswith("crit.")}
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"missing tensor\(s\) crit"):
        lmlab.from_hf(d)
