"""BERT: shapes, heads, tying, bidirectional padding masks, config validation, init, a few MLM steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.checkpoints.io import unique_state
from lmlab.errors import ConfigError, LmlabError
from lmlab.nn.attention import attention_mask_4d


def tiny(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return lmlab.build("bert", "tiny", **overrides).eval()


def ids_for(model, B=3, T=10, seed=1):
    return torch.randint(5, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def test_tiny_preset_is_small_and_presets_have_the_paper_sizes():
    assert sum(p.numel() for p in tiny().parameters()) <= 100_000
    with torch.device("meta"):  # no memory, no init cost
        base = lmlab.build("bert", "bert-base")
        large = lmlab.build("bert", "bert-large")
    # §3: BERT-BASE 110M and BERT-LARGE 340M parameters (counted with the pretraining heads).
    assert round(sum(p.numel() for p in base.parameters()) / 1e6) == 110
    assert round(sum(p.numel() for p in large.parameters()) / 1e6) == 336
    assert (large.config.n_layers, large.config.d_model, large.config.n_heads) == (24, 1024, 16)


def test_output_shapes_for_every_head_choice():
    ids = ids_for(tiny())
    for heads in ("mlm_nsp", "mlm", "none"):
        model = tiny(heads=heads)
        c = model.config
        out = model(ids, output_hidden_states=True)
        assert out.hidden.shape == (3, 10, c.d_model)
        assert out.pooled.shape == (3, c.d_model)
        assert len(out.hidden_states) == c.n_layers + 1
        assert torch.equal(out.hidden, out.hidden_states[-1])
        assert (out.logits is not None) == (heads != "none")
        assert (out.nsp_logits is not None) == (heads == "mlm_nsp")
        if out.logits is not None:
            assert out.logits.shape == (3, 10, c.vocab_size)
        if out.nsp_logits is not None:
            assert out.nsp_logits.shape == (3, 2)
        assert model(ids).hidden_states is None
    no_pool = tiny(heads="mlm", pooler=False)
    assert no_pool.pooler is None and no_pool(ids).pooled is None


def test_embeddings_pooler_and_heads_compute_what_the_paper_says():
    model = tiny()
    ids = ids_for(model)
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    out = model(ids, token_type_ids=types, output_hidden_states=True)
    emb = model.word_emb(ids) + model.pos_emb(torch.arange(10))[None] + model.type_emb(types)
    torch.testing.assert_close(out.hidden_states[0], model.emb_ln(emb))
    torch.testing.assert_close(out.pooled, torch.tanh(model.pooler(out.hidden[:, 0])))
    torch.testing.assert_close(out.nsp_logits, model.nsp(out.pooled))
    ln = model.mlm.ln
    h = F.layer_norm(F.gelu(model.mlm.dense(out.hidden)), (32,), ln.weight, ln.bias, 1e-12)
    torch.testing.assert_close(out.logits, h @ model.word_emb.weight.T + model.mlm.decoder.bias)
    # Segment ids change the result; default segment ids are all zeros.
    assert not torch.allclose(model(ids).hidden, out.hidden)
    torch.testing.assert_close(model(ids).hidden, model(ids, token_type_ids=torch.zeros_like(ids)).hidden)


def test_mlm_decoder_is_tied_to_the_word_embedding_with_its_own_bias():
    model = tiny()
    assert model.mlm.decoder.weight is model.word_emb.weight
    assert model.mlm.decoder.bias.shape == (model.config.vocab_size,)
    state = unique_state(model)
    assert "word_emb.weight" in state and "mlm.decoder.weight" not in state  # stored once
    assert "mlm.decoder.bias" in state


def test_mlm_positions_give_the_logits_at_those_positions():
    model = tiny()
    ids = ids_for(model)
    full = model(ids).logits
    positions = torch.tensor([[1, 4], [0, 9], [3, 3]])
    part = model(ids, mlm_positions=positions).logits
    assert part.shape == (3, 2, model.config.vocab_size)
    torch.testing.assert_close(part, full.gather(1, positions[:, :, None].expand(-1, -1, full.shape[-1])))


def test_attention_is_bidirectional():
    model = tiny()
    ids = ids_for(model)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % model.config.vocab_size
    assert not torch.allclose(model(ids).hidden[:, 0], model(changed).hidden[:, 0])


def test_appended_pad_columns_leave_real_positions_unchanged():
    model = tiny()
    ids = ids_for(model, T=8)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a padded row inside the batch already
    padded = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.long)], 1)
    a = model(ids, attention_mask=mask, output_hidden_states=True)
    b = model(padded, attention_mask=padded_mask, output_hidden_states=True)
    real = mask.bool()
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        torch.testing.assert_close(y[:, :8][real], x[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.pooled, a.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.logits[:, :8][real], a.logits[real], atol=1e-5, rtol=1e-5)
    # The pads are really masked: a different pad token id changes nothing at real positions.
    c = model(padded.masked_fill(padded_mask == 0, 7), attention_mask=padded_mask)
    torch.testing.assert_close(c.hidden[:, :8][real], a.hidden[real], atol=1e-5, rtol=1e-5)


def test_bidirectional_mask_lets_pad_queries_see_real_keys_only():
    mask = attention_mask_4d(torch.tensor([[1, 1, 0], [0, 0, 0]]), 3, 3, causal=False, device="cpu")
    assert mask.shape == (2, 1, 3, 3)
    # Row 0: every query (pads included) sees the two real keys and never the pad.
    assert torch.equal(mask[0, 0], torch.tensor([[1, 1, 0]] * 3).bool())
    # Row 1 has no real key at all: each query falls back to itself (no NaN from SDPA).
    assert torch.equal(mask[1, 0], torch.eye(3, dtype=torch.bool))
    model = tiny()
    out = model(ids_for(model, B=2, T=3), attention_mask=torch.tensor([[1, 1, 0], [0, 0, 0]]))
    assert torch.isfinite(out.hidden).all()


def test_bad_config_values_raise_config_error():
    with pytest.raises(ConfigError, match="heads"):
        lmlab.build("bert", "tiny", heads="mlm_only")
    with pytest.raises(ConfigError, match="pooler"):
        lmlab.build("bert", "tiny", heads="mlm_nsp", pooler=False)
    with pytest.raises(ConfigError, match="divisible"):
        lmlab.build("bert", "tiny", n_heads=5)
    with pytest.raises(ConfigError, match="activation"):
        lmlab.build("bert", "tiny", activation="tanh")
    with pytest.raises(ConfigError, match="pad_token_id"):
        lmlab.build("bert", "tiny", pad_token_id=512)
    with pytest.raises(ConfigError, match="unknown config key"):
        lmlab.build("bert", "tiny", n_positions=10)


def test_text_longer_than_the_context_is_a_clear_error():
    model = tiny()
    with pytest.raises(LmlabError, match=r"65 positions.*max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_init_is_a_truncated_normal_and_mlm_loss_starts_at_ln_vocab():
    model = tiny()
    std = model.config.init_std
    for name in ("word_emb.weight", "blocks.0.attn.c_attn.weight", "pooler.weight", "nsp.weight"):
        w = model.get_parameter(name)
        assert w.abs().max() <= 2 * std and 0.7 * std < w.std() < 1.1 * std, name
    assert torch.equal(model.mlm.decoder.bias, torch.zeros_like(model.mlm.decoder.bias))
    ids = ids_for(model, B=8, T=32)
    logits = model(ids).logits
    loss = F.cross_entropy(logits.flatten(0, 1), ids_for(model, B=8, T=32, seed=2).flatten())
    assert abs(loss.item() - math.log(model.config.vocab_size)) < 0.05


def test_dropout_is_active_in_training_only():
    model = tiny(dropout=0.1)
    ids = ids_for(model)
    model.train()
    assert not torch.equal(model(ids).hidden, model(ids).hidden)
    model.eval()
    assert torch.equal(model(ids).hidden, model(ids).hidden)


def test_a_few_mlm_steps_learn_a_fixed_batch():
    model = tiny()
    model.train()
    ids = ids_for(model, B=4, T=16)
    masked = ids.clone()
    masked[:, ::4] = 4  # a stand-in [MASK] id at every 4th position
    positions = torch.arange(0, 16, 4).expand(4, -1)
    target = ids.gather(1, positions)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        logits = model(masked, mlm_positions=positions).logits
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model.mlm.decoder.weight is model.word_emb.weight  # still tied after training


def test_save_load_round_trip(tmp_path):
    model = tiny(heads="mlm", pooler=False)
    lmlab.save(model, None, tmp_path)
    again, tokenizer = lmlab.load(tmp_path)
    assert tokenizer is None and again.config == model.config
    ids = ids_for(model)
    assert torch.equal(again(ids).logits, model(ids).logits)
    assert again.mlm.decoder.weight is again.word_emb.weight
