"""Causal LM over contiguous segments that carries Transformer-XL's memory from step to step (§3.2).

Row b of training batch k+1 continues row b of batch k (`lmlab.data.sampler.ContiguousStreams`),
so the memory a row leaves after step k is exactly the history of the segment it reads at step
k+1: the loss of that segment is -log p(x_t | memory, x_<t) with the memory held fixed (detached,
no gradient into the previous step: the stop-gradient SG(·) of eq. 1 in §3.2). The loss is the
mean NLL over the batch's tokens, through `model(x, mems=..., targets=y).nll` (the adaptive
softmax's cheap path; it goes through `forward`, so DDP and torch.compile see the call).

This is a *stateful objective* for `lmlab.train.loop.train` (see its docstring): it is called as
`objective(model, batch, rows)` with the rows of this process's batch that `batch` holds, and
has `reset()`, `state_dict()` and `load_state_dict()`.

- Memory is kept per row slice, so gradient accumulation works: micro-batch i always gets the
  same rows of every step and continues its own memory. Under DDP each process holds the memory of
  its own rows; the loop gathers them for a checkpoint (every tensor here has rows first).
- The loop calls `reset()` when the sampler starts the streams over (a new epoch: the history of
  row b is no longer the text before its segment) and after a skipped (non-finite) step.
- `state_dict()` = {"mems.{layer}": (rows, M, d_model)}; empty when there is no memory yet.
"""

from __future__ import annotations

import torch

from lmlab.errors import CheckpointError


class MemoryCLM:
    """objective(model, (x, y), rows) -> mean NLL of y given x and the memory of those rows."""

    def __init__(self):
        self.mems: dict[tuple[int, int], list[torch.Tensor]] = {}  # (row start, stop) -> per layer
        self._restored: list[torch.Tensor] | None = None  # all rows, from a checkpoint

    def __call__(self, model, batch, rows: slice) -> torch.Tensor:
        x, y = batch
        key = (rows.start, rows.stop)
        out = model(x, mems=self._memory(key), targets=y)
        self.mems[key] = [m.detach() for m in out.mems]  # (b, M', D) each; the model detaches too
        if self._restored is not None and sum(b - a for a, b in self.mems) >= self._restored[0].shape[0]:
            self._restored = None  # every saved row has moved on
        return out.nll.float().mean()

    def _memory(self, key: tuple[int, int]) -> list[torch.Tensor] | None:
        if key in self.mems:
            return self.mems[key]
        if self._restored is not None:  # the first step after a resume: slice the saved rows
            start, stop = key
            if stop > self._restored[0].shape[0]:
                raise CheckpointError(f"the checkpoint's memory holds {self._restored[0].shape[0]} rows; "
                                      f"this run needs rows {start}:{stop}")
            return [m[start:stop] for m in self._restored]
        return None

    def reset(self) -> None:
        """Forget every row's memory: the next segment starts with none (M = 0)."""
        self.mems, self._restored = {}, None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"mems.{layer}": (rows, M, d_model)}: the slices in row order, concatenated."""
        if not self.mems:
            if self._restored is None:
                return {}
            return {f"mems.{i}": m for i, m in enumerate(self._restored)}
        keys = sorted(self.mems)
        n_layers = len(self.mems[keys[0]])
        return {f"mems.{i}": torch.cat([self.mems[k][i] for k in keys]).contiguous() for i in range(n_layers)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Continue from `tensors` (this process's rows, as state_dict gives them)."""
        self.reset()
        if not tensors:
            return
        n = len(tensors)
        if sorted(tensors) != sorted(f"mems.{i}" for i in range(n)):
            raise CheckpointError(f"carried state holds {sorted(tensors)}; expected mems.0 .. mems.{n - 1} "
                                  "(Transformer-XL memory)")
        self._restored = [tensors[f"mems.{i}"] for i in range(n)]
