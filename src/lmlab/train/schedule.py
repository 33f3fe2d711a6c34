"""Learning-rate schedules as pure functions of the step: resuming needs no schedule state.

Slanted triangular learning rates (ULMFiT, Howard & Ruder 2018, §3.2, eq. 3), for T steps, step t:

    cut = ⌊T · cut_frac⌋
    p   = t / cut                                  if t < cut
          1 - (t - cut) / (cut · (1/cut_frac - 1))  otherwise
    η_t = η_max · (1 + p · (ratio - 1)) / ratio

with cut_frac = 0.1 and ratio = 32: a short linear rise from η_max/32 to η_max over the first tenth,
then a long linear fall back to η_max/32. `cut · (1/cut_frac - 1)` is T - cut whenever T · cut_frac
is whole; for other T the paper's literal form falls below η_max/32 before the end (negative, e.g.
T = 25: cut 2, the fall spans 18 steps of 23). The original code (fastai 0.7's CircularLR, which
the paper's scripts ran) divides by T - cut, which is what is done here: the same numbers where the
paper's form is defined sensibly, and the fall always ends at η_max/32. cut is at least 1.

With gradual unfreezing (§3.3) the schedule restarts at every unfreezing stage, as the paper's
scripts do (one `fit` call, hence one triangle, per stage; fastai's ULMFiT notebooks likewise
call `fit_one_cycle` once per `freeze_to`): stage k (k groups trainable) runs its own triangle over
its `unfreeze_every` steps, the last stage (every group) over the steps that are left.
"""

from __future__ import annotations

import math

CUT_FRAC, RATIO = 0.1, 32  # ULMFiT §3.2


def lr_at(step: int, lr: float, total: int, warmup: int = 0, schedule: str = "cosine",
          min_lr_ratio: float = 0.1, unfreeze_every: int = 0, n_groups: int | None = None) -> float:
    """The learning rate of optimizer step `step` (0-based) of `total`.

    Linear warmup from lr/warmup to lr over `warmup` steps, then cosine or linear decay to
    lr * min_lr_ratio at the last step, or constant; "stlr": slanted triangular (its own rise:
    warmup is not used), one triangle per unfreezing stage when `unfreeze_every` and `n_groups`
    (the number of layer groups) are given.
    """
    if schedule == "stlr":
        start, length = unfreezing_stage(step, total, unfreeze_every, n_groups or 1)
        return slanted_triangular(step - start, lr, length)
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


def slanted_triangular(step: int, lr: float, total: int, cut_frac: float = CUT_FRAC,
                       ratio: float = RATIO) -> float:
    """ULMFiT's STLR (eq. 3; see the module docstring) at step `step` (0-based) of `total`."""
    cut = max(1, math.floor(total * cut_frac))
    p = step / cut if step < cut else 1 - (step - cut) / max(1, total - cut)
    return lr * (1 + p * (ratio - 1)) / ratio


def unfreezing_stage(step: int, total: int, unfreeze_every: int, n_groups: int) -> tuple[int, int]:
    """(first step, number of steps) of the gradual-unfreezing stage that holds `step`: stages of
    `unfreeze_every` steps while groups are still frozen, then the rest of the run."""
    if not unfreeze_every or n_groups <= 1:
        return 0, total
    stage = min(step // unfreeze_every, n_groups - 1)
    start = stage * unfreeze_every
    return start, (unfreeze_every if stage < n_groups - 1 else max(1, total - start))

