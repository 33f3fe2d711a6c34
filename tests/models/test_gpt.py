"""GPT (post-LN) and GPT-2 (pre-LN): shapes, structure, init, padding, config validation, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.errors import ConfigError, LmlabError

FAMILIES = ["gpt", "gpt2"]


def tiny(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return lmlab.build(family, "tiny", **overrides).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_output_shapes_and_hidden_states(family):
    model = tiny(family)
    c = model.config
    ids = torch.randint(0, c.vocab_size, (3, 10))
    out = model(ids, output_hidden_states=True)
    assert out.logits.shape == (3, 10, c.vocab_size)
    assert out.hidden.shape == (3, 10, c.d_model)
    assert len(out.hidden_states) == c.n_layers + 1
    assert all(h.shape == (3, 10, c.d_model) for h in out.hidden_states)
    assert torch.equal(out.hidden, out.hidden_states[-1])
    # hidden_states[0] is the embedding output (dropout is 0 in the tiny preset).
    emb = model.wte(ids) + model.wpe(torch.arange(10))[None]
    torch.testing.assert_close(out.hidden_states[0], emb)
    assert model(ids).hidden_states is None
    # logits are the tied head applied to the last hidden layer.
    torch.testing.assert_close(out.logits, out.hidden @ model.wte.weight.T)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_to_keep(family):
    model = tiny(family)
    ids = torch.randint(0, 256, (2, 8))
    full = model(ids).logits
    last = model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, 256)
    torch.testing.assert_close(last, full[:, -1:])


def test_post_ln_and_pre_ln_structure_differ():
    gpt, gpt2 = tiny("gpt"), tiny("gpt2")
    assert isinstance(gpt.ln_f, torch.nn.Identity)  # GPT (2018) has no final LayerNorm
    assert isinstance(gpt2.ln_f, torch.nn.LayerNorm)
    assert not any(b.pre_ln for b in gpt.blocks) and all(b.pre_ln for b in gpt2.blocks)
    ids = torch.randint(0, 256, (2, 6))
    for model, pre_ln in ((gpt, False), (gpt2, True)):
        seen = {}
        block = model.blocks[0]

        def record(module, args, output, seen=seen):
            seen.setdefault("in", args[0])  # returns None: the hook must not replace the output

        handle = block.attn.register_forward_hook(record)
        out = model(ids, output_hidden_states=True)
        handle.remove()
        emb = out.hidden_states[0]
        # Pre-LN: attention reads LN(x). Post-LN: attention reads x, LN comes after the residual.
        expected = block.ln_1(emb) if pre_ln else emb
        torch.testing.assert_close(seen["in"], expected)
        attn_out = block.attn(expected)
        if pre_ln:
            mid = emb + attn_out
            want = mid + block.mlp(block.ln_2(mid))
        else:
            mid = block.ln_1(emb + attn_out)
            want = block.ln_2(mid + block.mlp(mid))
        torch.testing.assert_close(out.hidden_states[1], want)


def test_post_ln_output_is_normalised_without_final_ln():
    # GPT's last block ends in a LayerNorm (weight 1, bias 0 at init): each position has mean 0, var 1.
    out = tiny("gpt")(torch.randint(0, 256, (2, 5)))
    torch.testing.assert_close(out.hidden.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.hidden.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)


def test_gpt2_scaled_residual_init():
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", n_layers=8, d_model=256, n_heads=4, d_ff=1024)
    want = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        for w in (block.attn.c_proj.weight, block.mlp.c_proj.weight):
            assert abs(w.std().item() - want) < 0.1 * want
        # Other linear weights keep the plain 0.02.
        assert abs(block.attn.c_attn.weight.std().item() - 0.02) < 0.002
        assert abs(block.mlp.c_fc.weight.std().item() - 0.02) < 0.002
        assert torch.all(block.attn.c_proj.bias == 0)
    assert abs(model.wte.weight.std().item() - 0.02) < 0.002


def test_gpt_residual_init_is_not_scaled():
    torch.manual_seed(0)
    model = lmlab.build("gpt", "tiny", n_layers=8, d_model=256, n_heads=4, d_ff=1024)
    for block in model.blocks:
        assert abs(block.attn.c_proj.weight.std().item() - 0.02) < 0.002


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_weights(family):
    model = tiny(family)
    assert model.lm_head.weight is model.wte.weight
    with torch.no_grad():
        model.wte.weight[3].fill_(0.5)
    assert torch.all(model.lm_head.weight[3] == 0.5)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_changes_nothing(family):
    model = tiny(family)
    row = torch.randint(1, 256, (1, 7))
    alone = model(row).logits[0]
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), row], dim=1)
    other = torch.randint(1, 256, (1, 11))
    batch = torch.cat([padded, other])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    out = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(out[0, 4:], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], model(other).logits[0], atol=1e-5, rtol=0)
    assert torch.isfinite(out).all()


def assert_one_line(error: Exception, *needles: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("overrides, field", [
    (dict(d_model=65), "d_model"),
    (dict(n_heads=5), "n_heads"),
    (dict(d_model=-64), "d_model"),
    (dict(n_layers=-1), "n_layers"),
    (dict(n_layers=0), "n_layers"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(max_seq_len=-5), "max_seq_len"),
    (dict(d_ff=-1), "d_ff"),
    (dict(dropout=1.5), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(activation="tanh"), "activation"),
])
def test_bad_config_values(family, overrides, field):
    with pytest.raises(ConfigError) as info:
        lmlab.build(family, "tiny", **overrides)
    assert_one_line(info.value, field)


def test_unknown_preset_family_and_key():
    with pytest.raises(ConfigError) as info:
        lmlab.build("gpt2", "huge-nonexistent")
    assert_one_line(info.value, "huge-nonexistent", "tiny")
    with pytest.raises(ConfigError) as info:
        lmlab.build("gpt5", "tiny")
    assert_one_line(info.value, "gpt5", "gpt2")
    with pytest.raises(ConfigError) as info:
        lmlab.build("gpt", "tiny", n_embd=64)
    assert_one_line(info.value, "n_embd")


def test_overrides_apply():
    model = lmlab.build("gpt2", "tiny", d_model=32, n_heads=2)
    assert model.config.d_model == 32 and model.wte.weight.shape == (256, 32)
    assert model.family == "gpt2"


@pytest.mark.parametrize("family", FAMILIES)
def test_too_long_sequence(family):
    model = tiny(family, max_seq_len=16)
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly the context is fine
    with pytest.raises(LmlabError) as info:
        model(torch.zeros(1, 17, dtype=torch.long))
    assert_one_line(info.value, "17", "16")


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_at_init_is_uniform(family):
    model = tiny(family)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (8, 64), generator=torch.Generator().manual_seed(1))
    logits = model(ids).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    assert abs(loss.item() - math.log(V)) < 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_overfits_one_batch(family):
    model = tiny(family).train()
    V = model.config.vocab_size
    ids = torch.randint(0, V, (4, 32), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        logits = model(ids[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.05:
            break
    assert loss.item() < 0.1
    assert model.lm_head.weight is model.wte.weight  # training keeps the tie
