"""Adaptive input embedding and adaptive softmax (with Transformer-XL's projections)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.nn.adaptive import AdaptiveEmbedding, AdaptiveLogSoftmax

V, D_PROJ = 50, 8
# (cutoffs, div_val, d_embed): one plain table, div_val 1 with projections, div_val 2 per cluster.
CASES = [((), 1, 8), ((10, 30), 1, 6), ((10, 30), 2, 8), ((5,), 4, 8), ((), 2, 8)]


def softmax(cutoffs, div_val, d_embed, dtype=torch.float32):
    torch.manual_seed(0)
    crit = AdaptiveLogSoftmax(V, d_embed, D_PROJ, cutoffs, div_val).to(dtype)
    for p in crit.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return crit


@pytest.mark.parametrize("cutoffs,div_val,d_embed", CASES)
def test_log_prob_is_a_distribution_and_nll_matches_it(cutoffs, div_val, d_embed):
    crit = softmax(cutoffs, div_val, d_embed)
    h = torch.randn(7, D_PROJ)
    logp = crit.log_prob(h)
    assert logp.shape == (7, V)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(7))
    targets = torch.tensor([0, 9, 10, 29, 30, 49, 5])
    torch.testing.assert_close(crit.nll(h, targets), -logp.gather(1, targets[:, None]).squeeze(1))
    assert crit.log_prob(h.view(7, 1, D_PROJ)).shape == (7, 1, V)


def test_two_level_factorisation():
    # log p(x) = log p(cluster | h) + log p(x | cluster, h) with both softmaxes written out.
    crit = softmax((10, 30), 2, 8)
    h = torch.randn(3, D_PROJ)
    head = F.log_softmax(h @ crit.projs["0"] @ torch.cat([crit.layers[0].weight, crit.cluster_weight]).T
                         + torch.cat([crit.layers[0].bias, crit.cluster_bias]), -1)
    tail2 = F.log_softmax(h @ crit.projs["2"] @ crit.layers[2].weight.T + crit.layers[2].bias, -1)
    logp = crit.log_prob(h)
    torch.testing.assert_close(logp[:, :10], head[:, :10])
    torch.testing.assert_close(logp[:, 30:], head[:, 11:12] + tail2)


@pytest.mark.parametrize("cutoffs,div_val,d_embed", CASES[:4])
def test_gradcheck_log_prob_and_nll(cutoffs, div_val, d_embed):
    crit = softmax(cutoffs, div_val, d_embed, torch.float64)
    h = torch.randn(3, D_PROJ, dtype=torch.float64, requires_grad=True)
    # fast_mode checks random projections of the Jacobian: the same test, far fewer backward passes.
    assert torch.autograd.gradcheck(crit.log_prob, (h,), fast_mode=True)
    targets = torch.tensor([3, 12, 40])
    assert torch.autograd.gradcheck(lambda x: crit.nll(x, targets), (h,))


def test_nll_only_touches_clusters_with_targets():
    crit = softmax((10, 30), 2, 8)
    h = torch.randn(4, D_PROJ)
    crit.nll(h, torch.tensor([1, 2, 12, 13])).sum().backward()  # head and cluster 1 only
    assert crit.layers[1].weight.grad is not None and crit.cluster_weight.grad is not None
    assert crit.layers[2].weight.grad is None


@pytest.mark.parametrize("cutoffs,div_val,d_embed", CASES)
def test_embedding_per_cluster(cutoffs, div_val, d_embed):
    torch.manual_seed(0)
    emb = AdaptiveEmbedding(V, d_embed, D_PROJ, cutoffs, div_val)
    for p in emb.parameters():
        torch.nn.init.normal_(p)
    ids = torch.tensor([[0, 9, 10, 29], [30, 49, 3, 30]])
    out = emb(ids)
    assert out.shape == (2, 4, D_PROJ)
    bounds = [0, *cutoffs, V]
    for b in range(2):
        for t in range(4):
            x = int(ids[b, t])
            if len(emb.layers) == 1:
                e = emb.layers[0].weight[x]
                e = emb.projs["0"] @ e if "0" in emb.projs else e
            else:
                i = max(k for k in range(len(bounds) - 1) if bounds[k] <= x)
                e = emb.projs[str(i)] @ emb.layers[i].weight[x - bounds[i]]
            torch.testing.assert_close(out[b, t], e * D_PROJ ** 0.5)
    out.sum().backward()
    assert all(p.grad is not None for p in emb.parameters())
