"""One LSTM layer run by torch's fused kernel, with DropConnect on its hidden-to-hidden weights: the
layer of AWD-LSTM (Merity et al. 2017, §4.1 "weight-dropped LSTM"), which ULMFiT stacks.

The cell is torch.nn.LSTM's (gates i, f, g, o; two biases b_ih and b_hh, as cuDNN and fastai keep
them, so released weights load unchanged). Each forward call in training draws one DropConnect mask
over `weight_hh` (lmlab.nn.dropout.weight_drop) and hands the dropped copy to `torch.lstm`, the op
behind torch.nn.LSTM: the time loop stays in C++ (and cuDNN on GPU) instead of Python, and the
parameter itself is never overwritten (fastai swaps a dropped tensor into the wrapped module's
attributes instead), so saving after a training step saves the raw weights.

Why not `lmlab.nn.lstm.LSTMP`: its per-step Python loop handles padding and clipping row by row,
which ELMo needs; AWD-LSTM needs neither (right-padded rows do not disturb the real positions of a
causal recurrence), and the fused kernel is faster on CPU and GPU.

State is batch-first, `(h (B, H), c (B, H))`; `None` means zeros.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmlab.nn.dropout import check_p, weight_drop

LayerState = tuple[torch.Tensor, torch.Tensor]  # (h (B, H), c (B, H))


class DropConnectLSTM(nn.Module):
    """(B, T, D) -> (B, T, H) and the final (h, c); DropConnect with `weight_p` on W_hh in training."""

    def __init__(self, input_size: int, hidden_size: int, weight_p: float = 0.0):
        super().__init__()
        check_p("weight_p", weight_p)
        self.input_size, self.hidden_size, self.weight_p = input_size, hidden_size, weight_p
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # torch.nn.LSTM's U(-1/√H, 1/√H)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def zero_state(self, batch_size: int, device=None, dtype=None) -> LayerState:
        kw = {"device": device or self.weight_hh.device, "dtype": dtype or self.weight_hh.dtype}
        zeros = torch.zeros(batch_size, self.hidden_size, **kw)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        h, c = state if state is not None else self.zero_state(x.shape[0], x.device, x.dtype)
        w_hh = weight_drop(self.weight_hh, self.weight_p, self.training)
        weights = [self.weight_ih, w_hh, self.bias_ih, self.bias_hh]
        # torch.lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        out, h_n, c_n = torch.lstm(x, (h.unsqueeze(0), c.unsqueeze(0)), weights, True, 1, 0.0,
                                   self.training, False, True)  # hx (1, B, H)
        return out, (h_n.squeeze(0), c_n.squeeze(0))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, weight_p={self.weight_p}"
