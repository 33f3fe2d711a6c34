"""The auxiliary losses of Al-Rfou et al. 2018, §2.1 (lmlab.objectives.char_aux), checked by hand:
the l/(2n) schedule at every step, every switch against a loss written out here from the model's
logits and the classifiers' own weights, and training-only heads that stay out of the model."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.objectives.char_aux import CharAuxLoss, first_active_layer
from lmlab.objectives.clm import clm_loss

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")
B, T, V = 3, 10, 29


def model(n_layers: int = 4):
    torch.manual_seed(0)
    return lmlab.build("char-transformer", "tiny", vocab_size=V, n_layers=n_layers).eval()


def windows(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, V, (B, T + 2), generator=g)
    return w[:, :T], w[:, 1:T + 1], w[:, 2:]  # x, next characters, characters after next


@pytest.mark.parametrize("n_layers,steps", [(4, 20), (4, 7), (12, 1000), (64, 333), (2, 3), (3, 1)])
def test_intermediate_schedule_is_the_l_over_2n_cutoff_at_every_step(n_layers, steps):
    objective = CharAuxLoss(n_layers, 8, V, steps)
    for step in range(steps):
        objective.set_step(step)
        progress = Fraction(step, steps)  # the fraction of training done before this step
        want = [layer for layer in range(1, n_layers) if progress < Fraction(layer, 2 * n_layers)]
        assert list(objective.active_layers()) == want, (step, want)
        assert first_active_layer(step, steps, n_layers) == (want[0] if want else n_layers)
    # All intermediate layers count at the start, none after half of the training.
    assert first_active_layer(0, steps, n_layers) == 1
    assert first_active_layer(-(-steps // 2), steps, n_layers) == n_layers


def test_with_intermediate_and_targets_off_it_is_exactly_the_plain_next_character_loss():
    net, (x, y, y2) = model(), windows()
    objective = CharAuxLoss.for_model(net.config, 10, intermediate=False, multiple_targets=False)
    assert list(objective.module.parameters()) == []
    assert torch.equal(objective(net, (x, y, y2)), clm_loss(net, (x, y)))


def test_all_switches_off_scores_the_last_position_only():
    net, (x, y, y2) = model(), windows()
    objective = CharAuxLoss.for_model(net.config, 10, all_positions=False, intermediate=False,
                                      multiple_targets=False)
    with torch.no_grad():
        want = F.cross_entropy(net(x).logits[:, -1], y[:, -1])
        torch.testing.assert_close(objective(net, (x, y, y2)), want, rtol=1e-6, atol=1e-6)


def classifier(stack, row: int, hidden: torch.Tensor) -> torch.Tensor:
    """Row `row` of a StackedClassifiers applied by hand: LayerNorm with its affine, then linear."""
    h = F.layer_norm(hidden, hidden.shape[-1:], stack.norm_weight[row], stack.norm_bias[row], stack.eps)
    return h @ stack.weight[row].T + stack.bias[row]


def test_multiple_targets_checked_by_hand():
    net, (x, y, y2) = model(n_layers=3), windows()
    objective = CharAuxLoss.for_model(net.config, 100, intermediate=False)
    torch.manual_seed(5)
    for p in objective.module.parameters():  # not the initial ones: the affine must matter
        p.data.normal_(0, 0.3)
    with torch.no_grad():
        parts = objective.parts(net, (x, y, y2))
        out = net(x, output_hidden_states=True)
        logp_next = out.logits.log_softmax(-1)
        logp_after = classifier(objective.module.next2, 0, out.hidden).log_softmax(-1)
    # Written out: mean over the B*T positions of -log p(x_{t+1}) and 0.5 * mean of -log q(x_{t+2}).
    next_nll = sum(-logp_next[b, t, y[b, t]] for b in range(B) for t in range(T)) / (B * T)
    after_nll = sum(-logp_after[b, t, y2[b, t]] for b in range(B) for t in range(T)) / (B * T)
    assert set(parts) == {"next", "next2"}
    torch.testing.assert_close(parts["next"], next_nll, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["next2"], 0.5 * after_nll, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(objective(net, (x, y, y2)), next_nll + 0.5 * after_nll, rtol=1e-5, atol=1e-6)


def test_intermediate_layers_and_targets_together_by_hand():
    net, (x, y, y2) = model(n_layers=4), windows()
    objective = CharAuxLoss.for_model(net.config, 8)
    torch.manual_seed(6)
    for p in objective.module.parameters():
        p.data.normal_(0, 0.3)
    mods = objective.module
    with torch.no_grad():
        states = net(x, output_hidden_states=True).hidden_states  # embeddings, layers 1..3, final LN
        for step, layers in [(0, [1, 2, 3]), (1, [2, 3]), (2, [3]), (3, [])]:  # cut-offs 1, 2, 3 of 8
            objective.set_step(step)
            parts = objective.parts(net, (x, y, y2))
            want = {"next": F.cross_entropy(net(x).logits.flatten(0, 1), y.flatten()),
                    "next2": 0.5 * F.cross_entropy(classifier(mods.next2, 3, states[4]).flatten(0, 1),
                                                   y2.flatten())}
            for layer in layers:
                want[f"layer{layer}"] = F.cross_entropy(
                    classifier(mods.inter, layer - 1, states[layer]).flatten(0, 1), y.flatten())
                want[f"layer{layer}_next2"] = 0.5 * F.cross_entropy(
                    classifier(mods.next2, layer - 1, states[layer]).flatten(0, 1), y2.flatten())
            assert parts.keys() == want.keys(), step
            for name in want:
                torch.testing.assert_close(parts[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_last_position_only_scores_both_targets_of_the_last_position():
    net, (x, y, y2) = model(n_layers=2), windows()
    objective = CharAuxLoss.for_model(net.config, 10, all_positions=False)
    torch.manual_seed(7)
    for p in objective.module.parameters():
        p.data.normal_(0, 0.3)
    with torch.no_grad():
        states = net(x, output_hidden_states=True).hidden_states
        parts = objective.parts(net, (x, y, y2))
        want_layer1 = F.cross_entropy(classifier(objective.module.inter, 0, states[1][:, -1]), y[:, -1])
        want_after = F.cross_entropy(classifier(objective.module.next2, 1, states[2][:, -1]), y2[:, -1])
    torch.testing.assert_close(parts["layer1"], want_layer1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["next2"], 0.5 * want_after, rtol=1e-5, atol=1e-6)


def test_without_a_third_tensor_the_last_position_has_no_second_target():
    net, (x, y, y2) = model(n_layers=2), windows()
    objective = CharAuxLoss.for_model(net.config, 10, intermediate=False)
    with torch.no_grad():
        full = objective.parts(net, (x, y, y2))["next2"]
        short = objective.parts(net, (x, y))["next2"]
        rows = classifier(objective.module.next2, 0, net(x).hidden)[:, :-1]
        want = 0.5 * F.cross_entropy(rows.flatten(0, 1), y2[:, :-1].flatten())
    torch.testing.assert_close(short, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(full, short)


def test_gradients_reach_the_model_and_only_the_classifiers_in_use():
    net, batch = model(n_layers=4), windows()
    net.train()
    objective = CharAuxLoss.for_model(net.config, 8)
    objective.set_step(2)  # only layer 3 of the intermediate layers still counts
    objective(net, batch).backward()
    assert all(p.grad is not None for p in net.parameters())
    inter, next2 = objective.module.inter, objective.module.next2
    assert inter.weight.grad[:2].abs().sum() == 0 and inter.weight.grad[2].abs().sum() > 0
    assert next2.weight.grad[:2].abs().sum() == 0 and next2.weight.grad[2:].abs().sum() > 0
    assert not any(name.startswith(("inter", "next2")) for name in net.state_dict())
