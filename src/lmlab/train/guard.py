"""The non-finite guard (DESIGN.md, Finite weights), decided on the device.

A step whose loss or gradient norm is not finite must not reach the weights. Checking that on the
host (`float(loss)`, `bool(isfinite(norm))`) stops the CPU every step until the GPU has caught up,
and the GPU then idles while the next step is launched. Instead the fused AdamW kernel gets the
verdict as `found_inf` (the mechanism torch.amp.GradScaler uses): when it is 1 the kernel leaves
the weights, both moments and its step count as they were. The counts of skipped steps and of bad
steps in a row stay on the device too; the loop reads them only where it needs host values anyway
(logging, evaluation, checkpoints, the end), so K bad steps in a row stop the run at the next
such point, with every bad step in between skipped.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from lmlab.train.distributed import Dist


class NonFiniteGuard:
    def __init__(self, device: torch.device, d: Dist, skipped: int = 0, bad_run: int = 0):
        self.dist = d
        self.skipped = torch.tensor(skipped, dtype=torch.int64, device=device)
        self.bad_run = torch.tensor(bad_run, dtype=torch.int64, device=device)
        self.last_bad = torch.tensor(False, device=device)

    def step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, norm: torch.Tensor) -> None:
        """optimizer.step() unless loss or norm is not finite (on any rank), then zero_grad."""
        bad = (~(torch.isfinite(loss) & torch.isfinite(norm))).float()
        if self.dist.enabled:  # every rank takes the same decision (NCCL: no host wait)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if optimizer.defaults.get("fused"):
            optimizer.found_inf = bad
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf
        elif not bool(bad):  # only the fused kernels take found_inf: decide on the host
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.last_bad = bad > 0
        self.skipped += self.last_bad
        self.bad_run = (self.bad_run + 1) * self.last_bad

    def counts(self) -> tuple[int, int]:
        """(skipped steps, bad steps in a row up to the last one), read on the host."""
        return int(self.skipped), int(self.bad_run)
