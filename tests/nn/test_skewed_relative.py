"""Skewed relative attention (Music Transformer §3.4.1) against the naive O(L²·D) computation of
Shaw et al.: every (query, key) pair gathers its distance's embedding, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.nn.attention import KVCache, attention_mask_4d
from lmlab.nn.skewed_relative import SkewedRelativeAttention

D, H = 12, 3
DH = D // H


def module(max_distance: int, seed: int = 0) -> SkewedRelativeAttention:
    torch.manual_seed(seed)
    m = SkewedRelativeAttention(D, H, max_distance).double().eval()
    with torch.no_grad():  # biases too, so that no term is trivially zero
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


def naive_embeddings(m: SkewedRelativeAttention, q_len: int, k_len: int) -> torch.Tensor:
    """(H, Q, K, hd): E[i - j] for every query i (the last Q of K positions) and key j, zero where
    j > i; distances past the table share its last row (rel[:, 0] is distance max_distance - 1)."""
    L = m.max_distance
    out = torch.zeros(H, q_len, k_len, DH, dtype=m.rel.dtype)
    for i in range(q_len):
        pos = k_len - q_len + i
        for j in range(pos + 1):
            out[:, i, j] = m.rel[:, L - 1 - min(pos - j, L - 1)]
    return out


def naive_attention(m: SkewedRelativeAttention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """softmax((q·k + q·E[i-j]) / sqrt(dh)) v, then c_proj: x (B, T, D), allowed (B|1, 1, T, T)."""
    B, T, _ = x.shape
    q, k, v = m.c_attn(x).view(B, T, 3, H, DH).unbind(2)  # (B, T, H, dh) each
    e = naive_embeddings(m, T, T)  # (H, T, T, dh): the O(L²·D) tensor skewing avoids
    scores = torch.einsum("bihd,bjhd->bhij", q, k) + torch.einsum("bihd,hijd->bhij", q, e)
    scores = (scores / math.sqrt(DH)).masked_fill(~allowed, float("-inf"))
    y = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(B, T, D)
    return m.c_proj(y)


@pytest.mark.parametrize("q_len,k_len,max_distance", [(7, 7, 7), (7, 7, 16), (1, 9, 9), (3, 8, 8),
                                                        (6, 6, 3), (2, 10, 4)])
def test_skewed_scores_equal_the_gathered_ones_under_the_causal_mask(q_len, k_len, max_distance):
    m = module(max_distance)
    q = torch.randn(2, H, q_len, DH, dtype=torch.float64)
    skewed = m.relative_scores(q, k_len)  # (B, H, Q, K)
    naive = torch.einsum("bhid,hijd->bhij", q, naive_embeddings(m, q_len, k_len))
    allowed = attention_mask_4d(None, q_len, k_len, True, q.device)[0, 0]  # (Q, K)
    torch.testing.assert_close(skewed[..., allowed], naive[..., allowed], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("max_distance", [9, 4])
def test_attention_equals_the_naive_computation(max_distance):
    m = module(max_distance)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    causal = attention_mask_4d(None, 9, 9, True, x.device)
    torch.testing.assert_close(m(x), naive_attention(m, x, causal), rtol=1e-10, atol=1e-12)
    # left padding: the mask of attention_mask_4d, as GPT.forward makes it
    pad = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    allowed = attention_mask_4d(pad, 9, 9, True, x.device)
    torch.testing.assert_close(m(x, allowed), naive_attention(m, x, allowed), rtol=1e-10, atol=1e-12)


def test_relative_term_depends_on_distance_only():
    """Shifting a sequence right (left pads) leaves a real query's output unchanged: only i - j counts."""
    m = module(12)
    x = torch.randn(1, 6, D, dtype=torch.float64)
    padded = torch.cat([torch.randn(1, 3, D, dtype=torch.float64), x], dim=1)  # pads: masked keys
    keep = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    out = m(padded, attention_mask_4d(keep, 9, 9, True, x.device))
    torch.testing.assert_close(out[:, 3:], m(x), rtol=1e-10, atol=1e-12)


def test_kv_cache_steps_equal_the_full_sequence():
    m = module(10)
    x = torch.randn(2, 8, D, dtype=torch.float64)
    cache = KVCache(1, 2, H, 8, DH, torch.float64, "cpu")
    steps = []
    for chunk in (x[:, :3], x[:, 3:4], x[:, 4:8]):  # a prompt, one token, then several at once
        steps.append(m(chunk, cache=cache))
        cache.advance(chunk.shape[1])
    torch.testing.assert_close(torch.cat(steps, 1), m(x), rtol=1e-10, atol=1e-12)


def test_gradcheck_float64():
    m = module(5)
    x = torch.randn(1, 5, D, dtype=torch.float64, requires_grad=True)
    rel = m.rel.detach().clone().requires_grad_(True)

    def f(inp, table):
        return torch.func.functional_call(m, {"rel": table}, (inp,))

    assert torch.autograd.gradcheck(f, (x, rel))
    (grad,) = torch.autograd.grad(f(x.detach(), rel).sum(), rel)
    assert bool((grad.abs().sum(dim=(0, 2)) > 0).all())  # a 5-token causal square uses distances 0..4


def test_bidirectional_use_is_refused():
    with pytest.raises(ValueError, match="causal"):
        module(4)(torch.zeros(1, 2, D, dtype=torch.float64), causal=False)
