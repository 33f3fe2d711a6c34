"""Highway layers (Srivastava et al. 2015, eq. 2-3, with the coupled carry gate C = 1 - T):

    y = t ⊙ relu(W_n x + b_n) + (1 - t) ⊙ x,      t = σ(W_g x + b_g)

`gate` computes t (the transform gate T of the paper; large t passes the nonlinear branch, small t
carries x through), `nonlinear` the branch H. Initialised as bilm-tf does (`_build_word_char_
embeddings`): weights N(0, 1/dim), gate bias -2 (start by mostly carrying x), branch bias 0.

Name trap in bilm-tf (`high(x, W_carry, ...)`): its `W_carry`/`b_carry` drive the sigmoid that
multiplies the *nonlinear* branch, i.e. our `gate`; its `W_transform`/`b_transform` are the relu
branch, our `nonlinear`. Both are stored (in, out): transpose for nn.Linear.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class HighwayLayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.nonlinear = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 1.0 / math.sqrt(self.gate.in_features)
        nn.init.normal_(self.nonlinear.weight, std=std)
        nn.init.normal_(self.gate.weight, std=std)
        nn.init.zeros_(self.nonlinear.bias)
        nn.init.constant_(self.gate.bias, -2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.gate(x))
        # The same arithmetic as bilm-tf (not x + t·(H - x)), so converted weights round alike.
        return t * F.relu(self.nonlinear(x)) + (1.0 - t) * x


class Highway(nn.Module):
    """n_layers highway layers of width dim; (…, dim) -> (…, dim). n_layers = 0 is the identity."""

    def __init__(self, dim: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(HighwayLayer(dim) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
