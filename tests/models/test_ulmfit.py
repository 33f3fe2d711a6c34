"""AWD-LSTM (lmlab.models.ulmfit) against fastai's own outputs on the same weights, and its dropouts.

The goldens (tests/oracles/ulmfit/, made by tests/oracles/make_ulmfit_goldens.py in the fastai
environment) hold a small fastai AWD-LSTM LM's state dict, vocabulary and its logits for two calls
in a row, the second continuing the hidden state the first left (fastai keeps it in self.hidden;
lmlab passes out.state)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.nn.dropout import embedding_dropout, locked_dropout, weight_drop

GOLDENS = Path(__file__).resolve().parents[1] / "oracles" / "ulmfit"


@pytest.fixture(scope="module")
def converted():
    return lmlab.from_original("ulmfit", GOLDENS / "lm.pth", GOLDENS / "itos.pkl")


def test_outputs_equal_fastais_with_the_state_carried_across_calls(converted):
    model, _ = converted
    golden = load_file(str(GOLDENS / "goldens.safetensors"))
    state = None
    with torch.no_grad():
        for s in (0, 1):
            out = model(golden[f"ids.{s}"], state=state)
            torch.testing.assert_close(out.logits, golden[f"logits.{s}"], rtol=0, atol=1e-6)
            torch.testing.assert_close(out.hidden, golden[f"raw.{s}"], rtol=0, atol=1e-6)
            state = out.state
        # The second call from a fresh state differs: the golden depends on the carried state.
        fresh = model(golden["ids.1"]).logits
    assert not torch.allclose(fresh, golden["logits.1"], atol=1e-3)


def test_scored_targets_equal_the_logits_cross_entropy(converted):
    model, _ = converted
    ids = load_file(str(GOLDENS / "goldens.safetensors"))["ids.0"]
    targets = torch.roll(ids, -1, 1)
    targets[:, -1] = -100
    with torch.no_grad():
        logits = model(ids).logits
        nll = model(ids, targets=targets).nll
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    torch.testing.assert_close(nll.flatten(), want, rtol=1e-5, atol=1e-5)


def test_weight_drop_never_reaches_the_saved_weights(tmp_path):
    torch.manual_seed(0)
    model = lmlab.build("ulmfit", "tiny", weight_p=0.5, dropout=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 256, (2, 9))
    model.train()
    model(ids, targets=ids).nll.mean().backward()  # a training forward with DropConnect masks drawn
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # no dropped copy swapped into a parameter
    lmlab.save(model, None, tmp_path / "m")
    loaded, _ = lmlab.load(tmp_path / "m")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_every_dropout_is_off_in_eval_and_with_multiplier_zero():
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (2, 9))
    model = lmlab.build("ulmfit", "tiny")
    model.eval()
    with torch.no_grad():
        a = model(ids).logits
        model.train()
        b = model(ids).logits
        model.config = type(model.config)(**{**model.config.__dict__, "dropout": 0.0})
        for layer in model.layers:
            layer.weight_p = 0.0
        c = model(ids).logits
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_each_dropout_site_uses_its_probability_times_the_multiplier(monkeypatch):
    """Where each of the five probabilities applies (Merity §4: embedding, LSTM input, W_hh of every
    layer, between layers, output), each times `dropout` (fastai's drop_mult), with the sizes seen."""
    from lmlab.models import ulmfit as module
    from lmlab.nn import fused_lstm

    calls = []

    def spy(name, fn, skip=0):  # skip: arguments before the probability (embedding_dropout's weight)
        def record(x, *args, **kwargs):
            p, training = args[skip], args[skip + 1]
            calls.append((name, round(p, 9), tuple(x.shape), training))
            return fn(x, *args, **kwargs)
        return record

    monkeypatch.setattr(module, "embedding_dropout", spy("embed", embedding_dropout, skip=1))
    monkeypatch.setattr(module, "locked_dropout", spy("locked", locked_dropout))
    monkeypatch.setattr(fused_lstm, "weight_drop", spy("weight", weight_drop))
    model = lmlab.build("ulmfit", "tiny", dropout=0.5).train()  # 24 -> 48 -> 48 -> 24
    model(torch.randint(0, 256, (2, 7)))
    assert calls == [("embed", 0.01, (2, 7), True), ("locked", 0.125, (2, 7, 24), True),
                     ("weight", 0.1, (192, 48), True), ("locked", 0.075, (2, 7, 48), True),
                     ("weight", 0.1, (192, 48), True), ("locked", 0.075, (2, 7, 48), True),
                     ("weight", 0.1, (96, 24), True), ("locked", 0.05, (2, 7, 24), True)]


def test_locked_dropout_is_one_mask_per_row_and_feature_for_every_step():
    torch.manual_seed(0)
    x = torch.ones(3, 50, 8)
    y = locked_dropout(x, 0.5, True)
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same mask at every time step
    assert set(y.unique().tolist()) <= {0.0, 2.0} and 0 < (y == 0).float().mean() < 1
    assert torch.equal(locked_dropout(x, 0.5, False), x)


def test_embedding_dropout_drops_whole_words_everywhere_in_the_batch():
    torch.manual_seed(0)
    weight = torch.randn(20, 4)
    ids = torch.tensor([[1, 2, 3, 1, 2, 3], [3, 2, 1, 0, 0, 0]])
    out = embedding_dropout(ids, weight, 0.5, True)
    zero = (out == 0).all(-1)  # (B, T): a dropped word is zero in every dimension
    for word in ids.unique():
        states = zero[ids == word]
        assert bool(states.all()) or not bool(states.any())  # the same decision at every occurrence
    kept = ~zero
    torch.testing.assert_close(out[kept], 2.0 * weight[ids][kept])


def test_weight_drop_zeroes_entries_of_the_matrix():
    torch.manual_seed(0)
    w = torch.ones(64, 16)
    dropped = weight_drop(w, 0.25, True)
    assert dropped.unique().tolist() == [0.0, torch.tensor(4 / 3).item()]
    assert weight_drop(w, 0.25, False) is w


def test_new_words_start_at_the_mean_embedding_and_bias():
    torch.manual_seed(0)
    model = lmlab.build("ulmfit", "tiny")
    with torch.no_grad():
        model.decoder_bias.normal_()
    mean, bias = model.embed.weight.mean(0).clone(), model.decoder_bias.mean().clone()
    old = model.embed.weight[:256].clone()
    model.init_token_rows([256, 257], 258)
    assert model.config.vocab_size == 258 and model.embed.weight.shape == (258, 24)
    torch.testing.assert_close(model.embed.weight[256], mean)
    torch.testing.assert_close(model.decoder_bias[257], bias)
    assert torch.equal(model.embed.weight[:256], old)


def test_layer_groups_are_the_output_layer_then_each_lstm():
    # fastai's splits: the decoder bias rides with the tied embedding. A group of its own (as lmlab had)
    # is one the classifier never uses: it cost an unfreezing epoch and a further ÷2.6 on every LSTM.
    model = lmlab.build("ulmfit", "tiny")
    groups = model.layer_groups()
    assert len(groups) == 1 + model.config.n_layers
    assert groups[0] == [model.embed.weight, model.decoder_bias]
    assert [len(g) for g in groups[1:]] == [4, 4, 4]


def test_left_padding_and_padding_with_a_state_are_refused():
    model = lmlab.build("ulmfit", "tiny").eval()
    ids = torch.randint(0, 256, (2, 5))
    right = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    model(ids, attention_mask=right)  # right padding without a state: fine
    with pytest.raises(lmlab.errors.LmlabError, match="right padding"):
        model(ids, attention_mask=right.flip(1))
    with pytest.raises(lmlab.errors.LmlabError, match="right padding"):
        model(ids, attention_mask=right, state=model.init_state(2))


def test_generation_and_memory_evaluation_carry_the_state():
    from lmlab.eval.memory import memory_token_losses

    torch.manual_seed(0)
    model = lmlab.build("ulmfit", "tiny").eval()
    prompt = [5, 9, 2]
    got = lmlab.generate(model, [prompt], max_new_tokens=6)[0].tolist()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert got == ids
    stream = torch.randint(0, 256, (61,))
    with torch.no_grad():
        logits = model(stream[None, :-1]).logits[0]
    whole = torch.nn.functional.cross_entropy(logits, stream[1:], reduction="none")
    torch.testing.assert_close(memory_token_losses(model, stream, segment=7), whole, rtol=1e-5, atol=1e-5)


def test_bad_dropout_settings_are_one_line():
    with pytest.raises(lmlab.errors.ConfigError, match="weight_p"):
        lmlab.build("ulmfit", "tiny", weight_p=0.6, dropout=2.0)
