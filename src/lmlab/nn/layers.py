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


class Linear(nn.Module):
    """y = x·W + b with W held as (d_in, d_out), the layout of GPT-2's Conv1D.

    On CPU, single-token decoding multiplies a few rows by each weight, and MKL's kernels are much
    faster when W's output dimension is the contiguous one: per matmul, 1.7x at batch 1 for
    cache-sized weights and 1.6-2.5x at batch 8 for gpt2-124m's (1 thread; `x @ W.T` with
    nn.Linear's (d_out, d_in) layout is the slow case). Training matmuls are equally fast either way.
    The state_dict shows W as (d_out, d_in), like nn.Linear: checkpoints and converters see the
    usual layout, only the parameter in memory is transposed.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = d_in, d_out
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.linear(x, W.t()) runs addmm(b, x, W) on the contiguous W, in one call for any rank of x.
        return F.linear(x, self.weight.t(), self.bias)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = destination[prefix + "weight"].t()  # a view: (d_out, d_in)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        if key in state_dict:  # load_state_dict hands every module its own shallow copy to edit
            state_dict[key] = state_dict[key].t()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class FeedForward(nn.Module):
    """d_model -> d_ff -> d_model with an activation between (Vaswani et al. 2017, §3.3)."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu_tanh", dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        self.c_fc = Linear(d_model, d_ff, bias=bias)
        self.c_proj = Linear(d_ff, d_model, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


def init_normal_(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) for linear and embedding weights, zeros for biases, ones for LayerNorm."""
    if isinstance(module, (nn.Linear, Linear)):
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


def parameter_groups(*parts) -> list[list[nn.Parameter]]:
    """Parameters of `parts` (modules, parameters or lists of them), one list per part, bottom to top.

    A tied parameter belongs to the first part that holds it; parts without trainable-or-not
    parameters are left out. What `model.layer_groups()` returns, for discriminative learning
    rates and gradual unfreezing (ULMFiT §3.2).
    """
    seen: set[int] = set()
    groups = []
    for part in parts:
        items = part if isinstance(part, (list, tuple)) else [part]
        params = []
        for item in items:
            for p in ([item] if isinstance(item, nn.Parameter) else item.parameters()):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        if params:
            groups.append(params)
    return groups
