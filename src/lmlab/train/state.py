"""Training checkpoints: `checkpoints/step-N/` = model dir + optimizer.safetensors + trainer_state.json
(+ carried.safetensors: state an objective carries from step to step, e.g. Transformer-XL memory).

Written into `step-N.tmp-PID/`, fsynced, MANIFEST.json last, then renamed (DESIGN.md, Reliability).
Everything is safetensors or JSON; RNG states are stored as plain integer lists.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lmlab.checkpoints.atomic import (
    MANIFEST,
    commit_dir,
    finite_json,
    read_manifest,
    temp_output,
    write_bytes_atomic,
    write_manifest,
)
from lmlab.checkpoints.io import MODEL_FILES, load_state, save
from lmlab.errors import CheckpointError, ConfigError
from lmlab.nn.layers import Linear
from lmlab.paths import check_file_target, check_outputs

OPTIMIZER = "optimizer.safetensors"
# The shapes of the saved AdamW moments. 2: attention and feed-forward weights are held (in, out)
# in memory (lmlab.nn.layers.Linear), and their moments have that shape. Checkpoints without the
# field were written with (out, in) moments; a square matrix would take them silently transposed.
OPTIMIZER_LAYOUT = 2
TRAINER_STATE = "trainer_state.json"
CARRIED = "carried.safetensors"
OBJECTIVE = "objective.safetensors"  # an objective's own parameters (training-only output layers)
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _fault(stage: str, step: int) -> None:
    # Test hook: the reliability tests and `make faults` kill the process at a stage of a checkpoint
    # write: LMLAB_TEST_CRASH_AT=STAGE (every write) or STAGE@STEP (the write of that step only).
    at = os.environ.get("LMLAB_TEST_CRASH_AT")
    if at and (at == stage or at == f"{stage}@{step}"):
        os._exit(137)


def rng_state() -> dict:
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


RNG_KINDS = ("python", "numpy", "torch")  # (+ "cuda" where it was saved)


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = optimizer.state_dict()
    tensors = {f"state.{idx}.{key}": torch.as_tensor(v).detach().cpu().contiguous()
               for idx, entry in sd["state"].items() for key, v in entry.items()}
    return tensors, sd["param_groups"]


def optimizer_entry(source: str, name: str, tensor: torch.Tensor, params: list) -> tuple[int, str]:
    """(parameter index, state key) of a saved tensor `state.IDX.KEY`; CheckpointError (naming
    `source`) when it does not fit its parameter: torch would take it and fail steps later."""
    parts = name.split(".", 2)
    if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or int(parts[1]) >= len(params):
        raise CheckpointError(f"{source}: tensor {name} is not the state of one of the "
                              f"{len(params)} parameters of this model")
    idx, key = int(parts[1]), parts[2]
    shape = () if key == "step" else tuple(params[idx].shape)  # AdamW: moments shaped as their parameter
    if tuple(tensor.shape) != shape or not tensor.is_floating_point():
        raise CheckpointError(f"{source}: tensor {name} is {tuple(tensor.shape)} {tensor.dtype}, "
                              f"expected a float tensor of shape {shape} (parameter {idx}); the "
                              f"optimizer state does not fit this model")
    return idx, key


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list,
                   source: str = OPTIMIZER) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        idx, key = optimizer_entry(source, name, tensor, params)
        state.setdefault(idx, {})[key] = tensor
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{source}: the optimizer state does not fit this model ({e})") from None


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer, trainer_state: dict,
                    carried: dict[str, torch.Tensor] | None = None,
                    objective: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoints/step-N atomically; CheckpointError if a weight is not finite.

    `carried` (tensor name -> tensor, may be empty) goes to carried.safetensors when given, an
    objective's own parameters (`objective`) to objective.safetensors."""
    if not all_finite(model):
        raise CheckpointError(f"refusing to write checkpoint step-{step}: the model has non-finite weights")
    for what, tensors in (("carried state", carried), ("objective's parameters", objective)):
        if tensors is not None and not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
            raise CheckpointError(f"refusing to write checkpoint step-{step}: the {what} is not finite")
    root = run_dir / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f"step-{step}.tmp-{os.getpid()}"
    previous = checkpoints(run_dir)
    kept = f"; {previous[-1][1]} is kept" if previous else "; the run has no earlier checkpoint"
    # A full disk or a read-only folder: one line, the temp folder removed, earlier checkpoints kept.
    with temp_output(tmp, str(final), kept):
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        _write_checkpoint(tmp, step, model, tokenizer, optimizer, trainer_state, carried, objective)
        commit_dir(tmp, final)
    _fault("committed", step)
    return final


def _write_checkpoint(tmp: Path, step: int, model, tokenizer, optimizer, trainer_state: dict,
                      carried: dict[str, torch.Tensor] | None,
                      objective: dict[str, torch.Tensor] | None) -> None:
    save(model, tokenizer, tmp)
    (tmp / MANIFEST).unlink()
    _fault("weights", step)
    tensors, groups = optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / OPTIMIZER))
    for name, tensors in ((CARRIED, carried), (OBJECTIVE, objective)):
        if tensors is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / name))
    _fault("optimizer", step)
    state = {**trainer_state, "step": step, "optimizer_groups": groups, "optimizer_layout": OPTIMIZER_LAYOUT,
             "rng": rng_state()}
    write_bytes_atomic(tmp / TRAINER_STATE, finite_json(state).encode())
    _fault("state", step)
    write_manifest(tmp, [p.name for p in tmp.iterdir() if p.name != MANIFEST])
    _fault("manifest", step)


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Committed step-N folders with a manifest, oldest first (contents verified at load)."""
    root = run_dir / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / MANIFEST).exists():
                found.append((int(m.group(1)), p))
    return sorted(found)


# What a training run leaves in its dir. A new run into a dir holding any of these would mix two
# runs: rotation keeps the highest step numbers, so the old checkpoints would outlive the new ones
# and be what a later resume picks up.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "model.safetensors")


# Every file and folder a run writes in its dir: each must be of its kind or not there yet (lmlab.paths).
RUN_WRITES = ("metrics.jsonl", "pretrain.json", "report.json", *MODEL_FILES)
RUN_FOLDERS = ("checkpoints", "plots", "tokenizer")
PLOT = "plots/loss.png"


def check_run_dir(run_dir: Path, new_run: bool, outputs: tuple[str, ...] = RUN_OUTPUTS) -> None:
    """--out, checked before any work: a dir (or nothing yet) whose outputs are regular files and
    folders or nothing yet, and for a new run (not a resume) not one that holds an earlier run,
    which is never deleted or mixed in."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} exists and is not a directory; --out must be a run dir")
    check_outputs(run_dir, RUN_WRITES, RUN_FOLDERS)
    if (run_dir / "plots").is_dir():
        check_file_target(run_dir / PLOT)
    found = [name for name in outputs if (run_dir / name).exists()] if new_run else []
    if found:
        raise ConfigError(f"{run_dir} already holds a run ({found[0]}); pass --resume to continue it, "
                          f"or choose another --out (or remove the old run)")


def remove_stale(run_dir: Path) -> None:
    """Temp folders of writes that never committed, and step folders without a manifest."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return
    for p in root.iterdir():
        unfinished = _STEP_DIR.match(p.name) and not (p / MANIFEST).exists()
        if ".tmp-" in p.name or ".old-" in p.name or unfinished:
            shutil.rmtree(p, ignore_errors=True)


def rotate(run_dir: Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the newest `keep` checkpoints, never the one this run resumed from."""
    for _, path in checkpoints(run_dir)[:-keep]:
        if protect is None or path.resolve() != protect.resolve():
            shutil.rmtree(path, ignore_errors=True)


def resume_point(run_dir: Path) -> tuple[Path | None, str | None]:
    """(checkpoint to resume from, one line to tell the user or None) for `--resume` into run_dir.

    No checkpoint at all (a run killed before its first one): (None, a note), the run starts at
    step 0. Newer broken checkpoints before a valid one: that one, and a note naming what was
    skipped. Only broken ones: CheckpointError, as starting over would silently undo the run."""
    found = checkpoints(run_dir)
    if not found:
        return None, f"{run_dir} holds no checkpoint to resume from; starting at step 0"
    broken = []
    for _, path in reversed(found):
        try:
            read_manifest(path)
        except CheckpointError as e:
            broken.append((path, e))
            continue
        skipped = "; ".join(f"skipped {p.name}: {e}" for p, e in broken)
        return path, (f"resuming from {path.name} ({skipped})" if broken else None)
    newest, why = broken[0]
    older = " (no older checkpoint is valid either)" if len(broken) > 1 else ""
    raise CheckpointError(f"cannot resume from {newest}: {why}{older}; remove the broken checkpoint to "
                          f"resume from an older one, or start a new run with another --out")


def _check_trainer_state(file: Path, state) -> None:
    """The fields a resume uses, with the types it needs: one line naming the file, not a
    KeyError or a misleading message further on."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(state).__name__}")
    for key in ("step", "tokens", "skipped", "bad_run"):
        value = state.get(key)
        if type(value) is not int or value < 0:
            raise CheckpointError(f"{file}: {key!r} must be a non-negative integer, got {value!r}")
    m = _STEP_DIR.match(file.parent.name)
    if m and int(m.group(1)) != state["step"]:
        raise CheckpointError(f"{file}: 'step' is {state['step']} in checkpoint {file.parent.name}")
    rng = state.get("rng")
    if not isinstance(rng, dict) or any(not isinstance(rng.get(k), list) for k in RNG_KINDS):
        raise CheckpointError(f"{file}: 'rng' must be an object with python, numpy and torch states")
    if not isinstance(state.get("sampler"), dict):
        raise CheckpointError(f"{file}: 'sampler' must be an object (the data position)")
    groups = state.get("optimizer_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "params" in g for g in groups):
        raise CheckpointError(f"{file}: 'optimizer_groups' must be a list of parameter groups")
    layout = state.get("optimizer_layout", 1)  # absent in checkpoints from before the field
    if type(layout) is not int:
        raise CheckpointError(f"{file}: 'optimizer_layout' must be an integer, got {layout!r}")
    if layout > OPTIMIZER_LAYOUT:
        raise CheckpointError(f"{file}: optimizer_layout {layout} was written by a newer lmlab "
                              f"(this one reads {OPTIMIZER_LAYOUT}); upgrade lmlab to resume from it")


def read_trainer_state(path: Path, model) -> dict:
    """trainer_state.json of checkpoint `path`, checked, and refused when its AdamW moments do not
    fit `model`."""
    file = path / TRAINER_STATE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{file}: not a readable JSON file ({e})") from None
    _check_trainer_state(file, state)
    old = state.get("optimizer_layout", 1) != OPTIMIZER_LAYOUT
    if old and any(isinstance(m, Linear) for m in model.modules()):
        raise CheckpointError(f"{path}: its optimizer state predates lmlab holding attention and "
                              f"feed-forward weights as (in, out) matrices (optimizer_layout "
                              f"{OPTIMIZER_LAYOUT}), so the run cannot resume from it; its weights still "
                              f"load with lmlab.load")
    return state


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore model and optimizer in place; return trainer_state (RNG restored by the caller).
    `path` comes from resume_point, which has just checked every file's sha256: sizes only here."""
    read_manifest(path, verify=False)
    load_state(model, load_file(str(path / "model.safetensors")), str(path))
    state = read_trainer_state(path, model)
    file = path / OPTIMIZER
    load_optimizer(optimizer, load_file(str(file)), state["optimizer_groups"], str(file))
    return state


def load_carried(path: Path) -> dict[str, torch.Tensor]:
    """The carried state saved in checkpoint `path` (verified by resume_point first)."""
    file = path / CARRIED
    if not file.is_file():
        raise CheckpointError(f"{path} has no {CARRIED}: the run that wrote it carried no state, so "
                              "this objective (e.g. Transformer-XL memory) cannot resume from it")
    return load_file(str(file))


def load_objective(path: Path, module: torch.nn.Module) -> None:
    """Restore an objective's own parameters from checkpoint `path` (verified by resume_point first)."""
    file = path / OBJECTIVE
    if not file.is_file():
        raise CheckpointError(f"{path} has no {OBJECTIVE}: the run that wrote it trained no parameters of "
                              "its objective (e.g. other auxiliary-loss switches), so this run cannot resume "
                              "from it")
    tensors = load_file(str(file))
    own = module.state_dict()
    if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
        raise CheckpointError(f"{file}: the objective's parameters {sorted(tensors)[:4]} do not fit this "
                              f"objective's {sorted(own)[:4]} (other auxiliary-loss switches or model "
                              f"shape?)")
    module.load_state_dict(tensors)
