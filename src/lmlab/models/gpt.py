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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.config import check_positive, check_probability, require
from lmlab.models.output import ModelOutput
from lmlab.nn.attention import KVCache, SelfAttention, attention_mask_4d
from lmlab.nn.layers import FeedForward, init_normal_, scaled_residual_std
from lmlab.nn.lm_loss import IGNORE_INDEX, linear_cross_entropy, linear_nll


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

    def new_cache(self, batch: int, max_len: int | None = None, dtype=None, device=None) -> KVCache:
        c = self.config
        return KVCache(c.n_layers, batch, c.n_heads, max_len or c.max_seq_len, c.d_model // c.n_heads,
                       dtype or self.wte.weight.dtype, device or self.wte.weight.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, mems=None, cache: KVCache | None = None,
                position_ids: torch.Tensor | None = None, output_hidden_states: bool = False,
                logits_to_keep: int = 0, targets: torch.Tensor | None = None) -> ModelOutput:
        """input_ids (B, T). With a cache, attention_mask covers the cached prefix too (B, past+T).

        logits_to_keep > 0 computes logits for the last that many positions only (generation).
        With `targets` (B, T) - or (B, logits_to_keep) - holding the next token of every position
        (-100 = not scored), the output holds `loss`, their mean cross-entropy, instead of logits,
        computed chunk by chunk without the (B, T, V) logits (lmlab.nn.lm_loss); under no_grad also
        `nll`, the per-token losses (B, T).
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
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
        sparse = self._sparse_lookup(targets)
        head = self.lm_head.weight if targets is not None else None  # loss only: int8 drafts have none
        if sparse:
            head = _BackwardLast.apply(head)  # made before the lookup: its backward runs after it
        x = F.embedding(input_ids, self.wte.weight, sparse=sparse) + positions  # (B, T, D)
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
            x = block(x, mask, cache, i)
        x = self.ln_f(x)
        if output_hidden_states:
            states.append(x)
        if cache is not None:
            cache.advance(T)
        kept = x[:, -logits_to_keep:] if logits_to_keep else x
        hidden_states = tuple(states) if output_hidden_states else None
        if targets is not None:
            return self._loss(kept, targets, head, x, hidden_states)
        return ModelOutput(logits=self.lm_head(kept), hidden=x, cache=cache, hidden_states=hidden_states)

    def _sparse_lookup(self, targets) -> bool:
        """Whether the token lookup hands back a sparse gradient (CPU training with targets).

        The tied matrix then gets the output layer's dense gradient plus a sparse one for the
        looked-up rows. Autograd adds the two in place only when the sparse one comes first, so the
        output layer reads the matrix through _BackwardLast. Otherwise the lookup's gradient is a
        zero-filled (V, D) tensor plus a (V, D) addition: ~100 ms of a 3.4 s gpt2-124m step on CPU,
        page faults included.
        """
        return (targets is not None and torch.is_grad_enabled() and self.wte.weight.requires_grad
                and self.wte.weight.device.type == "cpu" and not torch.compiler.is_compiling())

    def _loss(self, kept: torch.Tensor, targets: torch.Tensor, weight, hidden, states) -> ModelOutput:
        if targets.shape != kept.shape[:2]:
            raise LmlabError(f"targets have shape {tuple(targets.shape)}; expected {tuple(kept.shape[:2])}, "
                             f"one next token per scored position")
        flat, y = kept.flatten(0, 1), targets.flatten()
        vocab = weight.shape[0]
        if weight.device.type in PAD_OUTPUT_ON and vocab % VOCAB_MULTIPLE:
            # 50,257 rows make misaligned GPU matmul shapes (cuBLAS falls back to older, slower
            # kernels); zero rows up to a multiple of 64 are left out of the softmax. The pad fuses
            # with autocast's bf16 copy of the weight (compiled) or is one cast-sized pass (eager).
            weight = F.pad(weight, (0, 0, 0, -vocab % VOCAB_MULTIPLE))
        if torch.compiler.is_compiling():
            # Compiled, inductor fuses the softmax into the loss itself and beats the chunks (H100,
            # gpt2-124m 16x1024: 433k tokens/s vs 414k chunked).
            logits = F.linear(flat, weight)[:, :vocab]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16: fp32 softmax
            nll = F.cross_entropy(logits, y, reduction="none")
        else:
            if torch.is_grad_enabled():
                loss = linear_cross_entropy(flat, weight, y, vocab)
                return ModelOutput(loss=loss, hidden=hidden, hidden_states=states)
            nll = linear_nll(flat, weight, y, vocab)
        scored = (y != IGNORE_INDEX).sum().clamp(min=1)
        per_token = None if torch.is_grad_enabled() else nll.view(targets.shape)
        return ModelOutput(loss=nll.sum() / scored, nll=per_token, hidden=hidden, hidden_states=states)


class _BackwardLast(torch.autograd.Function):
    """The identity. Autograd runs the backward of later-made operations first, so applied to a
    weight before its other uses, this hands the weight's gradient on after theirs."""

    @staticmethod
    def forward(ctx, weight):
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        return grad


VOCAB_MULTIPLE = 64  # the training loss pads the output matrix to a multiple of this many rows...
PAD_OUTPUT_ON = {"cuda"}  # ...on these devices (on CPU the extra rows would only cost time)

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
