"""Relative attention (Transformer-XL §3.3) against a hand-written per-(i, j) reference."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.nn.relative import (
    RelativeMultiHeadAttention,
    rel_shift,
    relative_distances,
    relative_mask,
    sinusoid_table,
)

D, H, DH = 12, 3, 4


@pytest.mark.parametrize("q,k", [(1, 1), (4, 4), (3, 7), (1, 9), (5, 6)])
def test_rel_shift_moves_each_distance_to_its_key(q, k):
    x = torch.randn(2, 3, q, k)
    y = rel_shift(x)
    assert y.shape == x.shape
    for i in range(q):
        for j in range(k - q + i + 1):  # every key query i may see
            # column c of x scores distance k-1-c; query i sits at position k-q+i.
            distance = (k - q + i) - j
            torch.testing.assert_close(y[..., i, j], x[..., i, k - 1 - distance], rtol=0, atol=0)


def test_rel_shift_gradcheck():
    x = torch.randn(2, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rel_shift, (x,))
    # Only the valid (causal) region matters downstream; its gradient must be exact too.
    mask = relative_mask(3, 5).to(torch.float64)
    assert torch.autograd.gradcheck(lambda t: rel_shift(t) * mask, (x,))


def test_relative_mask_memory_causal_and_window():
    m = relative_mask(3, 5)  # 2 memory positions + 3 queries
    want = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, want)
    w = relative_mask(3, 5, window=2)  # every query sees itself and one key before it
    want = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(w, want)
    assert torch.equal(relative_mask(3, 5, window=10), relative_mask(3, 5))


def test_sinusoid_table_and_clamp():
    d = relative_distances(6, clamp_len=3)
    assert d.tolist() == [3, 3, 3, 2, 1, 0]
    assert relative_distances(4).tolist() == [3, 2, 1, 0]
    table = sinusoid_table(torch.tensor([0.0, 2.0]), 8)
    freqs = [1.0, 10000 ** (-2 / 8), 10000 ** (-4 / 8), 10000 ** (-6 / 8)]
    want = [[math.sin(2 * f) for f in freqs] + [math.cos(2 * f) for f in freqs]]
    torch.testing.assert_close(table[1:], torch.tensor(want))
    torch.testing.assert_close(table[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def make_attention(pre_ln: bool, own_biases: bool = True) -> RelativeMultiHeadAttention:
    torch.manual_seed(0)
    attn = RelativeMultiHeadAttention(D, H, DH, pre_ln=pre_ln, own_biases=own_biases).double().eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.4)
    return attn


def reference(attn, x, pos_of_distance, mem, u, v, window=None):
    """Eq. 4 of the paper one (i, j) pair at a time; pos_of_distance(d) -> (D,) sinusoid."""
    B, T, _ = x.shape
    cat = torch.cat([mem, x], 1) if mem is not None else x
    K = cat.shape[1]
    h = attn.layer_norm(cat) if attn.pre_ln else cat
    q, k, val = (h @ attn.qkv.weight.T).split(H * DH, -1)
    q = q[:, -T:].view(B, T, H, DH)
    k, val = k.view(B, K, H, DH), val.view(B, K, H, DH)
    out = torch.zeros(B, T, H, DH, dtype=x.dtype)
    for i in range(T):
        p = K - T + i
        keys = [j for j in range(K) if j <= p and (window is None or j > p - window)]
        scores = []
        for j in keys:
            r = (attn.r_net.weight @ pos_of_distance(p - j)).view(H, DH)
            scores.append(((q[:, i] + u) * k[:, j]).sum(-1) + ((q[:, i] + v) * r).sum(-1))  # (B, H)
        a = (torch.stack(scores, -1) / math.sqrt(DH)).softmax(-1)  # (B, H, n_keys)
        out[:, i] = torch.einsum("bhn,bnhd->bhd", a, val[:, keys])
    y = out.reshape(B, T, H * DH) @ attn.o_net.weight.T
    return x + y if attn.pre_ln else attn.layer_norm(x + y)


@pytest.mark.parametrize("pre_ln", [False, True])
@pytest.mark.parametrize("mem_len,clamp,window", [(0, 0, None), (3, 0, None), (3, 2, None), (3, 0, 4)])
def test_matches_per_pair_reference_forward_and_backward(pre_ln, mem_len, clamp, window):
    attn = make_attention(pre_ln)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, D, dtype=torch.float64, generator=g, requires_grad=True)
    mem = torch.randn(2, mem_len, D, dtype=torch.float64, generator=g) if mem_len else None
    K = 4 + mem_len
    pos = sinusoid_table(relative_distances(K, clamp), D).double()
    mask = relative_mask(4, K, window)
    got = attn(x, pos, mask, mem)

    def pos_of_distance(d):
        return sinusoid_table(torch.tensor([min(d, clamp) if clamp else d]), D)[0].double()

    want = reference(attn, x, pos_of_distance, mem, attn.u, attn.v, window)
    torch.testing.assert_close(got, want)
    # Gradients through the fused attention (the position term enters as its additive mask).
    w = torch.randn_like(got)
    grads = torch.autograd.grad((got * w).sum(), [x, attn.v, attn.u, attn.r_net.weight, attn.qkv.weight])
    grads_ref = torch.autograd.grad((want * w).sum(), [x, attn.v, attn.u, attn.r_net.weight, attn.qkv.weight])
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_shared_biases_come_from_the_caller():
    attn = make_attention(False, own_biases=False)
    assert attn.u is None and not any("u" == n.split(".")[-1] for n, _ in attn.named_parameters())
    x = torch.randn(1, 3, D, dtype=torch.float64)
    pos = sinusoid_table(relative_distances(3), D).double()
    u, v = torch.randn(H, DH, dtype=torch.float64), torch.randn(H, DH, dtype=torch.float64)
    got = attn(x, pos, relative_mask(3, 3), None, u, v)
    want = reference(attn, x, lambda d: sinusoid_table(torch.tensor([d]), D)[0].double(), None, u, v)
    torch.testing.assert_close(got, want)


def test_memory_receives_no_gradient_through_detached_input():
    attn = make_attention(False)
    mem = torch.randn(1, 2, D, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 3, D, dtype=torch.float64)
    pos = sinusoid_table(relative_distances(5), D).double()
    out = attn(x, pos, relative_mask(3, 5), mem.detach())
    out.sum().backward()
    assert mem.grad is None and attn.qkv.weight.grad is not None


def test_dropatt_only_in_training():
    attn = RelativeMultiHeadAttention(D, H, DH, dropatt=0.5)
    x = torch.randn(2, 5, D)
    pos, mask = sinusoid_table(relative_distances(5), D), relative_mask(5, 5)
    attn.eval()
    torch.testing.assert_close(attn(x, pos, mask), attn(x, pos, mask), rtol=0, atol=0)
    attn.train()
    torch.manual_seed(0)
    a = attn(x, pos, mask)
    torch.manual_seed(1)
    assert not torch.allclose(a, attn(x, pos, mask))
