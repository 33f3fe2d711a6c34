"""Multi-head self-attention on `scaled_dot_product_attention`, with masks and a preallocated KV cache.

The cache is allocated once for the whole generation (B × H × max_len × head_dim per layer), so a
decoding step writes one position in place instead of concatenating the whole prefix again.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmlab.errors import GenerationError
from lmlab.nn.layers import Linear


class KVCache:
    """Keys and values of every layer for positions [0, length), preallocated up to `max_len`."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_layers, batch, n_heads, max_len, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self._split_layers()
        self.length = 0  # positions already stored (same for every layer once a forward ends)
        self.max_len = max_len

    def _split_layers(self) -> None:
        # Per-layer views, made once: a decoding step then costs two narrow + copy_ per layer
        # instead of four multi-dimensional index expressions (Python work on every token).
        # select, not unbind: autograd refuses in-place writes into views of a multi-output op.
        self._k = [self.k.select(0, i) for i in range(self.k.shape[0])]
        self._v = [self.v.select(0, i) for i in range(self.v.shape[0])]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, hd) after the cached prefix; return the keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise GenerationError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        keys, values = self._k[layer], self._v[layer]  # (B, H, max_len, hd)
        keys.narrow(2, start, end - start).copy_(k)
        values.narrow(2, start, end - start).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def advance(self, n: int) -> None:
        self.length += n

    def truncate(self, length: int) -> None:
        """Forget positions >= length (speculative decoding drops rejected proposals this way)."""
        self.length = min(self.length, length)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search, dropping finished rows)."""
        self.k = self.k[:, index]
        self.v = self.v[:, index]
        self._split_layers()


# PyTorch's own order after cuDNN: shapes cuDNN cannot serve fall back exactly as without the preference.
_CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH]


def training_attention(device: torch.device | str) -> contextlib.AbstractContextManager:
    """The attention kernels to train with on `device`: on Hopper (compute capability 9.x) cuDNN's
    fused attention first, elsewhere PyTorch's default (FlashAttention-2 first on CUDA).

    `scaled_dot_product_attention` tries FlashAttention-2 before cuDNN. cuDNN's kernels are
    Hopper-specific (wgmma): in benchmarks/gpu.py's profile of a gpt2-124m step on an H100 they ran
    at ~300 TFLOP/s forward and ~280 backward (head size 64, causal); the whole step against
    FlashAttention-2 is its `compile-flash` case. On Ampere and Blackwell cuDNN is the slower one.
    The choice is made in the forward pass (and when torch.compile traces it); the backward uses
    the matching kernel. Like `sdpa_kernel`, the returned context can be entered once: call this
    for every use.
    """
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
        return contextlib.nullcontext()
    return sdpa_kernel(_CUDNN_FIRST, set_priority=True)


def attention_mask_4d(key_padding: torch.Tensor | None, q_len: int, k_len: int, causal: bool,
                      device: torch.device) -> torch.Tensor | None:
    """Boolean mask (B|1, 1, q_len, k_len), True = may attend; None when nothing is masked.

    Queries are the last `q_len` of the `k_len` positions. A query that would see no key at all
    (a left pad attending only to pads) is allowed its own position, so SDPA never returns NaN.
    Causal: every pad query is allowed its own position. Bidirectional (BERT): a pad query sees the
    real keys like every other query, as in the reference encoders; only a row without any real
    key falls back to its own position.
    """
    if key_padding is None and not causal:
        return None
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    allowed = (k_pos <= q_pos) if causal else torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    allowed = allowed[None, None]  # (1, 1, q, k)
    if key_padding is not None:
        allowed = allowed & key_padding[:, None, None, :k_len].bool()
        own = (k_pos == q_pos)[None, None]
        allowed = allowed | (own if causal else own & ~allowed.any(-1, keepdim=True))
    return allowed


class SelfAttention(nn.Module):
    """Fused-QKV multi-head attention. `c_attn` projects to q, k, v at once; `c_proj` mixes heads."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.c_attn = Linear(d_model, 3 * d_model, bias=bias)
        self.c_proj = Linear(d_model, d_model, bias=bias)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = True,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_heads, self.head_dim)  # q | k | v, each head-major
        # Unbind q|k|v first, then move heads forward: the backward then stacks the three gradients
        # straight into qkv's (B, T, 3, H, hd) layout. Moving the axes first made it stack them
        # head-major and copy the result once more (~6% of an attention forward+backward on CPU).
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # 3 × (B, H, T, hd)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, H, past + T, hd)
        dropout = self.attn_dropout if self.training else 0.0
        if mask is None:
            # Without padding, a full causal square uses the fast is_causal path; a single decoding
            # step sees every cached key, so it needs no mask either.
            is_causal = causal and T > 1
            if is_causal and k.shape[2] != T:
                mask = attention_mask_4d(None, T, k.shape[2], True, x.device)
                is_causal = False
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                               is_causal=is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
        return self.resid_dropout(y) if self.training else y  # eval: skip the no-op module call
