"""LSTM with a recurrent projection (LSTMP) and optional clipping, a stack of them, and a padded-batch
runner with per-row state: the recurrent core of ELMo (Peters et al. 2018, §3.4), shared with CoVe,
CVT and ULMFiT.

One step, for input x_t, state (h_{t-1}, c_{t-1}) (Sak et al. 2014, eq. 1-8 without peepholes; the
cell of Jozefowicz et al. 2016 and of bilm-tf, `tf.nn.rnn_cell.LSTMCell(num_units, num_proj,
cell_clip, proj_clip)`):

    z   = W_ih x_t + W_hh h_{t-1} + b                       (4H: gates i, f, g, o in this order)
    c_t = σ(z_f + forget_bias) ⊙ c_{t-1} + σ(z_i) ⊙ tanh(z_g)
    c_t = clip(c_t, ±cell_clip)                              (the clipped value is also the state)
    m_t = σ(z_o) ⊙ tanh(c_t)
    h_t = clip(W_hr m_t, ±proj_clip)                         (P; without projection h_t = m_t, H)

Parameters follow torch.nn.LSTM per layer: `weight_ih` (4H, D), `weight_hh` (4H, P), `weight_hr`
(P, H), gate order (i, f, g, o), so a torch.nn.LSTM(proj_size=P) layer loads as-is (bias = b_ih +
b_hh). The TensorFlow fused kernel orders the gates (i, j, f, o) (j = g) and adds `forget_bias`
(1.0 by default) at run time, not stored in its bias: a converter swaps the middle two blocks, and
either passes forget_bias=1.0 here (exact TF arithmetic) or folds it into b_f. There are no peepholes.

Padded batches: every row runs on its own; where `mask` is False the step leaves the row's state
unchanged and the output is zero, so outputs and final states do not depend on other rows or on
how much padding follows (as TF's `dynamic_rnn(sequence_length=...)`). State is batch-first: per
layer `(h (B, P), c (B, H))`, `None` means zeros; every call returns the new state to carry on.

Stack residuals (bilm-tf `_build_lstms`, ResidualWrapper): with `residual=True`, every layer except
the first adds its input to its output (ELMo: "a residual connection from the first to second
layer"); the sum is also the next layer's input. Dropout (training only) hits each layer's input,
and the residual adds the dropped input, as TF's DropoutWrapper(ResidualWrapper(cell)) does.

Speed: the input projection W_ih x + b of all time steps is one matmul; each step is one addmm, one
sigmoid over all four gates, one tanh, the cell update, (projection matmul, clips) and two `where`
for padding. `run_reversed` runs the backward direction: each row reversed within its own length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import ConfigError

LayerState = tuple[torch.Tensor, torch.Tensor]  # (h (B, P), c (B, H))


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True on each row's first lengths[b] positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first lengths[b] positions along dim 1; padding stays where it is.

    x (B, T, ...). Applying it twice gives x back (TF's `reverse_sequence`)."""
    T = x.shape[1]
    t = torch.arange(T, device=x.device)[None, :]  # (1, T)
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


def _check_clip(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{name}: expected a positive number or None, got {value}")


class LSTMP(nn.Module):
    """One LSTM layer with optional projection (proj_size) and clipping; see the module docstring.

    (B, T, D) -> (B, T, P) and the final (h, c). proj_size=None: no projection, P = H."""

    def __init__(self, input_size: int, hidden_size: int, proj_size: int | None = None,
                 cell_clip: float | None = None, proj_clip: float | None = None,
                 forget_bias: float = 0.0):
        super().__init__()
        _check_clip("cell_clip", cell_clip)
        _check_clip("proj_clip", proj_clip)
        if proj_size is not None and proj_size < 1:
            raise ConfigError(f"proj_size: expected a positive size or None, got {proj_size}")
        if proj_clip is not None and proj_size is None:
            # TF silently ignores proj_clip without num_proj; a config that sets it is a mistake.
            raise ConfigError("proj_clip: set only together with proj_size (it clips the projection)")
        self.input_size, self.hidden_size, self.proj_size = input_size, hidden_size, proj_size
        self.cell_clip, self.proj_clip, self.forget_bias = cell_clip, proj_clip, float(forget_bias)
        out = proj_size if proj_size is not None else hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, out))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        if proj_size is not None:
            self.weight_hr = nn.Parameter(torch.empty(proj_size, hidden_size))
        else:
            self.register_parameter("weight_hr", None)
        self.reset_parameters()

    @property
    def output_size(self) -> int:
        return self.proj_size if self.proj_size is not None else self.hidden_size

    def reset_parameters(self) -> None:
        # torch.nn.LSTM's U(-1/√H, 1/√H) for every tensor.
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def zero_state(self, batch_size: int, device=None, dtype=None) -> LayerState:
        kw = {"device": device or self.bias.device, "dtype": dtype or self.bias.dtype}
        return (torch.zeros(batch_size, self.output_size, **kw),
                torch.zeros(batch_size, self.hidden_size, **kw))

    def input_projection(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (T, B, 4H): W_ih x_t + b (+ forget_bias on f) for every step at once."""
        bias = self.bias
        if self.forget_bias:
            H = self.hidden_size
            bias = torch.cat([bias[:H], bias[H:2 * H] + self.forget_bias, bias[2 * H:]])
        # Time-major so that each step reads one contiguous (B, 4H) block.
        return F.linear(x.transpose(0, 1), self.weight_ih, bias)  # (T, B, 4H)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        """x (B, T, D), mask (B, T) bool or None (no padding), state (h, c) or None (zeros)."""
        B = x.shape[0]
        h, c = state if state is not None else self.zero_state(B, x.device, x.dtype)
        xw = self.input_projection(x)  # (T, B, 4H)
        # (K, N) contiguous weights for the per-step matmuls: faster on CPU than a transposed view.
        w_hh = self.weight_hh.t().contiguous()  # (P, 4H)
        w_hr = self.weight_hr.t().contiguous() if self.weight_hr is not None else None  # (H, P)
        step_mask = mask.t()[..., None] if mask is not None else None  # (T, B, 1)
        outs, h, c = _recurrence(xw, step_mask, h, c, w_hh, w_hr, self.cell_clip, self.proj_clip)
        if not outs:  # T = 0: nothing read, the state passes through
            return x.new_zeros(B, 0, self.output_size), (h, c)
        out = torch.stack(outs, 1)  # (B, T, P)
        if mask is not None:
            out = out.masked_fill(~mask[..., None], 0.0)
        return out, (h, c)


def _recurrence(xw, step_mask, h, c, w_hh, w_hr, cell_clip, proj_clip):
    """The per-step loop of LSTMP.forward, kept to the bare tensor ops. xw (T, B, 4H)."""
    H = c.shape[1]
    outs = []
    for t in range(xw.shape[0]):
        z = torch.addmm(xw[t], h, w_hh)  # (B, 4H)
        s = z.sigmoid()  # one kernel for i, f, o (σ(z_g) is computed and unused)
        c_new = torch.addcmul(s[:, H:2 * H] * c, s[:, :H], z[:, 2 * H:3 * H].tanh())
        if cell_clip is not None:
            c_new = c_new.clamp(-cell_clip, cell_clip)
        h_new = s[:, 3 * H:] * c_new.tanh()  # (B, H)
        if w_hr is not None:
            h_new = h_new @ w_hr  # (B, P)
            if proj_clip is not None:
                h_new = h_new.clamp(-proj_clip, proj_clip)
        if step_mask is None:
            h, c = h_new, c_new
        else:
            h = torch.where(step_mask[t], h_new, h)
            c = torch.where(step_mask[t], c_new, c)
        outs.append(h_new)
    return outs, h, c


class LSTMPStack(nn.Module):
    """n_layers LSTMP layers; `residual=True` adds each layer's input to its output from layer 2 on.

    forward(x (B, T, D), lengths (B,) or mask (B, T), state) -> ([n_layers × (B, T, P)], new state).
    """

    def __init__(self, input_size: int, hidden_size: int, proj_size: int | None = None,
                 n_layers: int = 1, cell_clip: float | None = None, proj_clip: float | None = None,
                 forget_bias: float = 0.0, residual: bool = False, dropout: float = 0.0):
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"n_layers: expected at least 1, got {n_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout: expected a probability in [0, 1), got {dropout}")
        self.residual, self.dropout = residual, dropout
        layers = []
        for i in range(n_layers):
            d_in = input_size if i == 0 else layers[-1].output_size
            layers.append(LSTMP(d_in, hidden_size, proj_size, cell_clip, proj_clip, forget_bias))
        self.layers = nn.ModuleList(layers)

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    def zero_state(self, batch_size: int, device=None, dtype=None) -> list[LayerState]:
        return [layer.zero_state(batch_size, device, dtype) for layer in self.layers]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, state: Sequence[LayerState] | None = None,
                ) -> tuple[list[torch.Tensor], list[LayerState]]:
        """lengths or mask (not both; neither = no padding). Pad positions give zero outputs and
        leave the state alone. Returns every layer's output (residual included) and the new state."""
        if lengths is not None:
            if mask is not None:
                raise ValueError("give lengths or mask, not both")
            mask = lengths_to_mask(lengths, x.shape[1])
        if state is not None and len(state) != len(self.layers):
            raise ValueError(f"state has {len(state)} layers, the stack {len(self.layers)}")
        outputs, new_state = [], []
        for i, layer in enumerate(self.layers):
            x = F.dropout(x, self.dropout, self.training)
            y, layer_state = layer(x, mask, state[i] if state is not None else None)
            if self.residual and i > 0:
                y = y + x  # x is zero at padding (the layer below's output), so y stays zero there
            outputs.append(y)
            new_state.append(layer_state)
            x = y
        return outputs, new_state


def run_reversed(stack: LSTMPStack, x: torch.Tensor, lengths: torch.Tensor,
                 state: Sequence[LayerState] | None = None,
                 ) -> tuple[list[torch.Tensor], list[LayerState]]:
    """The backward direction over a right-padded batch: each row is reversed within its own length,
    run through `stack`, and the outputs are reversed back, so output t of a row has read positions
    t..len-1 (bilm-tf feeds its backward LM this way). The state carried across calls is the one
    after the row's first token."""
    outputs, new_state = stack(reverse_padded(x, lengths), lengths=lengths, state=state)
    return [reverse_padded(y, lengths) for y in outputs], new_state
