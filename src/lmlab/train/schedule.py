"""Learning-rate schedules as pure functions of the step: resuming needs no schedule state."""

from __future__ import annotations

import math


def lr_at(step: int, lr: float, total: int, warmup: int = 0, schedule: str = "cosine",
          min_lr_ratio: float = 0.1) -> float:
    """The learning rate of optimizer step `step` (0-based) of `total`.

    Linear warmup from lr/warmup to lr over `warmup` steps, then cosine or linear decay to
    lr * min_lr_ratio at the last step, or constant.
    """
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup - 1)
    progress = min(max(progress, 0.0), 1.0)
    floor = lr * min_lr_ratio
    if schedule == "linear":
        return floor + (lr - floor) * (1 - progress)
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def slanted_triangular(step: int, lr: float, total: int, cut_frac: float = 0.1, ratio: float = 32) -> float:
    """ULMFiT's STLR (Howard & Ruder 2018, eq. 3): a short linear rise, then a long linear fall."""
    cut = max(1, math.floor(total * cut_frac))
    p = step / cut if step < cut else 1 - (step - cut) / max(1, cut * (1 / cut_frac - 1))
    return lr * (1 + p * (ratio - 1)) / ratio
