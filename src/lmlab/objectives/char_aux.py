"""The auxiliary losses of the deep character transformer (Al-Rfou et al. 2018, §2.1), each switchable.

For a window x_1 .. x_T of a model with n layers (`lmlab.models.char_transformer`):

- multiple positions (`all_positions`): every position t predicts x_{t+1}, not only the last one
  (which is all a fixed-context model needs at inference). Off: each window scores its last
  position only.
- intermediate layers (`intermediate`): layer l = 1 .. n-1 also predicts the next character, with
  a classifier of its own. Its loss counts while the training progress is below l / (2n): in
  optimizer step s of S (0-based), layer l contributes iff s < l·S / (2n), i.e. iff
  2n·s < l·S (integers, exact). The lowest layers stop first, and after half the training only the
  top layer's loss is left. The layers still contributing are always l = first .. n-1
  (`first_active_layer`).
- multiple targets (`multiple_targets`): each scored position of each scored layer also predicts
  the character after next, x_{t+2}, with a separate classifier; that loss is weighted by 0.5
  (`next2_weight`) before it is added to its layer's loss.

    loss = sum over scored layers l of [ mean_t nll_l(x_{t+1}) + 0.5 · mean_t nll_l(x_{t+2}) ]

The scored layers are the top one (the model's own output layer) and the intermediate layers still
contributing. Means are over the positions scored (all, or the last), so with every switch off the
loss is the mean NLL of the last position's next character, and with only `all_positions` on it
is exactly `lmlab.objectives.clm.clm_loss`.

Where the extra classifiers live: here, in `self.module` (an nn.Module), not in the model, so that a
saved model dir and inference hold the plain network. Each classifier is a LayerNorm and a linear
layer (with bias) over that layer's hidden state: the residual stream of a pre-LN layer is not
normalised (the top layer's input, the model's final LayerNorm output, gets one as well). The
classifiers of all layers are stacked into one tensor per kind, so the contributing layers are a
contiguous slice and cost one batched matmul. The training loop trains `module`'s parameters with
the model's, saves them in training checkpoints (objective.safetensors) for exact resume, and calls
`set_step(step)` before every optimizer step (lmlab.train.loop).

Batches: (x, y) windows, where the character after next of the last position is not known, or
(x, y, y2) with y2[t] = x_{t+2} (`lmlab.train.recipes`' char windows read T + 2 characters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.nn.lm_loss import IGNORE_INDEX

NEXT2_WEIGHT = 0.5  # §2.1: "the losses of the extra targets get weighted by a multiplier of 0.5"


def first_active_layer(step: int, steps: int, n_layers: int) -> int:
    """The lowest intermediate layer l (1-based) whose loss still counts in optimizer step `step` of
    `steps` (0-based): layers first .. n_layers-1 contribute; n_layers when none does.

    Layer l contributes iff step < l·steps / (2·n_layers), i.e. l > 2·n_layers·step / steps."""
    return min(n_layers, 2 * n_layers * step // steps + 1)


class StackedClassifiers(nn.Module):
    """`count` classifiers LayerNorm + Linear(d_model -> vocab) held as stacked tensors, applied to a
    contiguous range of them at once."""

    def __init__(self, count: int, d_model: int, vocab: int, eps: float = 1e-5, std: float = 0.02):
        super().__init__()
        self.eps = eps
        self.norm_weight = nn.Parameter(torch.ones(count, d_model))
        self.norm_bias = nn.Parameter(torch.zeros(count, d_model))
        self.weight = nn.Parameter(torch.randn(count, vocab, d_model) * std)
        self.bias = nn.Parameter(torch.zeros(count, vocab))

    def forward(self, hidden: torch.Tensor, first: int) -> torch.Tensor:
        """hidden (L, B, T, D) through classifiers first .. first+L-1: logits (L, B, T, V)."""
        L, B, T, D = hidden.shape
        rows = slice(first, first + L)
        h = F.layer_norm(hidden, (D,), eps=self.eps)
        h = h * self.norm_weight[rows, None, None] + self.norm_bias[rows, None, None]  # (L, B, T, D)
        logits = torch.bmm(h.reshape(L, B * T, D), self.weight[rows].transpose(1, 2))  # (L, B*T, V)
        return (logits + self.bias[rows, None]).view(L, B, T, -1)


def layer_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL per layer (L,) of logits (L, B, T, V) against targets (B, T); -100 = not scored."""
    L = logits.shape[0]
    flat = targets.reshape(-1).repeat(L)  # every layer predicts the same targets
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat, reduction="none",
                          ignore_index=IGNORE_INDEX).view(L, -1)  # (L, B*T)
    return nll.sum(1) / (targets != IGNORE_INDEX).sum().clamp(min=1)


class CharAuxLoss:
    """objective(model, batch) -> the §2.1 loss of one batch; see the module docstring."""

    def __init__(self, n_layers: int, d_model: int, vocab_size: int, steps: int, all_positions: bool = True,
                 intermediate: bool = True, multiple_targets: bool = True,
                 next2_weight: float = NEXT2_WEIGHT):
        self.n_layers, self.steps = n_layers, steps
        self.all_positions, self.multiple_targets = all_positions, multiple_targets
        self.intermediate = intermediate and n_layers > 1
        self.next2_weight = next2_weight
        self.step = 0
        self.module = nn.Module()  # what the loop trains and checkpoints with the model
        if self.intermediate:  # layers 1 .. n-1 -> rows 0 .. n-2
            self.module.inter = StackedClassifiers(n_layers - 1, d_model, vocab_size)
        if multiple_targets:  # layers 1 .. n -> rows 0 .. n-1 (the top layer alone without intermediate)
            self.module.next2 = StackedClassifiers(n_layers if self.intermediate else 1, d_model, vocab_size)

    @classmethod
    def for_model(cls, config, steps: int, **switches) -> CharAuxLoss:
        return cls(config.n_layers, config.d_model, config.vocab_size, steps, **switches)

    def set_step(self, step: int) -> None:
        """The optimizer step about to run (0-based): sets which intermediate layers still count."""
        self.step = step

    def active_layers(self) -> range:
        """Intermediate layers (1-based) whose losses count at the current step."""
        if not self.intermediate:
            return range(0)
        return range(first_active_layer(self.step, self.steps, self.n_layers), self.n_layers)

    def __call__(self, model, batch) -> torch.Tensor:
        return sum(self.parts(model, batch).values())

    def parts(self, model, batch) -> dict[str, torch.Tensor]:
        """The weighted terms of the loss by name: "next" (the top layer), "next2" (the top layer's
        character after next, weighted), "layer{l}" and "layer{l}_next2" (intermediate layers)."""
        x, y, y2 = _targets(batch)
        layers = self.active_layers()
        want_states = bool(layers) or self.multiple_targets
        if self.all_positions:
            out = model(x, targets=y, output_hidden_states=want_states)
        else:  # the last position only: its output row alone goes through the output layer
            y, y2 = y[:, -1:], y2[:, -1:]
            out = model(x, targets=y, logits_to_keep=1, output_hidden_states=want_states)
        parts = {"next": out.nll.sum() / (y != IGNORE_INDEX).sum().clamp(min=1)}
        if not want_states:
            return parts
        states = out.hidden_states if self.all_positions else tuple(h[:, -1:] for h in out.hidden_states)
        if layers:  # states[l] is layer l's output; classifier row l - 1
            hidden = torch.stack(states[layers.start:layers.stop])  # (L, B, T, D)
            nll = layer_nll(self.module.inter(hidden, layers.start - 1), y)
            parts.update({f"layer{layer}": v for layer, v in zip(layers, nll, strict=True)})
        if self.multiple_targets:
            # The contributing layers and the top one: rows first-1 .. n-1 of the next2 classifiers
            # (row 0 alone, the top layer's, without intermediate layers).
            top = self.n_layers
            scored = range(layers.start, top + 1) if layers else range(top, top + 1)
            first = scored.start - 1 if self.intermediate else 0
            nll = layer_nll(self.module.next2(torch.stack(states[scored.start:scored.stop]), first), y2)
            for layer, v in zip(scored, nll, strict=True):
                parts["next2" if layer == top else f"layer{layer}_next2"] = self.next2_weight * v
        return parts


def _targets(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, y2): inputs, next characters and characters after next (B, T) each."""
    x, y = batch[0], batch[1]
    if len(batch) > 2:
        return x, y, batch[2]
    # The character after next of the last position lies outside an (x, y) window: not scored.
    return x, y, torch.cat([y[:, 1:], torch.full_like(y[:, :1], IGNORE_INDEX)], dim=1)
