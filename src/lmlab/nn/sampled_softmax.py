"""Sampled softmax (Jean et al. 2015, §3): the training loss of a softmax over a large vocabulary,
computed on the target and a few hundred/thousand sampled words instead of all of them. bilm-tf
trains ELMo this way (`tf.nn.sampled_softmax_loss`, 8,192 samples per batch over 793k words) and
scores with the full softmax.

Candidates are drawn from the log-uniform (Zipfian) distribution over ids, which fits a vocabulary
sorted by falling frequency (lmlab's word tokenizers are):

    p(k) = (log(k + 2) - log(k + 1)) / log(V + 1)

One set of S candidates is shared by every row. With q(k) = S·p(k) the expected number of times
k is drawn, each row's logits are corrected by -log q (sampled softmax is then consistent), and a
candidate equal to the row's own target is removed (TF's `remove_accidental_hits`):

    nll = logsumexp([l_y - log q(y), l_s - log q(s) for s not y]) - (l_y - log q(y))

Deviation from TF: candidates are drawn with replacement (TF's sampler draws S distinct ones,
`unique=True`, and corrects by the probability of being drawn at least once); the estimator is
the same kind, its expected counts exact. The draw uses torch's global generator, whose state
checkpoints save, so a resumed run draws the same candidates.
"""

from __future__ import annotations

import math

import torch

from lmlab.nn.lm_loss import IGNORE_INDEX


def log_uniform_candidates(n_samples: int, vocab: int, device=None) -> torch.Tensor:
    """(n_samples,) ids drawn with replacement from p(k) above, by the inverse CDF:
    k = floor(exp(u · log(V + 1))) - 1 for u ~ U[0, 1)."""
    u = torch.rand(n_samples, device=device, dtype=torch.float64)
    ids = torch.floor(torch.exp(u * math.log(vocab + 1))).long() - 1
    return ids.clamp_(0, vocab - 1)


def log_expected_count(ids: torch.Tensor, n_samples: int, vocab: int) -> torch.Tensor:
    """log(S · p(k)) for every id in `ids` (float32)."""
    k = ids.double()
    p = (torch.log(k + 2) - torch.log(k + 1)) / math.log(vocab + 1)
    return torch.log(n_samples * p).float()


def sampled_softmax_nll(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        targets: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Per-row sampled-softmax loss (N,) for hidden (N, D), an output layer weight (V, D) and bias
    (V,), targets (N,) (IGNORE_INDEX rows give 0). Differentiable in hidden, weight and bias."""
    vocab = weight.shape[0]
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, 0)
    sampled = log_uniform_candidates(n_samples, vocab, hidden.device)  # (S,)
    w_true, w_s = weight[safe], weight[sampled]  # (N, D), (S, D)
    true_logit = (hidden * w_true).sum(-1).float()  # (N,)
    sampled_logits = (hidden @ w_s.T).float()  # (N, S)
    if bias is not None:
        true_logit = true_logit + bias[safe].float()
        sampled_logits = sampled_logits + bias[sampled].float()
    true_logit = true_logit - log_expected_count(safe, n_samples, vocab)
    sampled_logits = sampled_logits - log_expected_count(sampled, n_samples, vocab)[None, :]
    hits = sampled[None, :] == safe[:, None]  # (N, S): a sample that is the row's own target
    sampled_logits = sampled_logits.masked_fill(hits, float("-inf"))
    logits = torch.cat([true_logit[:, None], sampled_logits], 1)  # (N, 1 + S); column 0 is the target
    nll = torch.logsumexp(logits, 1) - true_logit
    return nll * valid
