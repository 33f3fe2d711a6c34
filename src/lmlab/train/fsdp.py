"""`lmlab pretrain --fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) instead of DDP under torchrun.

DDP keeps everything on every rank: fp32 weights, gradients and the two AdamW moments, 16 bytes per
parameter. FSDP2 shards all of it over the n ranks (16/n bytes per parameter): each block's weights
are all-gathered just before its forward (and again for its backward) and freed after, and its
gradients are reduce-scattered, so a rank holds only its shard plus one block's full weights at a
time. The arithmetic is the same as DDP's (gradients averaged over ranks), so the losses agree with
a DDP run to float rounding.

Checkpoints keep lmlab's single-file format, so `lmlab.load` and a DDP or single-process resume read
them unchanged: every rank takes part in gathering full, CPU-resident state dicts
(torch.distributed.checkpoint.state_dict, rank 0 receives them), rank 0 copies the weights into a
plain CPU replica of the model and writes the checkpoint from it. The optimizer state is renumbered
from parameter names to the integer ids a plain `optimizer.state_dict()` uses. On resume every rank
reads the full files and keeps its own shards.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from lmlab.checkpoints.atomic import read_manifest
from lmlab.errors import CheckpointError
from lmlab.train.distributed import Dist
from lmlab.train.state import OPTIMIZER, optimizer_entry, read_trainer_state

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def group_modules(model: nn.Module) -> list[nn.Module]:
    """The repeated layers (members of an nn.ModuleList) that hold exactly one of
    `model.layer_groups()` each: one FSDP unit (one all-gather) per layer."""
    wanted = [{id(p) for p in group} for group in model.layer_groups()]
    return [child for module in model.modules() if isinstance(module, nn.ModuleList)
            for child in module if {id(p) for p in child.parameters()} in wanted]


def shard_model(model: nn.Module, d: Dist) -> nn.Module | None:
    """Shard `model` in place: every layer group that is one module, then the root (embeddings,
    final norm, tied head).

    Call before making the optimizer (FSDP2 replaces the parameters with sharded DTensors).
    Returns rank 0's plain CPU replica that checkpoints are written from (None on other ranks).
    """
    replica = None
    if d.is_main:
        replica = type(model)(model.config)
        replica.family = model.family
    for block in group_modules(model):
        fully_shard(block)
    fully_shard(model)
    return replica


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ over sharded gradients returns a DTensor; the loop wants a plain tensor."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


class FullOptimizerState:
    """A gathered optimizer state with the `state_dict()` that lmlab's checkpoint writer reads."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in the order of their integer ids (group by group)."""
    names = {id(p): n for n, p in model.named_parameters()}  # a tied weight: its first name
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather(model: nn.Module, optimizer: torch.optim.Optimizer | None, replica: nn.Module | None,
           d: Dist) -> tuple[nn.Module | None, FullOptimizerState | None]:
    """Full weights (and optimizer state) on rank 0, as (replica, optimizer); (None, None) elsewhere.

    Collective: every rank must call it."""
    weights = get_model_state_dict(model, options=_FULL)
    optim = get_optimizer_state_dict(model, optimizer, options=_FULL) if optimizer is not None else None
    if not d.is_main:
        return None, None
    replica.load_state_dict(weights)
    if optim is None:
        return replica, None
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in optim["param_groups"]]
    state = {index[n]: entry for n, entry in optim["state"].items()}
    return replica, FullOptimizerState({"state": state, "param_groups": groups})


def load_sharded_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """`lmlab.train.state.load_checkpoint` for a sharded model: every rank reads the full files and
    keeps its shards. Returns trainer_state (RNG restored by the caller). `path` comes from
    resume_point, which has just checked every file's sha256: sizes only here."""
    read_manifest(path, verify=False)
    weights = load_file(str(path / "model.safetensors"))
    result = set_model_state_dict(model, weights,
                                  options=StateDictOptions(full_state_dict=True, strict=False))
    tied = ({n for n, _ in model.named_parameters(remove_duplicate=False)}  # stored once, under
            - {n for n, _ in model.named_parameters()})                      # the first name
    if result.unexpected_keys or set(result.missing_keys) - tied:
        raise CheckpointError(f"{path}: weights do not fit this model (missing "
                              f"{sorted(set(result.missing_keys) - tied)[:5]}, unexpected "
                              f"{sorted(result.unexpected_keys)[:5]})")
    state = read_trainer_state(path, model)
    names = _param_names(model, optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # global shapes
    entries: dict[str, dict] = {}
    for key, tensor in load_file(str(path / OPTIMIZER)).items():
        idx, field = optimizer_entry(str(path / OPTIMIZER), key, tensor, params)
        entries.setdefault(names[idx], {})[field] = tensor
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["optimizer_groups"]]
    set_optimizer_state_dict(model, optimizer, {"state": entries, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))
    return state
