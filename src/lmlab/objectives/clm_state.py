"""Causal LM over contiguous segments that carries the model's state from step to step: Transformer-XL's
memory (Dai et al. 2019, §3.2) or an LSTM's (h, c) (truncated BPTT, as AWD-LSTM and ULMFiT train).

Row b of training batch k+1 continues row b of batch k (`lmlab.data.sampler.ContiguousStreams`),
so the state a row leaves after step k is exactly the history of the segment it reads at step
k+1: the loss of that segment is -log p(x_t | state, x_<t) with the state held fixed (detached,
no gradient into the previous step: the stop-gradient SG(·) of eq. 1 in §3.2, or the truncation
of backpropagation through time). The loss is the mean NLL over the batch's scored tokens, through
`model(x, state=..., targets=y).nll`, so DDP and torch.compile see the call.

This is a *stateful objective* for `lmlab.train.loop.train` (see its docstring): it is called as
`objective(model, batch, rows)` with the rows of this process's batch that `batch` holds, and
has `reset()`, `state_dict()` and `load_state_dict()`.

- State is kept per row slice, so gradient accumulation works: micro-batch i always gets the same
  rows of every step and continues its own state. Under DDP each process holds the state of its
  own rows; the loop gathers them for a checkpoint (every state tensor has rows first).
- The loop calls `reset()` when the sampler starts the streams over (a new epoch: the history of
  row b is no longer the text before its segment) and after a skipped (non-finite) step.
- `state_dict()` = {"state.{position}": (rows, ...)} (lmlab.nn.state names); empty before the first step.
"""

from __future__ import annotations

import torch

from lmlab.errors import CheckpointError
from lmlab.nn.lm_loss import IGNORE_INDEX
from lmlab.nn.state import detach_state, state_from_tensors, state_rows, state_to_tensors

PREFIX = "state."
_LEGACY_PREFIX = "mems."  # Transformer-XL checkpoints written before the state protocol


def mean_nll(nll: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of per-token `nll` over the targets that are scored (not IGNORE_INDEX)."""
    scored = targets != IGNORE_INDEX
    return (nll.float() * scored).sum() / scored.sum().clamp(min=1)


class CarriedStateCLM:
    """objective(model, (x, y), rows) -> mean NLL of y given x and the carried state of those rows."""

    def __init__(self):
        self.states: dict[tuple[int, int], object] = {}  # (row start, stop) -> that slice's state
        self._restored: dict[str, torch.Tensor] | None = None  # all rows, from a checkpoint

    def __call__(self, model, batch, rows: slice) -> torch.Tensor:
        x, y = batch
        out = model(x, state=self.state_of(rows), targets=y)
        self.keep(rows, out.state)
        return mean_nll(out.nll, y)

    def state_of(self, rows: slice):
        """The state rows `rows` carry into this step (None: none yet)."""
        return self._state((rows.start, rows.stop))

    def keep(self, rows: slice, state) -> None:
        """Remember the state rows `rows` leave after this step (detached: no gradient flows back)."""
        self.states[(rows.start, rows.stop)] = detach_state(state)
        if self._restored is not None and sum(b - a for a, b in self.states) >= self._rows_restored():
            self._restored = None  # every saved row has moved on

    def _rows_restored(self) -> int:
        return next(iter(self._restored.values())).shape[0]

    def _state(self, key: tuple[int, int]):
        if key in self.states:
            return self.states[key]
        if self._restored is not None:  # the first step after a resume: slice the saved rows
            start, stop = key
            if stop > self._rows_restored():
                raise CheckpointError(f"the checkpoint's carried state holds {self._rows_restored()} rows; "
                                      f"this run needs rows {start}:{stop}")
            return state_rows(state_from_tensors(self._restored), slice(start, stop))
        return None

    def reset(self) -> None:
        """Forget every row's state: the next segment starts with none."""
        self.states, self._restored = {}, None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"state.{position}": (rows, ...)}: the slices in row order, concatenated."""
        if not self.states:
            return {PREFIX + k: t for k, t in (self._restored or {}).items()}
        keys = sorted(self.states)
        parts = [state_to_tensors(self.states[k]) for k in keys]
        return {PREFIX + name: torch.cat([p[name] for p in parts]).contiguous() for name in parts[0]}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Continue from `tensors` (this process's rows, as state_dict gives them)."""
        self.reset()
        if not tensors:
            return
        names = {}
        for name, t in tensors.items():
            for prefix in (PREFIX, _LEGACY_PREFIX):
                if name.startswith(prefix):
                    names[name[len(prefix):]] = t
                    break
            else:
                raise CheckpointError(f"carried state tensor {name!r} is not named {PREFIX}POSITION")
        try:
            state_from_tensors(names)
        except ValueError as e:
            raise CheckpointError(f"carried state: {e}") from None
        self._restored = names
