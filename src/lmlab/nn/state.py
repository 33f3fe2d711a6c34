"""Carried state as plain tensors: what training, evaluation and checkpoints do with any model's state.

A carried state (Transformer-XL memory, LSTM (h, c), see lmlab.models.registry) is a list or tuple
of tensors or of such lists, every tensor with the batch in dim 0. These helpers never look inside
beyond that: they map a function over the tensors, and turn a state into named tensors (for
safetensors) and back. Names are the positions in the nesting: `0`, `1.0`, `1.1`, ...
"""

from __future__ import annotations

from collections.abc import Callable

import torch

State = torch.Tensor | list | tuple


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State | None) -> State | None:
    """The same nesting with fn applied to every tensor (None stays None)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    return type(state)(map_state(fn, s) for s in state)


def detach_state(state: State | None) -> State | None:
    """No gradient flows into the previous call (truncated BPTT; Transformer-XL's SG(·), §3.2)."""
    return map_state(torch.Tensor.detach, state)


def state_rows(state: State | None, rows: slice) -> State | None:
    """The state of batch rows `rows`."""
    return map_state(lambda t: t[rows], state)


def state_to_tensors(state: State | None, prefix: str = "") -> dict[str, torch.Tensor]:
    """{"0": t, "1.0": t, ...}: every tensor named by its position in the nesting ({} for None)."""
    if state is None:
        return {}
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    out = {}
    for i, part in enumerate(state):
        out.update(state_to_tensors(part, f"{prefix}.{i}" if prefix else str(i)))
    return out


def state_from_tensors(tensors: dict[str, torch.Tensor]) -> State | None:
    """The inverse of state_to_tensors (lists for the nesting); None for {}.

    Raises ValueError when the names are not positions 0..n-1 at every level."""
    if not tensors:
        return None
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        head, _, rest = name.partition(".")
        if not head.isdigit():
            raise ValueError(f"state tensor name {name!r} is not a position like 0 or 1.0")
        groups.setdefault(int(head), {})[rest] = t
    if sorted(groups) != list(range(len(groups))):
        raise ValueError(f"state tensors {sorted(tensors)} skip a position")
    out = []
    for i in range(len(groups)):
        part = groups[i]
        out.append(part[""] if set(part) == {""} else state_from_tensors(part))
    return out
