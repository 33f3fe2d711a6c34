"""The Hugging Face `transfo-xl` layout (transformers 4.x TransfoXLLMHeadModel) <-> lmlab's `transfo-xl`.

HF names (after the `transformer.` prefix of the LM-head class is stripped; `crit.*` is the LM head):

    word_emb.emb_layers.{i}.weight, word_emb.emb_projs.{i}      -> embed.layers.{i}.weight, embed.projs.{i}
    r_w_bias, r_r_bias (shared, untie_r false)                 -> u, v
    layers.{l}.dec_attn.{r_w_bias, r_r_bias} (untie_r true)     -> layers.{l}.attn.{u, v}
    layers.{l}.dec_attn.{qkv_net, r_net, o_net, layer_norm}     -> layers.{l}.attn.{qkv, r_net, o_net,
                                                                   layer_norm}
    layers.{l}.pos_ff.CoreNet.{0, 3}, pos_ff.layer_norm         -> layers.{l}.ff.{c_fc, c_proj, layer_norm}
    crit.out_layers.{i}, crit.out_projs.{i}, crit.cluster_*     -> softmax.layers.{i}, softmax.projs.{i}, ...
    pos_emb.inv_freq                                            -> (a constant buffer; recomputed)

No tensor is transposed: every HF weight here is an nn.Linear / nn.Embedding / raw parameter with the
same orientation as lmlab's. Tied or shared tensors (out layers = embeddings with
tie_word_embeddings, projections with tie_projs, u/v shared by the layers with untie_r false) may be
stored once or under every name; every stored copy must agree. HF writes shared u/v only as
`pytorch_model.bin`; `to_hf` writes safetensors with every name present, which HF reads back.

Config: HF's field names and defaults (those of its wt103 model) map to lmlab's; HF's `init_mems`
starts from mem_len zero vectors where lmlab (like the paper's code) starts empty, see the model file.
The word-level TransfoXLTokenizer is not implemented: from_hf gives tokenizer None.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmlab.checkpoints.convert.common import (
    ReadWeights,
    build_loaded,
    check_architectures,
    copy_into,
    same_values,
)
from lmlab.errors import ConversionError

HEADS = ("TransfoXLLMHeadModel", "TransfoXLModel")
ATTN = {"qkv_net": "qkv", "r_net": "r_net", "o_net": "o_net", "layer_norm": "layer_norm"}
FF = {"CoreNet.0": "c_fc", "CoreNet.3": "c_proj", "layer_norm": "layer_norm"}
BUFFERS = ("pos_emb.inv_freq",)


def hf_aliases(model) -> dict[str, tuple[str, ...]]:
    """lmlab tensor name -> the HF names (without `transformer.`) that hold it, canonical first.

    More than one name means the tensor is tied or shared on the HF side too."""
    c = model.config
    names: dict[str, tuple[str, ...]] = {}
    tied_projs: dict[str, list[str]] = {}
    for i in range(len(c.cutoffs) + 1):
        source = "0" if c.div_val == 1 else str(i)
        if str(i) in model.softmax.projs and i < len(c.tie_projs) and c.tie_projs[i] \
                and source in model.embed.projs:
            tied_projs.setdefault(source, []).append(f"crit.out_projs.{i}")
    for key in model.embed.projs:
        names[f"embed.projs.{key}"] = (f"word_emb.emb_projs.{key}", *tied_projs.get(key, []))
    for i in range(len(model.embed.layers)):
        names[f"embed.layers.{i}.weight"] = (f"word_emb.emb_layers.{i}.weight",
                                             *((f"crit.out_layers.{i}.weight",) if c.tie_weight else ()))
    for i in range(len(model.softmax.layers)):
        names[f"softmax.layers.{i}.weight"] = (names[f"embed.layers.{i}.weight"] if c.tie_weight
                                               else (f"crit.out_layers.{i}.weight",))
        names[f"softmax.layers.{i}.bias"] = (f"crit.out_layers.{i}.bias",)
    for key in model.softmax.projs:
        shared = [k for k, group in tied_projs.items() if f"crit.out_projs.{key}" in group]
        names[f"softmax.projs.{key}"] = (names[f"embed.projs.{shared[0]}"] if shared
                                         else (f"crit.out_projs.{key}",))
    if c.cutoffs:
        names["softmax.cluster_weight"] = ("crit.cluster_weight",)
        names["softmax.cluster_bias"] = ("crit.cluster_bias",)
    if not c.untie_r:
        for ours, theirs in (("u", "r_w_bias"), ("v", "r_r_bias")):
            names[ours] = (theirs, *(f"layers.{n}.dec_attn.{theirs}" for n in range(c.n_layers)))
    for n in range(c.n_layers):
        if c.untie_r:
            names[f"layers.{n}.attn.u"] = (f"layers.{n}.dec_attn.r_w_bias",)
            names[f"layers.{n}.attn.v"] = (f"layers.{n}.dec_attn.r_r_bias",)
        for theirs, ours in ATTN.items():
            for p in ("weight", "bias") if theirs == "layer_norm" else ("weight",):
                names[f"layers.{n}.attn.{ours}.{p}"] = (f"layers.{n}.dec_attn.{theirs}.{p}",)
        for theirs, ours in FF.items():
            for p in ("weight", "bias"):
                names[f"layers.{n}.ff.{ours}.{p}"] = (f"layers.{n}.pos_ff.{theirs}.{p}",)
    return names


# ---- from HF ----------------------------------------------------------------------------------
def transfo_xl_from_hf(hf_dir: Path, config: dict, read_weights: ReadWeights):
    where = f"{hf_dir / 'config.json'}"
    check_architectures(config, HEADS, where)
    if config.get("attn_type", 0) != 0:
        raise ConversionError(f"{where}: attn_type={config['attn_type']!r} is not supported "
                              f"(lmlab implements the paper's relative attention, attn_type 0)")
    if isinstance(config.get("sample_softmax"), int) and config["sample_softmax"] > 0:
        raise ConversionError(f"{where}: sample_softmax={config['sample_softmax']} is not supported")
    cutoffs = config.get("cutoffs", [20000, 40000, 200000])
    n_clusters = len(cutoffs) + 1 if isinstance(cutoffs, list) else 0
    default_tie = [False] + [bool(config.get("proj_share_all_but_first", True))] * (n_clusters - 1)
    clamp = config.get("clamp_len", 1000)
    fields = dict(
        vocab_size=config.get("vocab_size", 267735), d_model=config.get("d_model", 1024),
        n_layers=config.get("n_layer", 18), n_heads=config.get("n_head", 16),
        d_head=config.get("d_head", 64), d_ff=config.get("d_inner", 4096),
        tgt_len=config.get("tgt_len", 128), mem_len=config.get("mem_len", 1600),
        clamp_len=max(clamp, 0) if isinstance(clamp, int) else clamp,  # HF: <= 0 means off
        same_length=config.get("same_length", True), untie_r=config.get("untie_r", True),
        pre_ln=config.get("pre_lnorm", False), cutoffs=cutoffs, div_val=config.get("div_val", 4),
        d_embed=config.get("d_embed", 1024), tie_weight=config.get("tie_word_embeddings", True),
        tie_projs=config.get("tie_projs", default_tie), dropout=config.get("dropout", 0.1),
        dropatt=config.get("dropatt", 0.0), layer_norm_eps=config.get("layer_norm_epsilon", 1e-5),
        init_std=config.get("init_std", 0.02), proj_init_std=config.get("proj_init_std", 0.01),
    )
    model = build_loaded("transfo-xl", fields, where, read_weights,
                         lambda m, state: _load(m, state, f"{hf_dir} weights"))
    return model, None


def _load(model, hf_state: dict[str, torch.Tensor], where: str) -> None:
    """Copy HF tensors into `model` through `hf_aliases`, checking shapes and tied copies."""
    state = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    state = {k: v for k, v in state.items() if k not in BUFFERS}
    aliases = hf_aliases(model)
    known = {name for group in aliases.values() for name in group}
    unexpected = sorted(set(state) - known)
    if unexpected:
        raise ConversionError(f"{where}: unexpected tensor(s) {', '.join(unexpected[:5])} for this "
                              f"config (check untie_r, cutoffs, div_val, d_embed, tie_projs)")
    missing = sorted(group[0] for group in aliases.values() if not any(n in state for n in group))
    if missing:
        raise ConversionError(f"{where}: missing tensor(s) {', '.join(missing[:5])}")
    own = model.state_dict()
    converted = {}
    for ours, group in aliases.items():
        present = [n for n in group if n in state]
        for name in present:
            if tuple(state[name].shape) != tuple(own[ours].shape):
                raise ConversionError(f"{where}: tensor {name} has shape {tuple(state[name].shape)}, "
                                      f"config.json implies {tuple(own[ours].shape)}")
            if not same_values(state[name], state[present[0]]):
                raise ConversionError(f"{where}: {name} differs from {present[0]}, but config.json ties "
                                      f"them (tie_word_embeddings, tie_projs or untie_r=false)")
        converted[ours] = state[present[0]]
    copy_into(own, converted, where)


# ---- to HF ------------------------------------------------------------------------------------
def transfo_xl_to_hf(model, tokenizer) -> tuple[dict, dict[str, torch.Tensor]]:
    c = model.config
    eos = getattr(tokenizer, "eos_token_id", None)
    config = {
        "model_type": "transfo-xl", "architectures": ["TransfoXLLMHeadModel"],
        "vocab_size": c.vocab_size, "cutoffs": list(c.cutoffs), "d_model": c.d_model,
        "d_embed": c.embed_dim, "n_head": c.n_heads, "d_head": c.d_head, "d_inner": c.d_ff,
        "div_val": c.div_val, "pre_lnorm": c.pre_ln, "n_layer": c.n_layers, "mem_len": c.mem_len,
        "tgt_len": c.tgt_len, "clamp_len": c.clamp_len, "same_length": c.same_length,
        "tie_projs": list(c.tie_projs) or [False] * (len(c.cutoffs) + 1),
        "tie_word_embeddings": c.tie_weight, "untie_r": c.untie_r, "attn_type": 0,
        "sample_softmax": -1, "adaptive": True, "dropout": c.dropout, "dropatt": c.dropatt,
        "init": "normal", "init_range": 0.01, "init_std": c.init_std, "proj_init_std": c.proj_init_std,
        "layer_norm_epsilon": c.layer_norm_eps, "eos_token_id": eos if eos is not None else 0,
        "torch_dtype": str(model.embed.layers[0].weight.dtype).removeprefix("torch."),
    }
    own = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for ours, group in hf_aliases(model).items():
        # Tied weights once, as save_pretrained writes them (HF re-ties them on load); shared u/v
        # under every name, since HF would re-initialise a layer's copy it does not find.
        for name in group if ours in ("u", "v") else group[:1]:
            if name not in state:
                state[name] = own[ours].detach().contiguous().cpu().clone()
    d = c.d_model
    state["pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0.0, d, 2.0) / d))
    return config, {k if k.startswith("crit.") else f"transformer.{k}": v for k, v in state.items()}
