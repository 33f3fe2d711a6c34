"""GPT (Radford et al. 2018) and GPT-2 (Radford et al. 2019): one decoder, two families.

GPT, §3.1 and §4.1: a 12-layer transformer decoder, learned position embeddings, post-LN blocks
(`x = LN(x + Attn(x)); x = LN(x + MLP(x))`), GELU, output layer tied to the token embedding.
GPT-2, §2.3: LayerNorm moved to the input of each sub-block (pre-LN), a final LayerNorm after the
last block, residual projections initialised with std 0.02/sqrt(2·n_layers), context 1024.

Known deviations: none in the forward pass. With an `attention_mask` and no `position_ids`,
positions are counted over the unmasked tokens only, so a left-padded row gives the same logits as
the same row unpadded (the original code has no padding at all).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.config import check_positive, check_probability, require
from lmlab.models.output import CausalLMOutput, decoder_output
from lmlab.nn.attention import KVCache, SelfAttention, attention_mask_4d
from lmlab.nn.layers import FeedForward, init_normal_, parameter_groups, scaled_residual_std
from lmlab.nn.lm_loss import tied_lookup


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    max_seq_len: int = 1024
    dropout: float = 0.1
    pre_ln: bool = True  # GPT-2 layout; GPT (2018) is post-LN
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_tanh"
    init_std: float = 0.02

    def __post_init__(self):
        check_positive(self, "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len")
        check_probability(self, "dropout")
        require(self.d_model % self.n_heads == 0,
                f"config field d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        require(self.activation in ("gelu_tanh", "gelu", "relu"),
                f"config field activation must be gelu_tanh, gelu or relu, got {self.activation!r}")


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.pre_ln = c.pre_ln
        self.ln_1 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.attn = SelfAttention(c.d_model, c.n_heads, c.dropout)
        self.ln_2 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.mlp = FeedForward(c.d_model, c.d_ff, c.activation, c.dropout)

    def forward(self, x, mask, cache, layer):
        if self.pre_ln:  # GPT-2
            x = x + self.attn(self.ln_1(x), mask, True, cache, layer)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, mask, True, cache, layer))  # GPT
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    """Token + position embeddings, n_layers blocks, (final LN for GPT-2), tied LM head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.wpe = nn.Embedding(c.max_seq_len, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.pre_ln else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied (GPT §3.1, GPT-2 inherits it)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.apply(lambda m: init_normal_(m, self.config.init_std))
        if self.config.pre_ln:
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
        """Embeddings, each block, the final LayerNorm (GPT-2): bottom to top."""
        return parameter_groups([self.wte, self.wpe], *self.blocks, self.ln_f)

    def init_token_rows(self, ids: list[int], vocab_size: int) -> None:
        """Grow the tied token table to `vocab_size` rows (if smaller) and give rows `ids` N(0, init_std):
        the new task tokens of GPT §3.3."""
        old, (n, d) = self.wte.weight, self.wte.weight.shape
        if vocab_size > n:
            self.wte = nn.Embedding(vocab_size, d, device=old.device, dtype=old.dtype)
            self.lm_head = nn.Linear(d, vocab_size, bias=False, device=old.device, dtype=old.dtype)
            self.lm_head.weight = self.wte.weight
            with torch.no_grad():
                self.wte.weight[:n] = old
            self.config = dataclasses.replace(self.config, vocab_size=vocab_size)
        with torch.no_grad():
            for i in ids:
                self.wte.weight[i].normal_(0.0, self.config.init_std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, state: KVCache | None = None,
                position_ids: torch.Tensor | None = None, output_hidden_states: bool = False,
                logits_to_keep: int = 0, targets: torch.Tensor | None = None) -> CausalLMOutput:
        """input_ids (B, T). With a KV cache as `state`, attention_mask covers the cached prefix too
        (B, past+T), and the cache is advanced past these tokens (`out.state`).

        logits_to_keep > 0 computes logits for the last that many positions only (generation).
        With `targets` (B, T) - or (B, logits_to_keep) - holding the next token of every position
        (-100 = not scored), the output holds their per-token loss `nll` instead of logits
        (lmlab.nn.lm_loss: chunked, never the (B, T, V) logits).
        """
        B, T = input_ids.shape
        past = state.length if state is not None else 0
        if past + T > self.config.max_seq_len:
            raise LmlabError(f"sequence of {past + T} positions is longer than the model's context "
                             f"(max_seq_len={self.config.max_seq_len})")
        if position_ids is None and attention_mask is None:
            positions = self.wpe.weight[past:past + T]  # (T, D): rows past..past+T-1, no lookup op
        else:
            if position_ids is None:
                # Count real tokens only, so left padding does not shift positions.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:past + T]
            positions = self.wpe(position_ids)  # (B|1, T, D)
        tokens, head = tied_lookup(input_ids, self.wte.weight, scoring=targets is not None)
        x = tokens + positions  # (B, T, D)
        if token_type_ids is not None:  # both papers' code embed segment ids with the token table
            x = x + self.wte(token_type_ids)
        if self.training:  # dropout is the identity in eval: skip the module call on every token
            x = self.drop(x)

        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask_4d(attention_mask, T, past + T, causal=True, device=x.device)
        states = []
        for i, block in enumerate(self.blocks):
            if output_hidden_states:
                states.append(x)
            x = block(x, mask, state, i)
        x = self.ln_f(x)
        if output_hidden_states:
            states.append(x)
        if state is not None:
            state.advance(T)
        return decoder_output(x, states if output_hidden_states else None, state, logits_to_keep, targets,
                              self.lm_head, head)


_GPT = dict(pre_ln=False, max_seq_len=512, vocab_size=40478)
# d_ff = 4·d_model as in both papers (and as the HF openai-gpt layout requires).
_TINY = dict(vocab_size=256, d_model=48, n_layers=2, n_heads=4, d_ff=192, max_seq_len=128, dropout=0.0)

# Family -> preset -> config fields. The registry builds GPTConfig(**fields, **overrides).
PRESETS = {
    "gpt": {
        "tiny": {**_TINY, "pre_ln": False},
        "gpt": {**_GPT, "d_model": 768, "n_layers": 12, "n_heads": 12, "d_ff": 3072},
    },
    "gpt2": {
        "tiny": {**_TINY, "pre_ln": True},
        "gpt2-124m": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072),
        "gpt2-355m": dict(d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
        "gpt2-774m": dict(d_model=1280, n_layers=36, n_heads=20, d_ff=5120),
        "gpt2-1558m": dict(d_model=1600, n_layers=48, n_heads=25, d_ff=6400),
    },
}
