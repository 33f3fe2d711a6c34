"""HF gpt2 / openai-gpt layouts <-> lmlab, anchored on live transformers models with the same weights.

The HF models are built from tiny configs with widened random weights (N(0, 0.3) on every
parameter, seeded), so a mis-mapped or untransposed tensor cannot hide behind near-zero values.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # never download: every reference is built right here

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import lmlab  # noqa: E402
from lmlab.checkpoints.convert.cli import convert_command  # noqa: E402
from lmlab.errors import ConversionError  # noqa: E402
from lmlab.tokenizers.byte_bpe import ByteBPETokenizer  # noqa: E402

TINY = dict(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)
LAYOUTS = {
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel),
    "openai-gpt": (transformers.OpenAIGPTConfig, transformers.OpenAIGPTLMHeadModel),
}
TEXTS = ["Hello world, hello there!", "  leading spaces and\ttabs\nnew lines", "naïve café — 東京 🚀",
         "end<|endoftext|>start", "numbers 12345 and 'quotes' don't"]


def hf_model(model_type: str, **overrides):
    config_cls, model_cls = LAYOUTS[model_type]
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def write_hf_dir(model, path, fmt: str):
    """fmt "safetensors": save_pretrained (`transformer.` keys, tied head once); "sharded": the same
    split over several files with an index. fmt "bin": a
    pytorch_model.bin of a bare *Model as older releases ship it (no prefix, causal-mask buffers)."""
    if fmt in ("safetensors", "sharded"):
        model.save_pretrained(path, **({"max_shard_size": "20KB"} if fmt == "sharded" else {}))
        return path
    model.config.save_pretrained(path)
    state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)
    for i in range(model.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64))[None, None]
    torch.save(state, path / "pytorch_model.bin")
    return path


def batch(seed=1, B=3, T=20):
    return torch.randint(0, TINY["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def hf_logits(model, ids):
    return model(ids).logits


@torch.no_grad()
def our_logits(model, ids):
    return model(ids).logits


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin"])
@pytest.mark.parametrize("model_type", list(LAYOUTS))
def test_from_hf_logits_and_greedy_generation(tmp_path, model_type, fmt):
    ref = hf_model(model_type)
    model, tokenizer = lmlab.from_hf(write_hf_dir(ref, tmp_path, fmt))
    assert tokenizer is None  # no tokenizer files in the dir
    assert lmlab.models.registry.family_of(model) == {"gpt2": "gpt2", "openai-gpt": "gpt"}[model_type]
    ids = batch()
    torch.testing.assert_close(our_logits(model, ids), hf_logits(ref, ids), atol=1e-4, rtol=1e-4)

    ours = lmlab.generate(model, ids, max_new_tokens=30)
    theirs = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("model_type", list(LAYOUTS))
def test_to_hf_loads_back_in_transformers(tmp_path, model_type):
    ref = hf_model(model_type)
    model, _ = lmlab.from_hf(write_hf_dir(ref, tmp_path / "in", "safetensors"))
    lmlab.to_hf(model, None, tmp_path / "out")
    back, info = LAYOUTS[model_type][1].from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids = batch(seed=2)
    torch.testing.assert_close(hf_logits(back.eval(), ids), our_logits(model, ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "gpt"])
def test_lmlab_built_model_to_hf(tmp_path, family):
    # HF's openai-gpt MLP is always 4·d wide, as the tiny preset's is.
    model = lmlab.build(family, "tiny").eval()
    lmlab.to_hf(model, None, tmp_path)
    model_type = {"gpt2": "gpt2", "gpt": "openai-gpt"}[family]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == model_type
    back = LAYOUTS[model_type][1].from_pretrained(tmp_path).eval()
    ids = batch(seed=3) % model.config.vocab_size
    torch.testing.assert_close(hf_logits(back, ids), our_logits(model, ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type", list(LAYOUTS))
def test_lmlab_save_load_round_trip_after_from_hf(tmp_path, model_type):
    model, tokenizer = lmlab.from_hf(write_hf_dir(hf_model(model_type), tmp_path / "hf", "safetensors"))
    lmlab.save(model, tokenizer, tmp_path / "lm")
    again, _ = lmlab.load(tmp_path / "lm")
    ids = batch(seed=4)
    assert torch.equal(our_logits(model, ids), our_logits(again, ids))


# ---- tokenizers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def byte_tokenizer():
    corpus = [" ".join(TEXTS) + " the quick brown fox jumps over the lazy dog. " * 20] * 3
    return ByteBPETokenizer.train(corpus, vocab_size=300, min_frequency=2)


def test_gpt2_dir_with_tokenizer_gives_same_ids_as_hf(tmp_path, byte_tokenizer):
    # Write the dir the way transformers does: its own tokenizer saved with save_pretrained.
    files = tmp_path / "files"
    byte_tokenizer.save_gpt2_files(files)
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(files)
    hf_dir = write_hf_dir(hf_model("gpt2"), tmp_path / "hf", "safetensors")
    hf_tok.save_pretrained(hf_dir)
    reloaded = transformers.AutoTokenizer.from_pretrained(hf_dir)

    _, tokenizer = lmlab.from_hf(hf_dir)
    assert tokenizer is not None
    for text in TEXTS:
        assert tokenizer.encode(text) == reloaded.encode(text) == hf_tok.encode(text)
        assert len(tokenizer.encode(text)) > 1  # a real vocabulary, not an empty one on both sides
        assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("model_type", list(LAYOUTS))
def test_to_hf_writes_a_tokenizer_transformers_reads(tmp_path, byte_tokenizer, model_type):
    model, _ = lmlab.from_hf(write_hf_dir(hf_model(model_type), tmp_path / "hf", "safetensors"))
    lmlab.to_hf(model, byte_tokenizer, tmp_path / "out")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    for text in TEXTS:
        assert hf_tok.encode(text) == byte_tokenizer.encode(text)
        assert len(byte_tokenizer.encode(text)) > 1
    # ... and lmlab reads it back, openai-gpt included (its tokenizer_config names GPT-2's).
    _, tokenizer = lmlab.from_hf(tmp_path / "out")
    assert tokenizer is not None and tokenizer.encode(TEXTS[3]) == byte_tokenizer.encode(TEXTS[3])


# ---- errors -------------------------------------------------------------------------------------
def test_other_architecture_is_rejected_with_its_model_type(tmp_path):
    transformers.RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match=r"config.json: model_type 'roberta' is not supported; "
                                              r"expected one of gpt2, openai-gpt"):
        lmlab.from_hf(tmp_path)


def test_missing_files_are_conversion_errors(tmp_path):
    with pytest.raises(ConversionError, match="no config.json"):
        lmlab.from_hf(tmp_path)
    hf_model("gpt2").config.save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match=f"{tmp_path}: no weights file"):
        lmlab.from_hf(tmp_path)


def test_shard_index_cannot_point_outside_the_dir(tmp_path):
    write_hf_dir(hf_model("gpt2"), tmp_path, "sharded")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    index["weight_map"]["transformer.wte.weight"] = "../elsewhere.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="not a file name in this folder"):
        lmlab.from_hf(tmp_path)


@pytest.mark.parametrize("field, value", [("scale_attn_by_inverse_layer_idx", True),
                                          ("add_cross_attention", True), ("scale_attn_weights", False),
                                          ("activation_function", "silu")])
def test_unsupported_gpt2_fields_are_named(tmp_path, field, value):
    write_hf_dir(hf_model("gpt2"), tmp_path, "safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=field):
        lmlab.from_hf(tmp_path)


def test_weights_that_do_not_fit_the_config(tmp_path):
    ref = hf_model("gpt2")
    write_hf_dir(ref, tmp_path, "bin")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    with pytest.raises(ConversionError, match="wte.weight has shape"):
        lmlab.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    state["lm_head.weight"] = torch.randn_like(state["wte.weight"])
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="untied LM head"):
        lmlab.from_hf(tmp_path)


def test_to_hf_rejects_models_the_layout_cannot_express(tmp_path):
    with pytest.raises(ConversionError, match="pre_ln=False"):
        lmlab.to_hf(lmlab.build("gpt2", "tiny", pre_ln=False), None, tmp_path)
    with pytest.raises(ConversionError, match="activation"):
        lmlab.to_hf(lmlab.build("gpt", "tiny", activation="gelu"), None, tmp_path)


# ---- CLI ----------------------------------------------------------------------------------------
def test_convert_command_both_ways(tmp_path, capsys):
    ref = hf_model("gpt2")
    write_hf_dir(ref, tmp_path / "hf", "safetensors")
    assert convert_command(str(tmp_path / "hf"), None, str(tmp_path / "lm")) == 0
    assert convert_command(None, str(tmp_path / "lm"), str(tmp_path / "hf2")) == 0
    assert "wrote Hugging Face model dir" in capsys.readouterr().out
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf2").eval()
    ids = batch(seed=5)
    torch.testing.assert_close(hf_logits(back, ids), hf_logits(ref, ids), atol=1e-4, rtol=1e-4)
    with pytest.raises(ConversionError, match="exactly one"):
        convert_command(None, None, str(tmp_path / "x"))
    with pytest.raises(ConversionError, match="source dir"):
        convert_command(str(tmp_path / "hf"), None, str(tmp_path / "hf"))
