"""Causal self-attention with learned relative position embeddings per head, computed by "skewing"
(Huang et al. 2018, "Music Transformer", §3.4 and §3.4.1; the embeddings are Shaw et al. 2018's).

Each head h has a table E_h of L learned vectors, one per distance r = i - j between a query at
position i and a key at j (0 <= r <= L - 1: causal attention sees no negative distance). The score
adds the query's dot product with its distance's embedding to the content score (eq. in §3.4):

    Z = softmax((Q Kᵀ + S_rel) / sqrt(d_h)) V,      S_rel[i, j] = q_i · E_h[i - j]

Shaw et al. gather E for every (i, j) pair into an (L, L, d_h) tensor. The Music Transformer's
skewing (§3.4.1, Fig. 1) never builds it: Q Eᵀ (L, L) scores every query against every distance,
its columns ordered from distance L - 1 down to 0; padding one zero column on the left, reading the
buffer as (L + 1, L) and dropping its first row moves each entry to the key at that distance. This
is the same memory move as Transformer-XL's `rel_shift` (its appendix B), which is reused here, so
queries that are only the last T of K positions (a KV cache) work the same way. Entries right of
the diagonal are leftovers of the next row; the causal mask removes them.

The table is stored as the paper orders it, rows from distance L - 1 down to 0 (`rel[:, L-1-r]` is
distance r), so K keys read its last K rows without a copy. Distances of L or more (a table shorter
than the context) share the embedding of distance L - 1, as Shaw et al. clip them.

The content scores, the relative term (added as a float mask with the causal and padding masks),
the softmax and the weighted sum run in one `scaled_dot_product_attention` call, so everything but
Q Eᵀ and the skew is the fused kernel of `lmlab.nn.attention.SelfAttention`, whose projections,
dropout and KV cache this module inherits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.nn.attention import KVCache, SelfAttention, attention_mask_4d
from lmlab.nn.relative import rel_shift, relative_distances


class SkewedRelativeAttention(SelfAttention):
    """SelfAttention (fused q|k|v projection `c_attn`, `c_proj`) plus `rel` (n_heads, max_distance,
    head_dim): learned embeddings of distances max_distance - 1 … 0, per head. Causal only."""

    def __init__(self, d_model: int, n_heads: int, max_distance: int, dropout: float = 0.0,
                 bias: bool = True, init_std: float = 0.02):
        super().__init__(d_model, n_heads, dropout, bias)
        if max_distance < 1:
            raise ValueError(f"max_distance must be at least 1, got {max_distance}")
        self.max_distance = max_distance
        self.rel = nn.Parameter(torch.empty(n_heads, max_distance, self.head_dim))
        nn.init.normal_(self.rel, std=init_std)

    def distance_table(self, k_len: int) -> torch.Tensor:
        """(H, K, hd): the embeddings of distances K-1 … 0 (clipped at max_distance - 1)."""
        L = self.max_distance
        if k_len <= L:
            return self.rel[:, L - k_len:]  # the last K rows: distances K-1 … 0, no copy
        distances = relative_distances(k_len, L - 1, device=self.rel.device)  # K-1 … 0, clipped
        return self.rel[:, L - 1 - distances]

    def relative_scores(self, q: torch.Tensor, k_len: int) -> torch.Tensor:
        """S_rel of §3.4 for queries q (B, H, T, hd), the last T of k_len positions: (B, H, T, K),
        column j the key at position j (columns right of a query's own position are garbage)."""
        table = self.distance_table(k_len)  # (H, K, hd)
        by_distance = torch.matmul(q, table.transpose(1, 2))  # (B, H, T, K): distances K-1 … 0
        return rel_shift(by_distance)  # (B, H, T, K): keys 0 … K-1 (the skewing of §3.4.1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = True,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x (B, T, D); mask (B|1, 1, T, K) bool (True = may attend) or None for causal alone."""
        if not causal:
            raise ValueError("SkewedRelativeAttention is causal: its table holds distances >= 0 only")
        B, T, D = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # 3 × (B, H, T, hd)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, H, past + T, hd)
        K = k.shape[2]
        scale = 1.0 / math.sqrt(self.head_dim)
        if mask is None:
            mask = attention_mask_4d(None, T, K, True, x.device)  # (1, 1, T, K)
        # SDPA scales only q·k: the relative term is divided by sqrt(d_h) here, as in the paper.
        bias = (self.relative_scores(q, K) * scale).masked_fill(~mask, float("-inf"))  # (B, H, T, K)
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=scale)
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
        return self.resid_dropout(y) if self.training else y
