"""Relative multi-head attention over a memory + the current segment (Dai et al. 2019, §3.3).

For a query at absolute position i and a key at position j (distance i - j), the score is

    A_ij = (q_i + u)·k_j  +  (q_i + v)·W_R R_{i-j}           (terms (a)+(c) and (b)+(d) of eq. 3/4)

with R the fixed sinusoid table of Vaswani et al. indexed by *distance*, u and v learned vectors per
head (the "global content" and "global position" biases; HF calls them r_w_bias and r_r_bias). Keys
and values are projected from [memory; segment] (the memory carries no gradient, §3.2), queries from
the segment only.

The position term is first computed against every row of R (distances klen-1 … 0, one column each)
and then moved to the right column by `rel_shift`, the pad-and-reshape trick of appendix B: no
gather, no (qlen × klen × d) tensor. The content term, the shifted position term (as an additive
mask), the causal mask and the softmax run in one fused `scaled_dot_product_attention` call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid_table(distances: torch.Tensor, d_model: int) -> torch.Tensor:
    """(K,) distances -> (K, d_model): [sin(d·ω_0 .. d·ω_{d/2-1}), cos(...)], ω_k = 10000^(-2k/d).

    The sin half comes first and the cos half second (not interleaved), as in the paper's code."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d_model, 2, device=distances.device,
                                             dtype=torch.float32) / d_model))
    angles = distances.float()[:, None] * inv_freq[None, :]  # (K, d/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (K, d)


def relative_distances(k_len: int, clamp_len: int = 0, device=None) -> torch.Tensor:
    """Distances klen-1, klen-2, …, 0 (the rows of R, oldest key first); clamp_len > 0 caps them
    (every distance beyond clamp_len shares one embedding)."""
    d = torch.arange(k_len - 1, -1, -1, device=device)
    return d.clamp(max=clamp_len) if clamp_len > 0 else d


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """(…, Q, K) scores against distances K-1 … 0 -> (…, Q, K) scores against keys 0 … K-1.

    Queries are the last Q of K positions, so query i sits at absolute position K-Q+i and key j is
    at distance K-Q+i-j, i.e. column j+Q-1-i of `x`: out[…, i, j] = x[…, i, j+Q-1-i] for every
    j <= K-Q+i (every key the query may causally see). Appendix B: pad one zero column on the left,
    read the (Q, K+1) buffer as (K+1, Q), drop its first row and read the rest as (Q, K); each row
    thereby slides left by one more element than the row above. Entries right of the diagonal are
    leftovers of the next row: they must be masked.
    """
    *lead, q, k = x.shape
    padded = F.pad(x, (1, 0))  # (…, Q, K+1)
    padded = padded.reshape(*lead, k + 1, q)  # same memory read with rows of Q
    return padded[..., 1:, :].reshape(*lead, q, k)  # (…, Q, K)


def relative_mask(q_len: int, k_len: int, window: int | None = None, device=None) -> torch.Tensor:
    """(Q, K) bool, True = may attend. Query i sits at absolute position p = K-Q+i and sees keys
    j <= p (memory + causal segment); with a window W (same_length), only keys p-W < j <= p, so that
    every query sees the same number of keys (W once the history is long enough)."""
    p = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None, :]
    allowed = j <= p
    if window is not None:
        allowed = allowed & (j > p - window)
    return allowed


class RelativeMultiHeadAttention(nn.Module):
    """The attention sub-layer with its residual and LayerNorm (post-LN by default, as the paper's
    code; pre_ln normalises [memory; segment] before the projections and adds the raw residual).

    With own_biases (untie_r) the layer holds its own u, v (n_heads, d_head); otherwise the caller
    passes the ones shared by all layers.
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int, dropout: float = 0.0,
                 dropatt: float = 0.0, pre_ln: bool = False, own_biases: bool = True,
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.qkv = nn.Linear(d_model, 3 * n_heads * d_head, bias=False)
        self.r_net = nn.Linear(d_model, n_heads * d_head, bias=False)  # W_{k,R} of eq. 4
        self.o_net = nn.Linear(n_heads * d_head, d_model, bias=False)
        self.layer_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.drop = nn.Dropout(dropout)
        self.dropatt = dropatt
        self.pre_ln = pre_ln
        if own_biases:
            self.u = nn.Parameter(torch.zeros(n_heads, d_head))
            self.v = nn.Parameter(torch.zeros(n_heads, d_head))
        else:
            self.u = self.v = None

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor,
                mem: torch.Tensor | None = None, u: torch.Tensor | None = None,
                v: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D) segment, pos (K, D) sinusoids for distances K-1 … 0, mask (T, K) bool,
        mem (B, M, D) or None with K = M + T; u, v (H, dh) when the layer has none of its own."""
        B, T, _ = x.shape
        H, dh = self.n_heads, self.d_head
        u = self.u if self.u is not None else u
        v = self.v if self.v is not None else v
        cat = x if mem is None or mem.shape[1] == 0 else torch.cat([mem.to(x.dtype), x], dim=1)
        K = cat.shape[1]
        h = self.layer_norm(cat) if self.pre_ln else cat
        # Queries only for the segment; keys and values for memory + segment (same weights as one
        # qkv projection of the concatenation, without computing queries nobody uses).
        w_q, w_kv = self.qkv.weight.split([H * dh, 2 * H * dh], dim=0)
        q = F.linear(h[:, -T:], w_q).view(B, T, H, dh)  # (B, T, H, dh)
        k, val = F.linear(h, w_kv).view(B, K, 2, H, dh).unbind(2)  # (B, K, H, dh) each
        r = self.r_net(pos.to(h.dtype)).view(K, H, dh)  # (K, H, dh)

        scale = 1.0 / math.sqrt(dh)
        pos_scores = torch.einsum("bthd,khd->bhtk", q + v, r)  # (B, H, T, K) against distances
        pos_scores = rel_shift(pos_scores) * scale  # (B, H, T, K) against keys
        bias = pos_scores.masked_fill(~mask, float("-inf"))
        y = F.scaled_dot_product_attention(
            (q + u).transpose(1, 2), k.transpose(1, 2), val.transpose(1, 2),  # (B, H, ·, dh)
            attn_mask=bias, dropout_p=self.dropatt if self.training else 0.0, scale=scale)
        y = y.transpose(1, 2).reshape(B, T, H * dh)  # (B, T, H·dh)
        out = self.drop(self.o_net(y))
        return x + out if self.pre_ln else self.layer_norm(x + out)
