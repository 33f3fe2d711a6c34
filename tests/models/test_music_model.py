"""The music family (models/music.py): the GPT-2 decoder with or without skewed relative attention.
The contract (tests/models/test_family_contract.py) covers the tiny preset; here: the relative
model against the plain one, its KV cache with left padding and a clipped table, compile=True."""

import pytest
import torch

import lmlab
from lmlab.errors import ConfigError
from lmlab.generate import compiled
from lmlab.models.gpt import Block
from lmlab.nn.attention import SelfAttention
from lmlab.nn.skewed_relative import SkewedRelativeAttention

PROMPTS = [[5, 17, 200, 3, 9, 41, 77], [8], [100, 101, 102, 250]]


def tiny(**fields):
    torch.manual_seed(0)
    return lmlab.build("music", "tiny", **fields).eval()


def test_relative_model_is_the_plain_one_plus_a_table_per_layer():
    rel, plain = tiny(), tiny(relative_attention=False)
    assert all(type(b.attn) is SkewedRelativeAttention for b in rel.blocks)
    assert all(type(b) is Block and type(b.attn) is SelfAttention for b in plain.blocks)
    c = rel.config
    extra = sum(p.numel() for p in rel.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == c.n_layers * c.n_heads * c.max_seq_len * (c.d_model // c.n_heads)
    # with the table zeroed, relative attention is plain attention (same weights otherwise)
    plain.load_state_dict({k: v for k, v in rel.state_dict().items() if not k.endswith(".rel")})
    for block in rel.blocks:
        block.attn.rel.data.zero_()
    ids = torch.randint(0, c.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(rel(ids).logits, plain(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fields", [{}, {"max_relative_distance": 5}], ids=["full", "clipped"])
def test_left_padded_batches_generate_what_single_prompts_do(fields):
    model = tiny(**fields)
    batched = lmlab.generate(model, PROMPTS, max_new_tokens=12, eos_token_id=None)
    for row, prompt in zip(batched, PROMPTS, strict=True):
        alone = lmlab.generate(model, [prompt], max_new_tokens=12, eos_token_id=None)[0]
        assert row[-12:].tolist() == alone[-12:].tolist()


def test_clipped_table_steps_equal_recomputation():
    model = tiny(max_relative_distance=4)
    ids = torch.randint(0, model.config.vocab_size, (2, 15))
    with torch.no_grad():
        full = model(ids).logits
        state = model.init_state(2, 15)
        steps = [model(ids[:, :6], state=state).logits]
        for t in range(6, 15):
            steps.append(model(ids[:, t:t + 1], state=state).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_compile_steps_the_plain_model_and_decodes_relative_attention_eagerly():
    plain, relative = tiny(relative_attention=False), tiny()
    assert compiled.supports(plain) and not compiled.supports(relative)
    for model in (plain, relative):
        want = lmlab.generate(model, PROMPTS, max_new_tokens=10)
        assert torch.equal(lmlab.generate(model, PROMPTS, max_new_tokens=10, compile=True), want)


def test_config_checks():
    with pytest.raises(ConfigError, match="pre_ln must be true"):
        lmlab.build("music", "tiny", pre_ln=False)
    with pytest.raises(ConfigError, match="max_relative_distance must be an integer >= 0"):
        lmlab.build("music", "tiny", max_relative_distance=-1)
    small = lmlab.build("music", "small")
    assert small.config.relative_attention and small.config.max_seq_len == 1024


def test_save_and_load_keep_the_relative_tables(tmp_path):
    model = tiny(max_relative_distance=7)
    lmlab.save(model, None, tmp_path / "m")
    loaded, _ = lmlab.load(tmp_path / "m")
    assert loaded.config == model.config
    assert torch.equal(loaded.blocks[1].attn.rel, model.blocks[1].attn.rel)
