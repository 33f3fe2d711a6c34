"""ScalarMix (lmlab.nn.scalar_mix): eq. 1 of Peters et al., the masked layer norm of bilm-tf, the L2 term."""

from __future__ import annotations

import pytest
import torch

from lmlab.nn.scalar_mix import ScalarMix

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")

F64 = torch.float64
L, B, T, D = 3, 2, 5, 4


def layers(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, D, generator=g, dtype=F64) * (j + 1) + j for j in range(L)]


def test_starts_as_the_mean_of_the_layers():
    mix = ScalarMix(L).to(F64)
    hs = layers()
    torch.testing.assert_close(mix(hs), sum(hs) / L)


def test_formula_gamma_times_softmax_weighted_sum():
    mix = ScalarMix(L).to(F64)
    with torch.no_grad():
        mix.scalars.copy_(torch.tensor([0.5, -1.0, 2.0]))
        mix.gamma.fill_(1.7)
    hs = layers()
    e = torch.tensor([0.5, -1.0, 2.0], dtype=F64).exp()
    w = e / e.sum()
    torch.testing.assert_close(mix(hs), 1.7 * (w[0] * hs[0] + w[1] * hs[1] + w[2] * hs[2]))
    torch.testing.assert_close(mix(torch.stack(hs)), mix(hs))  # a stacked (L, B, T, D) tensor works too


def test_masked_layer_norm_uses_only_unmasked_elements_of_the_whole_batch():
    mix = ScalarMix(L, layer_norm=True).to(F64)
    with torch.no_grad():
        mix.scalars.copy_(torch.tensor([0.3, 0.0, -0.4]))
    hs = layers()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    w = mix.weights().detach()
    want = 0
    for j, h in enumerate(hs):
        vals = h[mask]  # (unmasked positions, D): one mean and one (population) variance per layer
        want = want + w[j] * (h - vals.mean()) / torch.sqrt(vals.var(unbiased=False) + 1e-12)
    got = mix(hs, mask)
    torch.testing.assert_close(got, want)
    # What sits under the mask changes nothing at unmasked positions.
    noisy = [h.masked_fill(~mask[..., None], 1e4) for h in hs]
    torch.testing.assert_close(mix(noisy, mask)[mask], got[mask])
    # Without a mask every position counts.
    flat = [(h - h.mean()) / torch.sqrt(h.var(unbiased=False) + 1e-12) for h in hs]
    torch.testing.assert_close(mix(hs), sum(w[j] * flat[j] for j in range(L)))


def test_l2_penalty_on_the_scalars():
    mix = ScalarMix(L, l2_coef=0.01).to(F64)
    assert mix.l2_penalty().item() == 0.0
    with torch.no_grad():
        mix.scalars.copy_(torch.tensor([1.0, -2.0, 3.0]))
    torch.testing.assert_close(mix.l2_penalty(), torch.tensor(0.01 * 14.0, dtype=F64))
    mix.l2_penalty().backward()
    torch.testing.assert_close(mix.scalars.grad, 0.02 * mix.scalars.detach())
    assert ScalarMix(L).l2_penalty().item() == 0.0


@pytest.mark.parametrize("layer_norm", [False, True])
def test_gradcheck(layer_norm):
    mix = ScalarMix(L, layer_norm=layer_norm).to(F64)
    hs = [h[:, :3, :2].clone().requires_grad_() for h in layers()]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    s = torch.tensor([0.2, -0.1, 0.4], dtype=F64, requires_grad=True)
    gamma = torch.tensor([1.3], dtype=F64, requires_grad=True)

    def f(s, gamma, *hs):
        return torch.func.functional_call(mix, {"scalars": s, "gamma": gamma}, (list(hs), mask))

    assert torch.autograd.gradcheck(f, (s, gamma, *hs))


def test_wrong_number_of_layers():
    with pytest.raises(ValueError, match="expected 3"):
        ScalarMix(L)(layers()[:2])
