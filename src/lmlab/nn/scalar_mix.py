"""Task-weighted scalar mix of an encoder's layers (Peters et al. 2018, eq. 1):

    mix = γ · Σ_j softmax(s)_j · h_j                  s initialised to 0 (equal weights), γ to 1

Optional layer normalisation of each h_j before weighting (§3.2), computed as bilm-tf
(`weight_layers._do_ln`) and allennlp (`ScalarMix`) do: ONE mean and variance per layer, over every
unmasked element of the whole batch (positions × features), then (h - mean) / sqrt(var + eps) at every
position. So with layer_norm=True a row's result depends on the other rows of its batch; that is the
original definition, kept for parity. Optional L2 penalty λ·Σ s_j² on the unnormalised weights
(bilm-tf `l2_coef`; §5.2 compares λ = 1 and λ = 0.001), returned by `l2_penalty()` for the loss.

bilm-tf takes softmax(s + 1/L); adding a constant to every s_j does not change the softmax, and
its penalty is on s, so a converted s is used as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lmlab.errors import ConfigError


def masked_layer_norm(x: torch.Tensor, mask: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x (B, T, D), mask (B, T) bool or None: normalise by the mean and variance of the unmasked
    elements of the whole tensor (a scalar each)."""
    if mask is None:
        mask = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
    m = mask[..., None].to(x.dtype)  # (B, T, 1)
    n = (m.sum() * x.shape[-1]).clamp_min(1.0)
    mean = (x * m).sum() / n
    var = (((x * m) - mean) * m).square().sum() / n
    return (x - mean) * torch.rsqrt(var + eps)


class ScalarMix(nn.Module):
    """forward(layers: sequence of n_layers tensors (B, T, D), mask (B, T) or None) -> (B, T, D)."""

    def __init__(self, n_layers: int, layer_norm: bool = False, l2_coef: float = 0.0,
                 eps: float = 1e-12):
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"scalar mix n_layers: expected at least 1, got {n_layers}")
        if l2_coef < 0:
            raise ConfigError(f"scalar mix l2_coef: expected >= 0, got {l2_coef}")
        self.n_layers, self.layer_norm, self.l2_coef, self.eps = n_layers, layer_norm, l2_coef, eps
        self.scalars = nn.Parameter(torch.zeros(n_layers))  # s
        self.gamma = nn.Parameter(torch.ones(1))  # γ

    def weights(self) -> torch.Tensor:
        """softmax(s): (n_layers,)."""
        return torch.softmax(self.scalars, dim=0)

    def l2_penalty(self) -> torch.Tensor:
        """λ · Σ s_j² (a scalar tensor; zero when l2_coef = 0)."""
        return self.l2_coef * self.scalars.square().sum()

    def forward(self, layers: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        if len(layers) != self.n_layers:
            raise ValueError(f"ScalarMix got {len(layers)} layers, expected {self.n_layers}")
        w = self.weights()
        out = None
        for j, h in enumerate(layers):
            if self.layer_norm:
                h = masked_layer_norm(h, mask, self.eps)
            out = w[j] * h if out is None else out + w[j] * h
        return self.gamma * out
