"""Adaptive input embeddings (Baevski & Auli 2018) and the adaptive softmax (Grave et al. 2017),
with the projections Transformer-XL uses around them (Dai et al. 2019, appendix / released code).

The vocabulary (sorted by frequency) is cut into clusters [0, c_1), [c_1, c_2), …, [c_n, V).
Cluster i has width d_embed // div_val**i (div_val = 1: one full-vocabulary table) and a projection
to or from the model width d_proj.

* Embedding: e(x) = sqrt(d_proj) · P_i · E_i[x - c_i] for x in cluster i (P_i is d_proj × d_i).
* Softmax: the head scores the first cluster's tokens plus one logit per tail cluster; a tail token's
  log-probability is log p(cluster | h) + log p(x | cluster, h). Every cluster's logits are
  W_i · (P_iᵀ h) + b_i, so a tied P_i and W_i = E_i reuse the input embedding in reverse.

`log_prob` gives the full (…, V) log-distribution (evaluation, sampling); `nll` scores given targets
and computes each tail cluster only for the rows whose target falls in it (training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cluster_bounds(vocab_size: int, cutoffs: tuple[int, ...]) -> list[int]:
    return [0, *cutoffs, vocab_size]


class AdaptiveEmbedding(nn.Module):
    """Token ids (…) -> (…, d_proj). Parameters: layers.{i}.weight (size_i, d_i), projs.{i} (d_proj, d_i).

    div_val = 1 keeps one table over the whole vocabulary and a projection only when
    d_embed != d_proj; div_val > 1 has one table and one projection per cluster.
    """

    def __init__(self, vocab_size: int, d_embed: int, d_proj: int, cutoffs: tuple[int, ...] = (),
                 div_val: int = 1):
        super().__init__()
        self.bounds = cluster_bounds(vocab_size, cutoffs)
        self.d_proj = d_proj
        self.scale = d_proj ** 0.5
        if div_val == 1:
            self.layers = nn.ModuleList([nn.Embedding(vocab_size, d_embed)])
            dims = [d_embed] if d_embed != d_proj else []
        else:
            dims = [d_embed // div_val ** i for i in range(len(self.bounds) - 1)]
            self.layers = nn.ModuleList(nn.Embedding(hi - lo, d) for lo, hi, d in
                                        zip(self.bounds[:-1], self.bounds[1:], dims, strict=True))
        self.projs = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(d_proj, d))
                                       for i, d in enumerate(dims)})

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if len(self.layers) == 1:
            e = self.layers[0](ids)  # (…, d_embed)
            if "0" in self.projs:
                e = F.linear(e, self.projs["0"])  # (…, d_proj)
            return e * self.scale
        flat = ids.reshape(-1)
        out = None
        for i, layer in enumerate(self.layers):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            rows = ((flat >= lo) & (flat < hi)).nonzero().squeeze(1)
            e = F.linear(layer(flat[rows] - lo), self.projs[str(i)])  # (n_i, d_proj)
            if out is None:  # allocated here so that autocast's dtype carries through
                out = e.new_zeros(flat.shape[0], self.d_proj)
            out = out.index_copy(0, rows, e)
        return (out * self.scale).view(*ids.shape, self.d_proj)


class AdaptiveLogSoftmax(nn.Module):
    """Hidden states (…, d_proj) -> log-probabilities over the vocabulary.

    Parameters: layers.{i} Linear (div_val = 1: one Linear(d_embed, V) sliced per cluster),
    projs.{i} (d_proj, d_i) (none when div_val = 1 and d_embed == d_proj), and with tail clusters
    cluster_weight (n_tails, d_embed), cluster_bias (n_tails) that extend the head.
    """

    def __init__(self, vocab_size: int, d_embed: int, d_proj: int, cutoffs: tuple[int, ...] = (),
                 div_val: int = 1):
        super().__init__()
        self.bounds = cluster_bounds(vocab_size, cutoffs)
        self.n_tails = len(cutoffs)
        self.shortlist = self.bounds[1]
        self.div_val = div_val
        n = self.n_tails + 1
        if div_val == 1:
            self.layers = nn.ModuleList([nn.Linear(d_embed, vocab_size)])
            dims = [d_embed] * n if d_embed != d_proj else []
        else:
            dims = [d_embed // div_val ** i for i in range(n)]
            self.layers = nn.ModuleList(nn.Linear(d, hi - lo) for lo, hi, d in
                                        zip(self.bounds[:-1], self.bounds[1:], dims, strict=True))
        self.projs = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(d_proj, d))
                                       for i, d in enumerate(dims)})
        if self.n_tails:
            self.cluster_weight = nn.Parameter(torch.zeros(self.n_tails, d_embed))
            self.cluster_bias = nn.Parameter(torch.zeros(self.n_tails))

    def cluster_logits(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """Logits of cluster i for hidden states (…, d_proj): (…, size_i), the head (i = 0) with
        one extra logit per tail cluster at the end."""
        lo, hi = self.bounds[i], self.bounds[i + 1]
        layer = self.layers[0] if self.div_val == 1 else self.layers[i]
        weight, bias = layer.weight, layer.bias
        if self.div_val == 1 and self.n_tails:
            weight, bias = weight[lo:hi], bias[lo:hi]
        if i == 0 and self.n_tails:
            weight = torch.cat([weight, self.cluster_weight])
            bias = torch.cat([bias, self.cluster_bias])
        if str(i) in self.projs:
            h = h @ self.projs[str(i)]  # (…, d_proj) -> (…, d_i): the transposed input projection
        return F.linear(h, weight, bias)

    def log_prob(self, h: torch.Tensor) -> torch.Tensor:
        """(…, d_proj) -> (…, V) log-probabilities."""
        head = F.log_softmax(self.cluster_logits(h, 0), dim=-1)  # (…, shortlist + n_tails)
        if not self.n_tails:
            return head
        parts = [head[..., :self.shortlist]]
        for i in range(1, self.n_tails + 1):
            cluster = head[..., self.shortlist + i - 1:self.shortlist + i]  # log p(cluster i | h)
            parts.append(cluster + F.log_softmax(self.cluster_logits(h, i), dim=-1))
        return torch.cat(parts, dim=-1)

    def nll(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """h (N, d_proj), targets (N,) in [0, V) -> (N,) negative log-likelihoods."""
        head = F.log_softmax(self.cluster_logits(h, 0), dim=-1)  # (N, shortlist + n_tails)
        if not self.n_tails:
            return -head.gather(1, targets[:, None]).squeeze(1)
        # Head tokens read the head; the others get their cluster's logit, plus the tail below.
        col = torch.where(targets < self.shortlist, targets, self.shortlist - 1)
        for i in range(1, self.n_tails + 1):
            col = torch.where(targets >= self.bounds[i], self.shortlist + i - 1, col)
        logp = head.gather(1, col[:, None]).squeeze(1)  # (N,)
        for i in range(1, self.n_tails + 1):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            rows = ((targets >= lo) & (targets < hi)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            tail = F.log_softmax(self.cluster_logits(h[rows], i), dim=-1)  # (n_i, size_i)
            within = tail.gather(1, (targets[rows] - lo)[:, None]).squeeze(1)
            logp = logp.index_add(0, rows, within.to(logp.dtype))
        return -logp
