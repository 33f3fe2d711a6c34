"""Small shared layers: the position-wise feed-forward block and activation lookup."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation GPT and GPT-2 were trained with (Hendrycks & Gimpel 2016).
    return F.gelu(x, approximate="tanh")


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    # The exact GELU used by BERT.
    return F.gelu(x)


ACTIVATIONS = {"gelu_tanh": gelu_tanh, "gelu": gelu_erf, "relu": F.relu,
               "swish": F.silu}


class FeedForward(nn.Module):
    """d_model -> d_ff -> d_model with an activation between (Vaswani et al. 2017, §3.3)."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu_tanh", dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        self.c_fc = nn.Linear(d_model, d_ff, bias=bias)
        self.c_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


def init_normal_(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) for linear and embedding weights, zeros for biases, ones for LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def scaled_residual_std(std: float, n_layers: int) -> float:
    # GPT-2 §2.3: residual-path weights scaled by 1/sqrt(N), N = 2 residual layers per block.
    return std / math.sqrt(2 * n_layers)
