"""Sampled softmax (lmlab.nn.sampled_softmax): the log-uniform sampler's distribution, and the loss
against the formula written out on the same candidates (TF's sampled_softmax_loss with
remove_accidental_hits, candidates drawn with replacement)."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.nn.lm_loss import IGNORE_INDEX
from lmlab.nn.sampled_softmax import log_uniform_candidates, sampled_softmax_nll

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")


def test_candidates_follow_the_log_uniform_distribution():
    V, n = 50, 200_000
    torch.manual_seed(0)
    counts = torch.bincount(log_uniform_candidates(n, V), minlength=V).double()
    p = torch.tensor([(math.log(k + 2) - math.log(k + 1)) / math.log(V + 1) for k in range(V)],
                     dtype=torch.float64)
    assert counts.shape == (V,) and abs(float(p.sum()) - 1) < 1e-12
    # Every count within 5 binomial standard deviations of n·p(k).
    assert bool(((counts - n * p).abs() <= 5 * (n * p * (1 - p)).sqrt()).all())


def test_loss_is_the_corrected_softmax_over_target_and_candidates():
    V, D, N, S = 40, 6, 7, 12
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(N, D, generator=g, dtype=torch.float64)
    weight = torch.randn(V, D, generator=g, dtype=torch.float64)
    bias = torch.randn(V, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3, 5, 8, IGNORE_INDEX])
    torch.manual_seed(3)
    got = sampled_softmax_nll(hidden, weight, bias, targets, S)
    torch.manual_seed(3)
    cand = log_uniform_candidates(S, V)  # the same draw
    assert bool((cand[None] == targets[:6, None]).any())  # an accidental hit happens in this draw

    def log_q(k: int) -> float:
        return math.log(S * (math.log(k + 2) - math.log(k + 1)) / math.log(V + 1))

    for i in range(6):
        y = int(targets[i])
        true = float(hidden[i] @ weight[y] + bias[y]) - log_q(y)
        rest = [float(hidden[i] @ weight[k] + bias[k]) - log_q(int(k)) for k in cand if int(k) != y]
        want = math.log(math.exp(true) + sum(math.exp(v) for v in rest)) - true
        assert abs(float(got[i]) - want) < 1e-5
    assert float(got[6]) == 0.0


def test_gradients_reach_hidden_weight_and_bias():
    hidden = torch.randn(5, 4, requires_grad=True)
    weight, bias = torch.randn(30, 4, requires_grad=True), torch.zeros(30, requires_grad=True)
    sampled_softmax_nll(hidden, weight, bias, torch.tensor([1, 2, 3, 4, 29]), 8).sum().backward()
    assert all(t.grad is not None and bool(torch.isfinite(t.grad).all()) and t.grad.abs().sum() > 0
               for t in (hidden, weight, bias))
