"""The deep character-level transformer (Al-Rfou et al. 2018, "Character-Level Language Modeling with
Deeper Self-Attention", AAAI 2019).

§2: a stack of causal transformer layers over characters with a fixed context (512 characters in
the paper); no state passes from one training batch to the next, each window is read from scratch.
§2 "Positional Embeddings": the paper adds a separate learned positional embedding to the input of
*every* layer (not only the first), so that position information is not washed out in a 64-layer
stack; `per_layer_positions=False` gives the usual single table at the input. The paper's models:
T12 (12 layers) and T64 (64 layers), each 512 wide with a 2,048-unit feed-forward layer (presets
`t12`, `t64`, 8 heads).

The auxiliary losses of §2.1 (multiple positions, intermediate layers, multiple targets) are a
training objective, not part of this network: `lmlab.objectives.char_aux` reads the per-layer
states this model returns (`output_hidden_states=True`) and owns the extra classifiers, so a saved
model dir holds the plain network below.

Layout: pre-LN blocks (`x += Attn(LN(x)); x += FFN(LN(x))`, the tensor2tensor default of the time)
with a final LayerNorm, ReLU feed-forward, an untied output layer without bias. Blocks are lmlab's
shared `SelfAttention` (fused QKV, `scaled_dot_product_attention`) and `FeedForward`; residual
projections get GPT-2's 1/sqrt(2·n_layers) initial scale, which deep stacks need.

`hidden_states` (output_hidden_states=True): n_layers + 1 tensors: the embeddings, the output of
layers 1 .. n_layers - 1 (each the input of the next layer, before that layer adds its positions),
and the final LayerNorm's output (== `hidden`). The intermediate-layer losses read entries 1 .. n-1.

Decoding state: a KV cache (`init_state`), as GPT's; generation and the paper's one-character-at-
a-time evaluation never see more than `max_seq_len` positions.

Known deviations: the paper's own code (tensor2tensor) is not public; its normalisation placement,
activation and dropout per model are not stated in the paper and were chosen as above. The
vocabulary is lmlab's character tokenizer (`<unk>`, `<eos>` and the characters seen), so text8 has
29 symbols here, not 27: the two extra ones never occur in text8 and cost almost nothing once trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.config import check_positive, check_probability, require
from lmlab.models.output import CausalLMOutput, decoder_output
from lmlab.nn.attention import KVCache, SelfAttention, attention_mask_4d
from lmlab.nn.layers import FeedForward, init_normal_, parameter_groups, scaled_residual_std


@dataclass(frozen=True)
class CharTransformerConfig:
    vocab_size: int = 256
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    d_ff: int = 2048
    max_seq_len: int = 512  # the fixed context (§2)
    dropout: float = 0.1
    per_layer_positions: bool = True  # §2: a learned position table added at every layer
    layer_norm_eps: float = 1e-5
    activation: str = "relu"
    init_std: float = 0.02

    def __post_init__(self):
        check_positive(self, "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len")
        check_probability(self, "dropout")
        require(self.d_model % self.n_heads == 0,
                f"config field d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        require(self.activation in ("relu", "gelu", "gelu_tanh"),
                f"config field activation must be relu, gelu or gelu_tanh, got {self.activation!r}")


def _positions(table: nn.Embedding, past: int, length: int, position_ids: torch.Tensor | None):
    """Rows past .. past+length-1 of `table` (T, D), or the rows of `position_ids` (B|1, T, D)."""
    if position_ids is None:
        return table.weight[past:past + length]  # a slice: no lookup op
    return table(position_ids)


class Block(nn.Module):
    """One pre-LN layer; with `positions`, its own learned position table is added to its input."""

    def __init__(self, c: CharTransformerConfig, positions: bool):
        super().__init__()
        self.wpe = nn.Embedding(c.max_seq_len, c.d_model) if positions else None
        self.ln_1 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.attn = SelfAttention(c.d_model, c.n_heads, c.dropout)
        self.ln_2 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.mlp = FeedForward(c.d_model, c.d_ff, c.activation, c.dropout)

    def forward(self, x, past: int, position_ids, mask, cache, layer: int):
        if self.wpe is not None:
            x = x + _positions(self.wpe, past, x.shape[1], position_ids)  # (B, T, D)
        x = x + self.attn(self.ln_1(x), mask, True, cache, layer)
        return x + self.mlp(self.ln_2(x))


class CharTransformer(nn.Module):
    """Character embeddings, n_layers blocks (positions added at each), final LN, output layer."""

    def __init__(self, config: CharTransformerConfig):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c, positions=c.per_layer_positions or i == 0)
                                    for i in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.apply(lambda m: init_normal_(m, self.config.init_std))
        std = scaled_residual_std(self.config.init_std, self.config.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.c_proj.weight, std=std)
            nn.init.normal_(block.mlp.c_proj.weight, std=std)

    def init_state(self, batch_size: int, max_len: int | None = None, device=None) -> KVCache:
        """An empty KV cache for `batch_size` rows and up to `max_len` positions (default: the context)."""
        c, w = self.config, self.wte.weight
        return KVCache(c.n_layers, batch_size, c.n_heads, max_len or c.max_seq_len, c.d_model // c.n_heads,
                       w.dtype, device or w.device)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Character embeddings, each block (with its position table), final LN + output layer."""
        return parameter_groups(self.wte, *self.blocks, [self.ln_f, self.lm_head])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: KVCache | None = None, position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, logits_to_keep: int = 0,
                targets: torch.Tensor | None = None) -> CausalLMOutput:
        """input_ids (B, T), T + cached positions <= max_seq_len. With a KV cache as `state`,
        attention_mask covers the cached prefix too (B, past+T); positions then count real tokens
        only, so left padding shifts nothing. logits_to_keep > 0: logits of the last that many
        positions only. With `targets` (B, T) - or (B, logits_to_keep) - (-100 = not scored) the
        output holds their per-token loss `nll` instead of logits.
        """
        B, T = input_ids.shape
        past = state.length if state is not None else 0
        if past + T > self.config.max_seq_len:
            raise LmlabError(f"sequence of {past + T} positions is longer than the model's context "
                             f"(max_seq_len={self.config.max_seq_len})")
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:past + T]
        x = self.wte(input_ids)  # (B, T, D)
        if self.training:
            x = self.drop(x)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask_4d(attention_mask, T, past + T, causal=True, device=x.device)
        states = []
        for i, block in enumerate(self.blocks):
            if output_hidden_states:
                states.append(x)
            x = block(x, past, position_ids, mask, state, i)
        x = self.ln_f(x)
        if output_hidden_states:
            states.append(x)
        if state is not None:
            state.advance(T)
        return decoder_output(x, states if output_hidden_states else None, state, logits_to_keep, targets,
                              self.lm_head, self.lm_head.weight)


_PAPER = dict(d_model=512, n_heads=8, d_ff=2048, max_seq_len=512)
PRESETS = {
    "tiny": dict(vocab_size=256, d_model=32, n_layers=4, n_heads=4, d_ff=64, max_seq_len=64, dropout=0.0),
    "t12": dict(_PAPER, n_layers=12),  # §3: T12
    "t64": dict(_PAPER, n_layers=64),  # §3: T64, the paper's best model
}
