"""SelfAttention against a hand-written softmax(QK^T / sqrt(d)) V, the mask builder and the KV cache."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.nn.attention import KVCache, SelfAttention, attention_mask_4d

D, H = 16, 4


def make_attention(seed: int = 0) -> SelfAttention:
    torch.manual_seed(seed)
    attn = SelfAttention(D, H).double().eval()
    for p in attn.parameters():  # non-zero biases too, so a dropped bias term would show
        torch.nn.init.normal_(p, std=0.3)
    return attn


def reference(attn: SelfAttention, x: torch.Tensor, causal: bool,
              key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """Plain attention, loop over heads; key_padding (B, T), 1 = real token."""
    B, T, _ = x.shape
    hd = D // H
    weights = attn.state_dict()  # (out, in) matrices, the checkpoint layout, whatever is in memory
    qkv = x @ weights["c_attn.weight"].T + attn.c_attn.bias
    q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
    heads = []
    for h in range(H):
        sl = slice(h * hd, (h + 1) * hd)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd)  # (B, T, T)
        allowed = torch.ones(B, T, T, dtype=torch.bool)
        if causal:
            allowed &= torch.ones(T, T).tril().bool()
        if key_padding is not None:
            allowed &= key_padding[:, None, :].bool()
        scores = scores.masked_fill(~allowed, float("-inf"))
        heads.append(scores.softmax(-1) @ v[..., sl])
    y = torch.cat(heads, dim=-1)
    return y @ weights["c_proj.weight"].T + attn.c_proj.bias


@pytest.mark.parametrize("causal", [True, False])
def test_matches_reference_without_padding(causal):
    attn = make_attention()
    x = torch.randn(3, 7, D, dtype=torch.float64)
    got = attn(x, mask=None, causal=causal)
    torch.testing.assert_close(got, reference(attn, x, causal), atol=1e-6, rtol=0)


def test_causal_output_ignores_the_future():
    attn = make_attention()
    x = torch.randn(2, 6, D, dtype=torch.float64)
    changed = x.clone()
    changed[:, 4:] = torch.randn(2, 2, D, dtype=torch.float64)
    torch.testing.assert_close(attn(x)[:, :4], attn(changed)[:, :4], atol=1e-12, rtol=0)
    assert not torch.allclose(attn(x)[:, 4:], attn(changed)[:, 4:])


@pytest.mark.parametrize("causal", [True, False])
def test_matches_reference_with_left_and_right_padding(causal):
    attn = make_attention(1)
    x = torch.randn(3, 6, D, dtype=torch.float64)
    key_padding = torch.tensor([[0, 0, 1, 1, 1, 1],   # left padded
                                [1, 1, 1, 1, 0, 0],   # right padded
                                [1, 1, 1, 1, 1, 1]])
    mask = attention_mask_4d(key_padding, 6, 6, causal=causal, device=x.device)
    got = attn(x, mask=mask, causal=causal)
    want = reference(attn, x, causal, key_padding)
    # Outputs at pad positions are unspecified (nothing real attends to them); the no-NaN test
    # covers them. Every real query must match the reference.
    real = key_padding.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-6, rtol=0)


def test_padding_hides_the_padded_keys():
    attn = make_attention(2)
    x = torch.randn(1, 5, D, dtype=torch.float64)
    key_padding = torch.tensor([[0, 0, 1, 1, 1]])
    mask = attention_mask_4d(key_padding, 5, 5, causal=True, device=x.device)
    noisy = x.clone()
    noisy[:, :2] = 100 * torch.randn(1, 2, D, dtype=torch.float64)
    torch.testing.assert_close(attn(x, mask)[:, 2:], attn(noisy, mask)[:, 2:], atol=1e-10, rtol=0)


def test_fully_padded_query_rows_are_finite():
    attn = make_attention(3)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    key_padding = torch.tensor([[0, 0, 0, 1, 1],    # left pads see only pads
                                [0, 0, 0, 0, 0]])   # a row with no real token at all
    for causal in (True, False):
        mask = attention_mask_4d(key_padding, 5, 5, causal=causal, device=x.device)
        assert mask.any(-1).all(), "every query must be allowed at least one key"
        y = attn(x, mask, causal)
        assert torch.isfinite(y).all()
    # float32 too: the fused kernel must not produce NaN for the padded rows either.
    y32 = make_attention(3).float()(x.float(), attention_mask_4d(key_padding, 5, 5, True, x.device))
    assert torch.isfinite(y32).all()


def test_mask_builder_values():
    assert attention_mask_4d(None, 4, 4, causal=False, device="cpu") is None
    causal = attention_mask_4d(None, 3, 3, causal=True, device="cpu")
    assert causal.shape == (1, 1, 3, 3)
    assert torch.equal(causal[0, 0], torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())
    # Two new queries after a 3-token prefix: they are positions 3 and 4 of 5.
    tail = attention_mask_4d(None, 2, 5, causal=True, device="cpu")
    assert torch.equal(tail[0, 0], torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool())
    padded = attention_mask_4d(torch.tensor([[0, 1, 1]]), 3, 3, causal=True, device="cpu")
    assert padded.shape == (1, 1, 3, 3)
    # The pad query sees only itself; real queries never see the pad.
    assert torch.equal(padded[0, 0], torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1]]).bool())


def test_cached_chunks_match_full_attention():
    attn = make_attention(4)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    full = attn(x)
    cache = KVCache(1, 2, H, 9, D // H, torch.float64, "cpu")
    outs = []
    for start, end in [(0, 4), (4, 5), (5, 9)]:  # prefill, one step, a chunk of several
        outs.append(attn(x[:, start:end], cache=cache, layer=0))
        cache.advance(end - start)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=0)


def test_kv_cache_append_and_length():
    cache = KVCache(n_layers=2, batch=3, n_heads=H, max_len=10, head_dim=4, dtype=torch.float32,
                    device="cpu")
    assert cache.length == 0 and cache.max_len == 10
    assert cache.k.shape == (2, 3, H, 10, 4)
    k1, v1 = torch.randn(3, H, 4, 4), torch.randn(3, H, 4, 4)
    for layer in range(2):
        k, v = cache.append(layer, k1 + layer, v1 - layer)
        assert k.shape == (3, H, 4, 4)
        assert torch.equal(k, k1 + layer) and torch.equal(v, v1 - layer)
    assert cache.length == 0  # the model advances once per forward, after every layer appended
    cache.advance(4)
    assert cache.length == 4
    k2, v2 = torch.randn(3, H, 1, 4), torch.randn(3, H, 1, 4)
    k, v = cache.append(0, k2, v2)
    assert k.shape == (3, H, 5, 4)
    assert torch.equal(k[:, :, :4], k1) and torch.equal(k[:, :, 4:], k2)
    assert torch.equal(v[:, :, :4], v1) and torch.equal(v[:, :, 4:], v2)
    cache.advance(1)
    assert cache.length == 5
    cache.reorder(torch.tensor([2, 0]))
    assert cache.k.shape[1] == 2
    assert torch.equal(cache.k[0, :, :, :4], k1[[2, 0]])
    assert torch.equal(cache.v[0, :, :, 4:5], v2[[2, 0]])


def test_indivisible_heads_rejected():
    with pytest.raises(ValueError, match="n_heads"):
        SelfAttention(10, 3)


def test_linear_keeps_the_nn_linear_layout_in_its_state_dict():
    """lmlab.nn.layers.Linear holds W as (in, out) but saves and loads nn.Linear's (out, in)."""
    from lmlab.nn.layers import Linear

    torch.manual_seed(0)
    ours, plain = Linear(5, 3), torch.nn.Linear(5, 3)
    ours.load_state_dict(plain.state_dict())
    assert ours.weight.shape == (5, 3) and ours.state_dict()["weight"].shape == (3, 5)
    x = torch.randn(2, 4, 5)
    torch.testing.assert_close(ours(x), plain(x))
    torch.testing.assert_close(ours(x[0]), plain(x[0]))
    plain.load_state_dict(ours.state_dict())
    torch.testing.assert_close(plain.weight, ours.weight.T)


def test_training_attention_leaves_the_cpu_kernels_alone():
    from lmlab.nn.attention import training_attention

    attn = make_attention()
    x = torch.randn(2, 6, D, dtype=torch.float64)
    want = attn(x)
    with training_attention("cpu"):
        torch.testing.assert_close(attn(x), want, rtol=0, atol=0)


HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU (compute capability 9.x)")
def test_training_attention_runs_cudnn_on_hopper_with_the_flash_results():
    """On Hopper, training_attention puts cuDNN's kernels first; loss and gradients match the
    default kernels (FlashAttention-2) within bf16 rounding."""
    from torch.profiler import ProfilerActivity, profile

    import lmlab
    from lmlab.nn.attention import training_attention
    from lmlab.objectives.clm import clm_loss

    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", d_model=128, n_heads=2, dropout=0.0).cuda()
    x = torch.randint(0, 256, (4, 128), device="cuda")
    y = torch.roll(x, -1, 1)

    def loss_and_grads():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = clm_loss(model, (x, y))
        return loss, torch.autograd.grad(loss, list(model.parameters()))

    want, want_grads = loss_and_grads()
    with training_attention("cuda"):
        loss_and_grads()
    with training_attention("cuda"), profile(activities=[ProfilerActivity.CUDA]) as prof:  # again
        got, grads = loss_and_grads()
    assert any("cudnn" in e.key.lower() for e in prof.key_averages()), "no cuDNN kernel ran"
    assert abs(got.item() - want.item()) < 1e-2
    for a, b in zip(grads, want_grads, strict=True):
        assert (a - b).norm() <= 2e-2 * b.norm() + 1e-6
