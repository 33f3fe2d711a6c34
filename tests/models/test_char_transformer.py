"""The deep character transformer (Al-Rfou et al. 2018): its own parts beyond the family contract
(tests/models/test_family_contract.py): a position table in every layer, the per-layer states the
auxiliary losses read, padding, generation through the KV cache, the paper's sizes."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.generate.loop import generate
from lmlab.models.char_transformer import CharTransformer
from lmlab.models.registry import make_config

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")


def tiny(**fields):
    torch.manual_seed(0)
    return lmlab.build("char-transformer", "tiny", **{"vocab_size": 29, **fields}).eval()


def ids(B=2, T=12, seed=1):
    return torch.randint(0, 29, (B, T), generator=torch.Generator().manual_seed(seed))


def test_every_layer_adds_its_own_position_table():
    model = tiny()
    tables = [block.wpe for block in model.blocks]
    assert all(t is not None for t in tables) and len({id(t.weight) for t in tables}) == len(tables)
    x = ids()
    with torch.no_grad():
        before = model(x).logits
        model.blocks[2].wpe.weight[3].add_(1.0)  # position 3 of layer 3 only
        after = model(x).logits
    torch.testing.assert_close(after[:, :3], before[:, :3], rtol=0, atol=0)  # earlier positions untouched
    assert not torch.allclose(after[:, 3:], before[:, 3:])
    single = tiny(per_layer_positions=False)
    assert single.blocks[0].wpe is not None and all(b.wpe is None for b in single.blocks[1:])
    per_layer = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in single.parameters())
    assert per_layer == (model.config.n_layers - 1) * model.config.max_seq_len * model.config.d_model


def test_hidden_states_are_the_embeddings_each_layers_output_and_the_final_norm():
    model = tiny()
    x = ids()
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        h = model.wte(x)
        want = [h]
        for i, block in enumerate(model.blocks):
            h = block(h, 0, None, None, None, i)
            want.append(h)
        want[-1] = model.ln_f(h)
    assert len(out.hidden_states) == model.config.n_layers + 1
    for got, expected in zip(out.hidden_states, want, strict=True):
        torch.testing.assert_close(got, expected)


def test_left_padding_changes_nothing():
    model = tiny()
    x = ids(B=1, T=9)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 3:], model(x).logits,
                                   rtol=1e-5, atol=1e-5)


def test_generation_through_the_kv_cache_equals_recomputation():
    model = tiny()
    prompt = ids(B=2, T=5)
    out = generate(model, prompt, max_new_tokens=8, do_sample=False, compile=True)  # compile: GPT only
    seq = prompt
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_the_context_is_a_hard_limit():
    model = tiny()
    with pytest.raises(lmlab.errors.LmlabError, match="longer than the model's context"):
        model(torch.zeros(1, model.config.max_seq_len + 1, dtype=torch.long))


@pytest.mark.parametrize("preset,layers", [("t12", 12), ("t64", 64)])
def test_paper_presets(preset, layers):
    config = make_config("char-transformer", preset, vocab_size=256)
    assert (config.n_layers, config.d_model, config.d_ff, config.n_heads, config.max_seq_len) == \
        (layers, 512, 2048, 8, 512)
    with torch.device("meta"):  # sizes only, nothing allocated
        model = CharTransformer(config)
    n = sum(p.numel() for p in model.parameters())
    # attention and feed-forward weights, their biases, two LayerNorms, the layer's position table
    per_layer = 12 * 512 * 512 + 2048 + 512 * 5 + 4 * 512 + 512 * 512
    assert n == layers * per_layer + 2 * 256 * 512 + 2 * 512
