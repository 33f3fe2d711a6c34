"""Cross-view training (Clark et al. 2018, §3): the losses of a tagger with auxiliary prediction modules,
and the moving average of its weights.

Training alternates a labeled batch and an unlabeled one (`lmlab.tasks.cross_view` makes the stream):

- labeled (§3, L_sup): the cross-entropy of the primary module, plus `aux_weight` times the sum of
  the auxiliary modules' cross-entropies (lmlab's default 1; `aux_weight=0` trains the primary module
  alone on labeled data), mean over the labelled words;
- unlabeled (§3, L_CVT): every auxiliary module j of every tag set learns to match the primary
  module's distribution, Σ_j KL(p_θ(y | x) || p_θ^j(y | x)), mean over the words. The primary module's
  distribution is the teacher: computed in inference mode (no dropout) and held fixed (no gradient
  flows into it or through it), so the unlabeled loss trains the auxiliary modules and, through them,
  the shared encoder. KL and the paper's cross-entropy differ by the teacher's entropy, a constant
  here: the gradients are the same.

A batch is unlabeled when it has no `labels`. The model is called as `net(**batch, views=...,
every_task=...)` and returns a `TaggerOutput` (`logits`, `views`, `tasks`, `mask`): a CVT tagger, or a
`TaskModel` whose `directions` head gives one (CVT on a pretrained encoder).

Evaluation weights (as the paper's released code tests with): an exponential moving average of the
trained weights, updated once per optimizer step k (0-based) with the decay TensorFlow's
ExponentialMovingAverage uses given a step count, so early averages are not dominated by the random
initial weights:

    d_k = min(decay, (1 + k) / (10 + k)),     ema <- d_k · ema + (1 - d_k) · w_k

The average is the objective's `module` (buffers), so the training loop saves it in every checkpoint
(objective.safetensors) and restores it on resume. The update after step k happens at the first of
`set_step(k + 1)` (the loop, before the next step) and `finish_step()` (before an evaluation or the
end): both see the same weights, so where it happens changes nothing.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import ConfigError

IGNORE = -100


def labeled_loss(out, labels: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """CE(primary) + aux_weight · Σ_views CE(view), each a mean over the labelled positions."""

    def ce(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)

    loss = ce(out.logits)
    if aux_weight and out.views:
        loss = loss + aux_weight * sum(ce(v) for v in out.views.values())
    return loss


def consistency_loss(teacher: list[torch.Tensor], student: list[dict[str, torch.Tensor]],
                     mask: torch.Tensor) -> torch.Tensor:
    """Σ_tasks Σ_views mean over the masked positions of KL(teacher || view).

    teacher: per task the primary module's probabilities (B, T, L), without gradient; student: per
    task {view name: logits (B, T, L)} ("primary" is skipped); mask (B, T) bool."""
    weight = mask.float()
    count = weight.sum().clamp(min=1.0)
    total = weight.new_zeros(())
    for p, views in zip(teacher, student, strict=True):
        for name, logits in views.items():
            if name == "primary":
                continue
            kl = F.kl_div(logits.float().log_softmax(-1), p, reduction="none").sum(-1)  # (B, T)
            total = total + (kl * weight).sum() / count
    return total


@torch.no_grad()
def teacher_probs(net: nn.Module, batch: dict) -> list[torch.Tensor]:
    """Every tag set's primary distribution in inference mode (no dropout), the mode restored after."""
    was = net.training
    net.eval()
    try:
        out = net(**batch, every_task=True)
    finally:
        net.train(was)
    return [t["primary"].float().softmax(-1) for t in out.tasks]


class WeightAverage(nn.Module):
    """An exponential moving average of a model's parameters, as buffers (see the module docstring)."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"--ema-decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.names = [name for name, _ in model.named_parameters()]
        for i, (_, p) in enumerate(model.named_parameters()):
            self.register_buffer(f"w{i}", p.detach().clone())
        self.register_buffer("updates", torch.zeros(1, dtype=torch.int64))

    def averaged(self) -> list[torch.Tensor]:
        return [getattr(self, f"w{i}") for i in range(len(self.names))]

    def decay_at(self, k: int) -> float:
        return min(self.decay, (1.0 + k) / (10.0 + k))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step: ema <- d_k·ema + (1 - d_k)·w with the model's current weights."""
        d = self.decay_at(int(self.updates))
        for avg, p in zip(self.averaged(), model.parameters(), strict=True):
            avg.mul_(d).add_(p.detach(), alpha=1.0 - d)
        self.updates += 1

    def catch_up(self, model: nn.Module, steps: int) -> None:
        """Apply the updates of the optimizer steps before `steps` not applied yet (at most one)."""
        while int(self.updates) < steps:
            self.update(model)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """The model holds the averaged weights inside the block, its own again after it."""
        params = list(model.parameters())
        live = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, avg in zip(params, self.averaged(), strict=True):
                p.copy_(avg)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, w in zip(params, live, strict=True):
                    p.copy_(w)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for p, avg in zip(model.parameters(), self.averaged(), strict=True):
            p.copy_(avg)


class CrossViewObjective:
    """objective(net, batch) -> loss for `lmlab.train.loop`: labeled or unlabeled by the batch, with
    the weight average as its `module` and `set_step` to keep it in step (module docstring)."""

    def __init__(self, model: nn.Module, ema_decay: float = 0.998, aux_weight: float = 1.0):
        if not aux_weight >= 0:
            raise ConfigError(f"--aux-weight must be >= 0, got {aux_weight}")
        self.model, self.aux_weight, self.step = model, float(aux_weight), 0
        self.module = WeightAverage(model, ema_decay)

    def set_step(self, step: int) -> None:
        self.step = step
        self.module.catch_up(self.model, step)

    def finish_step(self) -> None:
        """Fold in the weights of the step that just ran (before evaluating or saving them)."""
        self.module.catch_up(self.model, self.step + 1)

    def __call__(self, net: nn.Module, batch: dict) -> torch.Tensor:
        if "labels" in batch:
            out = net(**batch, views=self.aux_weight > 0)
            return labeled_loss(out, batch["labels"], self.aux_weight)
        teacher = teacher_probs(net, batch)
        out = net(**batch, views=True, every_task=True)
        return consistency_loss(teacher, out.tasks, out.mask)
