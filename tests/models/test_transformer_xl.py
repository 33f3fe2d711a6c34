"""Transformer-XL: memory semantics and equivalences, generation with memory, init loss, input errors,
config validation, presets. Parity with the HF reference: tests/checkpoints/test_convert_transfo_xl.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import lmlab
from lmlab.checkpoints.atomic import write_manifest
from lmlab.errors import CheckpointError, ConfigError, GenerationError, LmlabError


def tiny(seed: int = 0, std: float = 0.1, **overrides):
    """The tiny preset with widened weights, so attention is far from uniform."""
    torch.manual_seed(seed)
    model = lmlab.build("transfo-xl", "tiny", **overrides).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" not in name:
                p.normal_(0.0, std)
    return model


def stream(n: int, B: int = 2, vocab: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (B, n), generator=torch.Generator().manual_seed(seed))


def by_segments(model, ids: torch.Tensor, seg: int, mems=None):
    outs = []
    for s in range(0, ids.shape[1], seg):
        out = model(ids[:, s:s + seg], state=mems)
        outs.append(out.logits)
        mems = out.state
    return torch.cat(outs, 1), mems


def test_tiny_preset_size_and_output_fields():
    model = tiny()
    c = model.config
    assert sum(p.numel() for p in model.parameters()) <= 100_000
    ids = stream(7)
    out = model(ids, output_hidden_states=True)
    assert out.logits.shape == (2, 7, c.vocab_size)
    assert out.hidden.shape == (2, 7, c.d_model)
    assert len(out.hidden_states) == c.n_layers + 1 and torch.equal(out.hidden_states[-1], out.hidden)
    # logits are log-probabilities; the state is the new memory.
    torch.testing.assert_close(out.logits.exp().sum(-1), torch.ones(2, 7))
    assert len(out.state) == c.n_layers
    assert model(ids, logits_to_keep=2).logits.shape == (2, 2, c.vocab_size)
    torch.testing.assert_close(model(ids, logits_to_keep=2).logits, out.logits[:, -2:])


def test_memory_is_the_layer_inputs_truncated_and_detached():
    model = tiny(mem_len=6)
    model.train()  # dropout is 0 in tiny: train mode only switches autograd bookkeeping on
    a, b = stream(4), stream(5, seed=2)
    out_a = model(a, output_hidden_states=True)
    assert [m.shape for m in out_a.state] == [(2, 4, 32)] * 2
    for layer, m in enumerate(out_a.state):  # the input of layer l is hidden_states[l]
        torch.testing.assert_close(m, out_a.hidden_states[layer])
        assert not m.requires_grad
    out_b = model(b, state=out_a.state, output_hidden_states=True)
    for layer, m in enumerate(out_b.state):  # [old; new][-6:]
        want = torch.cat([out_a.hidden_states[layer], out_b.hidden_states[layer]], 1)[:, -6:]
        torch.testing.assert_close(m, want)
    assert torch.equal(model.init_state(2)[0], torch.zeros(2, 0, 32))
    torch.testing.assert_close(model(a, state=model.init_state(2)).logits, model(a).logits)


def test_segments_with_memory_equal_one_pass_when_memory_covers_everything():
    model = tiny(mem_len=64)
    ids = stream(15)
    segmented, mems = by_segments(model, ids, 4)
    torch.testing.assert_close(segmented, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert mems[0].shape[1] == 15


def test_clamped_distances_segments_equal_one_pass():
    model = tiny(mem_len=64, clamp_len=3)
    ids = stream(12)
    torch.testing.assert_close(by_segments(model, ids, 5)[0], model(ids).logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(ids).logits, tiny(mem_len=64)(ids).logits)


def test_same_length_segments_equal_one_pass_with_a_short_memory():
    # same_length: every query sees the last mem_len keys, in one pass and segment by segment alike
    # (the memory holds exactly those keys), so the two agree even though mem_len < length.
    model = tiny(mem_len=5, same_length=True)
    ids = stream(16)
    torch.testing.assert_close(by_segments(model, ids, 4)[0], model(ids).logits, atol=1e-5, rtol=1e-5)
    # Without same_length, a memory shorter than the stream really does forget.
    short = tiny(mem_len=5)
    assert not torch.allclose(by_segments(short, ids, 4)[0], short(ids).logits, atol=1e-3)


def test_nll_matches_log_probs_and_carries_memory():
    for overrides in ({}, {"cutoffs": (40, 120), "div_val": 2, "tie_projs": (False, True, True)}):
        model = tiny(**overrides)
        ids = stream(9)
        x, y = ids[:, :-1], ids[:, 1:]
        nll, mems = model.nll(x, y)
        out = model(x)
        torch.testing.assert_close(nll, -out.logits.gather(2, y[..., None]).squeeze(2))
        for a, b in zip(mems, out.state, strict=True):
            torch.testing.assert_close(a, b)
        nll2, _ = model.nll(x, y, state=mems)
        out2 = model(x, state=out.state)
        torch.testing.assert_close(nll2, -out2.logits.gather(2, y[..., None]).squeeze(2))
        tail = model(x, targets=y[:, -3:], logits_to_keep=3).nll  # score the last 3 positions only
        torch.testing.assert_close(tail, nll[:, -3:])


def test_loss_at_init_is_about_ln_vocab():
    torch.manual_seed(0)
    model = lmlab.build("transfo-xl", "tiny", vocab_size=512).eval()
    ids = stream(33, B=4, vocab=512)
    nll, _ = model.nll(ids[:, :-1], ids[:, 1:])
    assert abs(nll.mean().item() - math.log(512)) < 0.1
    # With an adaptive softmax a fresh model is uniform within each level: head and cluster.
    model = lmlab.build("transfo-xl", "tiny", vocab_size=512, cutoffs=(64,)).eval()
    logp = model(ids).logits  # (4, 33, 512)
    head, tail = -math.log(65), -math.log(65) - math.log(448)
    assert abs(logp[..., :64].mean().item() - head) < 0.05
    assert abs(logp[..., 64:].mean().item() - tail) < 0.05
    want = torch.tensor([head] * 64 + [tail] * 448)
    assert (logp - want).std().item() < 0.3  # logits of std ~0.1 at init, on two levels


def test_training_step_with_memory_reduces_loss_and_no_gradient_reaches_memory():
    torch.manual_seed(0)
    model = lmlab.build("transfo-xl", "tiny", cutoffs=(32,), dropout=0.1)
    ids = stream(17, B=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        mems, total = None, 0.0
        for s in range(0, 16, 8):
            nll, mems = model.nll(ids[:, s:s + 8], ids[:, s + 1:s + 9], mems)
            loss = nll.mean()
            opt.zero_grad()
            loss.backward()  # would fail ("backward through the graph a second time") if mems kept it
            opt.step()
            total += loss.item()
        losses.append(total)
    assert losses[-1] < 0.5 * losses[0]


def greedy_by_recomputation(model, ids, n):
    for _ in range(n):
        nxt = model(ids).logits[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], 1)
    return ids


def test_generation_with_memory_equals_recomputation():
    model = tiny(mem_len=64, tgt_len=4)  # the 10-token prompt is consumed in 3 segments
    prompt = stream(10)
    got = lmlab.generate(model, prompt, max_new_tokens=12)
    assert got.shape == (2, 22)
    assert torch.equal(got, greedy_by_recomputation(model, prompt, 12))
    # A memory shorter than the text: each step is the model run on one token with its memory.
    short = tiny(mem_len=3, tgt_len=4)
    ids, mems = prompt, None
    for s in range(0, 10, 4):
        out = short(prompt[:, s:s + 4], state=mems)
        mems = out.state
    for _ in range(5):
        nxt = out.logits[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], 1)
        out = short(nxt[:, None], state=out.state)
    assert torch.equal(lmlab.generate(short, prompt, max_new_tokens=5), ids)


def test_generation_sampling_options_and_batches():
    model = tiny(tgt_len=4)
    prompt = stream(6)
    kwargs = dict(max_new_tokens=8, do_sample=True, temperature=0.8, top_k=20, top_p=0.9,
                  repetition_penalty=1.3, seed=3)
    a = lmlab.generate(model, prompt, **kwargs)
    assert torch.equal(a, lmlab.generate(model, prompt, **kwargs))
    assert torch.equal(a[:, :6], prompt)
    several = lmlab.generate(model, prompt[0].tolist(), num_return_sequences=3, **kwargs)
    assert several.shape == (3, 14)
    stopped = lmlab.generate(model, prompt, max_new_tokens=8, eos_token_id=int(a[0, 6]))
    assert stopped.shape[1] <= 14
    with pytest.raises(GenerationError, match="padding"):
        lmlab.generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=2)


def test_bad_input_errors():
    model = tiny()
    ids = stream(4)
    mems = model(ids).state
    cases = [
        (dict(state=mems[:1]), "list of 2 tensors"),
        (dict(state=[m[:1] for m in mems]), r"layer 0 has shape \(1, 4, 32\)"),  # batch 1 vs 2
        (dict(state=[m[..., :16] for m in mems]), r"\(2, M, 32\)"),  # another d_model
        (dict(state=[mems[0], mems[1][:, :2]]), "same M"),
        (dict(attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])), "padding"),
    ]
    for kwargs, message in cases:
        with pytest.raises(LmlabError, match=message):
            model(ids, **kwargs)
    for kwargs in (dict(cache=object()), dict(token_type_ids=torch.zeros_like(ids))):  # no such inputs
        with pytest.raises(TypeError):
            model(ids, **kwargs)
    with pytest.raises(LmlabError, match=r"\[0, 256\)"):
        model(torch.tensor([[1, 256]]))
    with pytest.raises(LmlabError, match="targets"):
        model.nll(ids, ids[:, :3])
    with pytest.raises(LmlabError, match="memory"):
        model.nll(ids, ids, state=mems[:1])
    model(ids, attention_mask=torch.ones_like(ids))  # all ones is fine


@pytest.mark.parametrize("overrides,message", [
    (dict(mem_len=-1), "mem_len"),
    (dict(cutoffs=(100, 50)), r"cutoffs=\[100, 50\].*vocab_size=256"),
    (dict(cutoffs=(100, 256)), r"cutoffs.*vocab_size=256"),
    (dict(cutoffs=(0, 100)), "cutoffs"),
    (dict(d_model=33), "even"),
    (dict(same_length=True, mem_len=0), "same_length"),
    (dict(cutoffs=(10, 20), tie_projs=(True,)), "tie_projs"),
    (dict(cutoffs=(10, 20), div_val=8, d_embed=32), "width 0"),
    (dict(max_seq_len=10), "unknown config key"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        lmlab.build("transfo-xl", "tiny", **overrides)


def test_checkpoint_whose_cutoffs_do_not_fit_its_vocabulary(tmp_path):
    model = tiny(cutoffs=(100,))
    lmlab.save(model, None, tmp_path)
    loaded, _ = lmlab.load(tmp_path)
    ids = stream(5)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert loaded.softmax.layers[0].weight is loaded.embed.layers[0].weight  # tie restored on load
    config = json.loads((tmp_path / "config.json").read_text())
    config["cutoffs"] = [100, 300]
    (tmp_path / "config.json").write_text(json.dumps(config))
    write_manifest(tmp_path, ["config.json", "model.safetensors"])
    with pytest.raises(CheckpointError, match=r"config.json.*cutoffs=\[100, 300\].*vocab_size=256"):
        lmlab.load(tmp_path)


def test_save_load_keeps_ties():
    model = tiny(cutoffs=(40, 120), div_val=2, tie_projs=(False, True, True))
    assert model.softmax.layers[2].weight is model.embed.layers[2].weight
    assert model.softmax.projs["1"] is model.embed.projs["1"]
    assert model.softmax.projs["0"] is not model.embed.projs["0"]


def test_max_seq_len_means_no_hard_limit():
    model = tiny()
    assert model.config.max_seq_len >= 2 ** 31 - 1
    assert "max_seq_len" not in lmlab.models.config.config_to_dict(model.config)


@pytest.mark.parametrize("preset,millions", [("wt103-base", 151.1), ("enwik8-12l", 41.1),
                                             ("enwik8-24l", 277.2), ("wt103-large", 285.2)])
def test_presets_have_the_papers_sizes(preset, millions):
    # Paper: 151M (base), 41M / 277M (enwik8); the released large WT103 model is 285.2M in HF too.
    with torch.device("meta"):
        model = lmlab.build("transfo-xl", preset, untie_r=preset == "wt103-large")
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - millions) < 0.1
    if preset == "wt103-large":
        assert n == 285_205_322  # transformers' TransfoXLLMHeadModel(TransfoXLConfig()) exactly
