"""The Hugging Face `gpt2` and `openai-gpt` layouts <-> lmlab's `gpt2` and `gpt` families.

Both HF layouts name the blocks `h.{i}.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}`
like lmlab, and store the four projections as `Conv1D` weights of shape (in, out), the transpose of
an `nn.Linear` weight (listed in CONV1D). Embeddings are `wte`/`wpe` (+ `ln_f`) in gpt2 and
`tokens_embed`/`positions_embed` (no final LN: post-LN) in openai-gpt. Keys may carry the
`transformer.` prefix of the *LMHeadModel classes; the LM head is tied, so `lm_head.weight` is
either absent or equal to the token embedding.

Activations: gpt2's `gelu_new` and openai-gpt's `afn: "gelu"` are both the tanh approximation
(`ACT_FNS["gelu"]` is `gelu_new` in transformers' modeling_openai.py), i.e. lmlab's "gelu_tanh".
lmlab has one dropout rate; it takes `resid_pdrop` (equal to embd/attn_pdrop in released configs).

Tokenizers: gpt2 dirs give lmlab's byte-level BPE (vocab.json + merges.txt, encoder.json +
vocab.bpe, or a byte-level tokenizer.json). openai-gpt's own tokenizer (a different BPE: `</w>`
word ends, lower-casing, ftfy/spaCy pre-processing) is not implemented: such dirs give tokenizer
None, unless their tokenizer_config.json names a GPT-2 tokenizer (as dirs written by `to_hf` do).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from lmlab.checkpoints.atomic import write_bytes_atomic
from lmlab.checkpoints.convert.common import (
    ReadWeights,
    added_tokens_decoder,
    build_loaded,
    check_architectures,
    check_names,
    copy_into,
    lookup,
    same_values,
)
from lmlab.checkpoints.files import JSON_CAP, read_json
from lmlab.errors import ConversionError
from lmlab.tokenizers.byte_bpe import EOT, ByteBPETokenizer

BLOCK_PARTS = tuple(f"{module}.{p}" for module in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2",
                                                    "mlp.c_fc", "mlp.c_proj") for p in ("weight", "bias"))
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers that older transformers versions saved with the weights; not parameters.
BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$|^position_ids$")

GPT2_ACT_FROM = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                 "gelu": "gelu", "gelu_python": "gelu", "relu": "relu"}
GPT2_ACT_TO = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
OPENAI_ACT_FROM = {"gelu": "gelu_tanh", "relu": "relu"}
OPENAI_ACT_TO = {"gelu_tanh": "gelu", "relu": "relu"}

GPT2_HEADS = ("GPT2LMHeadModel", "GPT2Model")
OPENAI_HEADS = ("OpenAIGPTLMHeadModel", "OpenAIGPTModel")
# gpt2 fields whose non-default values change the computation in a way lmlab does not implement.
# (reorder_and_upcast_attn only computes the same scores in fp32, which lmlab does anyway.)
GPT2_REQUIRED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                 "add_cross_attention": False}


def hf_names(n_layers: int, openai: bool) -> dict[str, str]:
    """lmlab parameter name -> HF name without the `transformer.` prefix (the tied head omitted)."""
    names = {"wte.weight": "tokens_embed.weight" if openai else "wte.weight",
             "wpe.weight": "positions_embed.weight" if openai else "wpe.weight"}
    for i in range(n_layers):
        names.update({f"blocks.{i}.{part}": f"h.{i}.{part}" for part in BLOCK_PARTS})
    if not openai:
        names.update({"ln_f.weight": "ln_f.weight", "ln_f.bias": "ln_f.bias"})
    return names


# ---- from HF ----------------------------------------------------------------------------------
def gpt2_from_hf(hf_dir: Path, config: dict, read_weights: ReadWeights):
    where = f"{hf_dir / 'config.json'}"
    check_architectures(config, GPT2_HEADS, where)
    for field, needed in GPT2_REQUIRED.items():
        if config.get(field, needed) != needed:
            raise ConversionError(f"{where}: {field}={config[field]!r} is not supported "
                                  f"(lmlab's GPT-2 needs {needed})")
    d = _width(config, where)
    fields = dict(
        vocab_size=config.get("vocab_size", 50257), d_model=d, n_layers=config.get("n_layer", 12),
        n_heads=config.get("n_head", 12), d_ff=config.get("n_inner") or 4 * d,  # None means 4·d
        max_seq_len=config.get("n_positions", 1024), pre_ln=True,
        activation=lookup(GPT2_ACT_FROM, config.get("activation_function", "gelu_new"),
                          "activation_function", where),
        **_common_fields(config),
    )
    model = build_loaded("gpt2", fields, where, read_weights,
                         lambda m, state: _load(m, state, hf_names(m.config.n_layers, openai=False), hf_dir))
    return model, ByteBPETokenizer.find_in_dir(hf_dir)


def openai_gpt_from_hf(hf_dir: Path, config: dict, read_weights: ReadWeights):
    where = f"{hf_dir / 'config.json'}"
    check_architectures(config, OPENAI_HEADS, where)
    d = _width(config, where)
    fields = dict(
        vocab_size=config.get("vocab_size", 40478), d_model=d, n_layers=config.get("n_layer", 12),
        n_heads=config.get("n_head", 12), d_ff=4 * d,  # fixed in HF's OpenAIGPT MLP
        max_seq_len=config.get("n_positions", 512), pre_ln=False,
        activation=lookup(OPENAI_ACT_FROM, config.get("afn", "gelu"), "afn", where),
        **_common_fields(config),
    )
    model = build_loaded("gpt", fields, where, read_weights,
                         lambda m, state: _load(m, state, hf_names(m.config.n_layers, openai=True), hf_dir))
    return model, _openai_dir_tokenizer(hf_dir)


def _width(config: dict, where: str) -> int:
    d = config.get("n_embd", 768)
    if not isinstance(d, int) or isinstance(d, bool) or d <= 0:  # checked here: 4·d is computed from it
        raise ConversionError(f"{where}: n_embd must be a positive integer, got {d!r}")
    return d


def _common_fields(config: dict) -> dict:
    return dict(dropout=config.get("resid_pdrop", 0.1), layer_norm_eps=config.get("layer_norm_epsilon", 1e-5),
                init_std=config.get("initializer_range", 0.02))


def _load(model, hf_state: dict[str, torch.Tensor], names: dict[str, str], hf_dir: Path) -> None:
    """Copy HF tensors into `model` by the explicit map `names`, asserting every shape."""
    state = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    head = state.pop("lm_head.weight", None)
    state = {k: v for k, v in state.items() if not BUFFER.match(k)}
    where = f"{hf_dir} weights"
    check_names(state, set(names.values()), where)
    own = model.state_dict()
    converted = {}
    for ours, theirs in names.items():
        tensor = state[theirs]
        if ours.endswith(CONV1D):
            tensor = tensor.t()  # Conv1D (in, out) -> nn.Linear (out, in)
        if tuple(tensor.shape) != tuple(own[ours].shape):
            raise ConversionError(f"{where}: tensor {theirs} has shape {tuple(state[theirs].shape)}, "
                                  f"config.json implies {tuple(own[ours].shape)}"
                                  f"{' transposed' if ours.endswith(CONV1D) else ''}")
        converted[ours] = tensor
    embed = state[names["wte.weight"]]
    if head is not None and (head.shape != embed.shape or not same_values(head, embed)):
        raise ConversionError(f"{where}: lm_head.weight differs from {names['wte.weight']}; lmlab ties "
                              f"them, an untied LM head is not supported")
    copy_into(own, converted, where)


def _openai_dir_tokenizer(hf_dir: Path):
    try:
        spec = read_json(hf_dir / "tokenizer_config.json", JSON_CAP, ConversionError)
    except FileNotFoundError:
        return None  # no tokenizer config: openai-gpt's own tokenizer, not implemented
    tokenizer_class = spec.get("tokenizer_class") if isinstance(spec, dict) else None
    if tokenizer_class in ("GPT2Tokenizer", "GPT2TokenizerFast"):
        return ByteBPETokenizer.find_in_dir(hf_dir)
    return None


# ---- to HF ------------------------------------------------------------------------------------
def gpt2_to_hf(model, tokenizer) -> tuple[dict, dict[str, torch.Tensor]]:
    c = model.config
    if not c.pre_ln:
        raise ConversionError("a gpt2-family model with pre_ln=False has no Hugging Face gpt2 layout")
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    config = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.vocab_size,
        "n_positions": c.max_seq_len, "n_embd": c.d_model, "n_layer": c.n_layers, "n_head": c.n_heads,
        "n_inner": c.d_ff, "activation_function": lookup(GPT2_ACT_TO, c.activation, "activation",
                                                                  "Hugging Face gpt2 layout"),
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "add_cross_attention": False, "use_cache": True,
        "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": None,
        **_common_to_hf(model),
    }
    return config, _hf_state(model, openai=False)


def openai_gpt_to_hf(model, tokenizer) -> tuple[dict, dict[str, torch.Tensor]]:
    c = model.config
    if c.pre_ln:
        raise ConversionError("a gpt-family model with pre_ln=True has no Hugging Face openai-gpt layout")
    if c.d_ff != 4 * c.d_model:
        raise ConversionError(f"the Hugging Face openai-gpt layout fixes d_ff = 4·d_model = {4 * c.d_model}; "
                              f"this model has d_ff={c.d_ff}")
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    config = {
        "model_type": "openai-gpt", "architectures": ["OpenAIGPTLMHeadModel"], "vocab_size": c.vocab_size,
        "n_positions": c.max_seq_len, "n_embd": c.d_model, "n_layer": c.n_layers, "n_head": c.n_heads,
        "afn": lookup(OPENAI_ACT_TO, c.activation, "activation", "Hugging Face openai-gpt layout"),
        "bos_token_id": None, "eos_token_id": eos, "pad_token_id": None,
        **_common_to_hf(model),
    }
    return config, _hf_state(model, openai=True)


def _common_to_hf(model) -> dict:
    c = model.config
    return {"resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
            "layer_norm_epsilon": c.layer_norm_eps, "initializer_range": c.init_std,
            "tie_word_embeddings": True, "dtype": str(model.wte.weight.dtype).removeprefix("torch.")}


def _hf_state(model, openai: bool) -> dict[str, torch.Tensor]:
    """HF-named tensors, `transformer.`-prefixed as *LMHeadModel saves them; the tied head stored once."""
    own = model.state_dict()
    state = {}
    for ours, theirs in hf_names(model.config.n_layers, openai).items():
        tensor = own[ours].detach()
        if ours.endswith(CONV1D):
            tensor = tensor.t()  # nn.Linear (out, in) -> Conv1D (in, out)
        state[f"transformer.{theirs}"] = tensor.contiguous().cpu().clone()
    return state


def write_byte_bpe_tokenizer(tokenizer: ByteBPETokenizer, out: Path, config: dict) -> None:
    """vocab.json + merges.txt and a tokenizer_config.json that makes transformers read them as GPT-2."""
    # A stale HF tokenizer.json would be preferred over our vocab/merges by the fast tokenizer.
    (out / "tokenizer.json").unlink(missing_ok=True)
    tokenizer.save_gpt2_files(out)
    eos = EOT if tokenizer.eos_token_id is not None else None
    spec = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": config["n_positions"],
            "add_prefix_space": False, "bos_token": eos, "eos_token": eos, "unk_token": eos,
            "added_tokens_decoder": added_tokens_decoder(tokenizer)}
    write_bytes_atomic(out / "tokenizer_config.json", json.dumps(spec, indent=2, ensure_ascii=False).encode())
