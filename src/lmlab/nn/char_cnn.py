"""Character-CNN token encoder (Kim et al. 2016; ELMo's context-insensitive token layer, Peters et al.
2018 §3.4: "2048 character n-gram convolutional filters followed by two highway layers and a linear
projection down to a 512 representation"), the computation of bilm-tf `_build_word_char_embeddings`:

    e      = char_embed[chars]                               (B·T, C, E)
    f_k    = act(max_over_positions(conv_k(e) + b_k))        one (num_k,) vector per filter width
    x      = [f_1; …; f_K]                                   (B·T, F), F = Σ num_k
    x      = highway(x)   (n_highway layers, relu branch, see `lmlab.nn.highway`)
    out    = W_p x + b_p  (only when F != d_out, as bilm-tf)  (B, T, d_out)

bilm-tf applies the activation after the max-pool; for a non-decreasing activation (relu, tanh)
act(max(·)) = max(act(·)) exactly, and max(conv + b) = max(conv) + b, so only the order of work
differs (the activation touches one value per filter instead of one per position). Convolutions are
"valid" (no padding): width k gives C - k + 1 positions, so every width must be <= C.

Embedding row `padding_idx` (default 0) is zero and gets no gradient: ELMo's char ids are shifted by
+1 so that 0 marks a padding *token* (bilm-tf `Batcher`), and a converter prepends that zero row
to the 261-row `char_embed` of a released file. Initialisation follows bilm-tf: embeddings
U(-1, 1); convolutions U(-0.05, 0.05) with relu, N(0, 1/(k·E)) with tanh; projection N(0, 1/F).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lmlab.errors import ConfigError
from lmlab.nn.highway import Highway

CNN_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


class CharCNN(nn.Module):
    """chars (B, T, C) int -> (B, T, d_out). `filters` is a list of (width, number of filters)."""

    def __init__(self, n_chars: int, char_dim: int, filters: Sequence[tuple[int, int]], d_out: int,
                 n_highway: int = 0, activation: str = "relu", padding_idx: int | None = 0):
        super().__init__()
        if activation not in CNN_ACTIVATIONS:
            raise ConfigError(f"char_cnn activation: expected one of {sorted(CNN_ACTIVATIONS)}, "
                              f"got {activation!r}")
        if not filters or any(w < 1 or n < 1 for w, n in filters):
            raise ConfigError(f"char_cnn filters: expected (width, number) pairs >= 1, got {filters}")
        self.activation = activation
        self.n_filters = sum(n for _, n in filters)
        self.embed = nn.Embedding(n_chars, char_dim, padding_idx=padding_idx)
        self.convs = nn.ModuleList(nn.Conv1d(char_dim, n, w) for w, n in filters)
        self.highway = Highway(self.n_filters, n_highway)
        self.proj = nn.Linear(self.n_filters, d_out) if d_out != self.n_filters else None
        self.d_out = d_out
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.embed.weight, -1.0, 1.0)
        if self.embed.padding_idx is not None:
            with torch.no_grad():
                self.embed.weight[self.embed.padding_idx].zero_()
        for conv in self.convs:
            if self.activation == "relu":
                nn.init.uniform_(conv.weight, -0.05, 0.05)
            else:
                width, dim = conv.kernel_size[0], conv.in_channels
                nn.init.normal_(conv.weight, std=math.sqrt(1.0 / (width * dim)))
            nn.init.zeros_(conv.bias)
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=math.sqrt(1.0 / self.n_filters))
            nn.init.zeros_(self.proj.bias)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        B, T, C = chars.shape
        e = self.embed(chars.reshape(B * T, C)).transpose(1, 2)  # (B·T, E, C), channels first
        act = CNN_ACTIVATIONS[self.activation]
        # conv (B·T, num_k, C - k + 1) -> max over positions (B·T, num_k) -> activation
        x = torch.cat([act(conv(e).amax(dim=-1)) for conv in self.convs], dim=-1)  # (B·T, F)
        x = self.highway(x)
        if self.proj is not None:
            x = self.proj(x)  # (B·T, d_out)
        return x.view(B, T, self.d_out)
