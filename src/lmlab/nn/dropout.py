"""The dropouts of AWD-LSTM (Merity et al. 2017, §4), as ULMFiT uses them (Howard & Ruder 2018, §3).

- `locked_dropout` (variational dropout, Gal & Ghahramani 2016; Merity §4.2): one Bernoulli mask per
  sequence and feature, the same at every time step: x (B, T, D) * m (B, 1, D) / (1 - p).
- `embedding_dropout` (Merity §4.3): whole words dropped from the embedding table, the same words at
  every position of the batch: row w of the table is zeroed with probability p, the others scaled
  by 1 / (1 - p). Sampled as one mask over the vocabulary and applied to the looked-up rows only, so
  the (V, D) table is never copied (the same numbers as masking the table, fastai's way).
- `weight_drop` (DropConnect, Wan et al. 2013; Merity §4.1): elementwise dropout on a weight matrix,
  one mask per forward call, shared by every time step and row. Applied to the hidden-to-hidden
  matrix of an LSTM it regularises the recurrence without touching the fused kernel. The parameter
  itself is never written: the dropped copy is a temporary, so saved weights are always the raw ones.

All three are the identity outside training or with p = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.errors import ConfigError


def check_p(name: str, p: float) -> None:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
        raise ConfigError(f"{name}: expected a dropout probability in [0, 1), got {p!r}")


def bernoulli_mask(like: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """A mask of `shape`: 0 with probability p, else 1 / (1 - p) (inverted dropout)."""
    return like.new_empty(shape).bernoulli_(1.0 - p).div_(1.0 - p)


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """x (B, T, D): the same features of a row dropped at every time step."""
    if not training or p == 0.0:
        return x
    return x * bernoulli_mask(x, (x.shape[0], 1, *x.shape[2:]), p)  # mask (B, 1, D)


def embedding_dropout(ids: torch.Tensor, weight: torch.Tensor, p: float, training: bool,
                      embedded: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of `weight` looked up by `ids` (B, T) -> (B, T, D), whole words dropped in training.

    `embedded` (optional): the lookup already made (e.g. with a sparse gradient); it is then only
    scaled by the words' mask values."""
    rows = F.embedding(ids, weight) if embedded is None else embedded
    if not training or p == 0.0:
        return rows
    keep = bernoulli_mask(weight, (weight.shape[0],), p)  # (V,): one draw per word of the vocabulary
    return rows * keep[ids].unsqueeze(-1)  # (B, T, 1)


def weight_drop(weight: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """DropConnect: `weight` with each entry zeroed with probability p (scaled by 1 / (1 - p))."""
    if not training or p == 0.0:
        return weight
    return F.dropout(weight, p, True)
