"""`lmlab.save` / `lmlab.load`: a model dir is config.json + model.safetensors + tokenizer files,
with MANIFEST.json written last. Never pickle: weights are safetensors, everything else JSON.

A fine-tuned TaskModel (lmlab.models.heads) is saved the same way: config.json holds its backbone's
family and config fields plus `"task"` (the TaskSpec as a dict), the weights are named
`backbone.*` and `head.*`, and `load` rebuilds the TaskModel (head from `lmlab.models.heads.HEADS`).
A task model without a backbone (the scalar_mix reader over word vectors alone) has `"family": null`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmlab.checkpoints.atomic import MANIFEST, read_manifest, temp_output, write_bytes_atomic, write_manifest
from lmlab.checkpoints.files import JSON_CAP, check_tokenizer_files, checked_path, read_json
from lmlab.checkpoints.sizes import (
    allocating,
    check_finite,
    check_structure,
    header_state,
    meta_build,
    n_stored,
    stored_names,
)
from lmlab.devices import resolve_device
from lmlab.errors import CheckpointError, LmlabError, TokenizerError
from lmlab.models.config import config_to_dict
from lmlab.models.heads import TaskModel, TaskSpec, build_task_model
from lmlab.models.registry import build_from_config, family_of
from lmlab.paths import check_outputs
from lmlab.tokenizers import load_tokenizer
from lmlab.version import __version__

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
# Every file `save` may write (the tokenizers' files included).
MODEL_FILES = (CONFIG, WEIGHTS, MANIFEST, "tokenizer.json", "vocab.json", "merges.txt", "vocab.txt")


def unique_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with each shared (tied) tensor stored once, under its first name."""
    seen, state = set(), {}
    for name, tensor in module.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach().contiguous().cpu()
    return state


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy `state` in; missing names are allowed only where the model ties them to a stored one."""
    check_state(module, state, where)
    module.load_state_dict(state, strict=False)


def check_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """What `load_state` checks before copying; `module` and `state` may be on the meta device."""
    own = module.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensor(s) {', '.join(unexpected[:5])} for this model")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise CheckpointError(f"{where}: tensor {name} has shape {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(own[name].shape)}")
        # Other float widths are cast on copy (fp16/bf16 files load); integer values are not weights.
        if own[name].is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(f"{where}: tensor {name} has dtype {tensor.dtype}, the model expects "
                                  f"floating point ({own[name].dtype})")
    missing = sorted(set(stored_names(module)) - set(state))
    if missing:
        raise CheckpointError(f"{where}: missing tensor(s) {', '.join(missing[:5])}")


def save(model: torch.nn.Module, tokenizer, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write model (and tokenizer, if given) into `out_dir`; other files there are left alone."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory; expected a model dir to write into")
    check_outputs(out, MODEL_FILES)  # each a regular file or nothing yet: never renamed over a device
    out.mkdir(parents=True, exist_ok=True)
    # The manifest goes first and comes back last: a crash in between leaves no valid model here.
    (out / MANIFEST).unlink(missing_ok=True)
    base = model.backbone if isinstance(model, TaskModel) else model
    config = ({"family": None, "lmlab_version": __version__} if base is None  # word vectors alone
              else {"family": family_of(base), "lmlab_version": __version__, **config_to_dict(base.config)})
    if isinstance(model, TaskModel):
        config["task"] = model.spec.to_dict()
    if extra:
        config["extra"] = extra
    write_bytes_atomic(out / CONFIG, json.dumps(config, indent=2).encode())
    tmp = out / f"{WEIGHTS}.tmp-{os.getpid()}"
    with temp_output(tmp, str(out / WEIGHTS)):  # a full disk: one line, no temp file left
        save_file(unique_state(model), str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / WEIGHTS)
    files = [CONFIG, WEIGHTS]
    if tokenizer is not None:
        before = set(os.listdir(out))
        tokenizer.save(out)
        files += sorted((set(os.listdir(out)) - before) | tokenizer_files(out))
    write_manifest(out, sorted(set(files)))
    return out


def tokenizer_files(directory: Path) -> set[str]:
    names = {"tokenizer.json", "vocab.json", "merges.txt", "vocab.txt"}
    return {n for n in names if (directory / n).exists()}


def check_tokenizer_fits(model, tokenizer, directory: Path) -> None:
    """Fewer tokens than embedding rows is fine (padded vocabularies); more would fail only later, at
    the first out-of-range id, with a message about the prompt instead of the model dir."""
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise TokenizerError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens, more than "
                             f"the model's vocab_size {model.config.vocab_size}; it belongs to another model")


def read_config(directory: Path) -> dict:
    path = directory / CONFIG
    try:
        config = read_json(path, JSON_CAP, CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    if not isinstance(config, dict) or "family" not in config:
        raise CheckpointError(f"{path}: no \"family\" field; not an lmlab config")
    return config


def load(model_dir: str | Path, device: str | torch.device = "cpu", verify: bool = True):
    """(model, tokenizer) from an lmlab model dir; tokenizer is None when the dir has none.

    A fine-tuned dir (config.json with "task") gives a TaskModel and its extended tokenizer.
    """
    device = resolve_device(device)  # a bad --device fails before the weights are read
    directory = Path(model_dir)
    read_manifest(directory, verify=verify)
    config = read_config(directory)
    family = config.pop("family")
    config.pop("lmlab_version", None)
    config.pop("extra", None)
    task = config.pop("task", None)
    where, weights = str(directory / CONFIG), directory / WEIGHTS
    # The config is first held against the weights' header on a meta model, which allocates
    # nothing: a config.json asking for a huge model is one line naming both sizes, not an OOM.
    try:
        shapes = header_state(weights, CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(f"{weights}: missing") from None
    check_structure(config, len(shapes), where, CheckpointError)
    with meta_build(where, CheckpointError):
        dry = build_model(family, config, task, where)
    n_params = check_sizes(dry, shapes, str(weights))
    with allocating(str(weights), n_params, CheckpointError):
        model = build_model(family, config, task, where)
        try:
            state = load_file(str(checked_path(weights, CheckpointError)))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    check_finite(state, str(weights), CheckpointError)
    load_state(model, state, str(weights))
    check_tokenizer_files(directory, CheckpointError)  # the tokenizer reads them by path
    tokenizer = load_tokenizer(directory)
    check_tokenizer_fits(model, tokenizer, directory)
    model.to(device).eval()
    return model, tokenizer


def build_model(family: str, config: dict, task: dict | None, where: str):
    """The model (a TaskModel with `task`) of a config.json's fields; its errors name `where`."""
    try:
        # "family": null is a task model without a backbone (word vectors alone, lmlab.models.heads).
        bare = family is None and task is not None
        model = None if bare else build_from_config(family, config, where=where)
        if task is not None:
            model = build_task_model(model, TaskSpec.from_dict(task, where=f'{where} "task"'))
    except LmlabError as e:
        # Unknown families and bad field values do not know which file they came from.
        message = str(e) if where in str(e) else f"{where}: {e}"
        raise CheckpointError(message) from None
    return model


def check_sizes(dry: torch.nn.Module, shapes: dict[str, torch.Tensor], where: str) -> int:
    """`dry` (a meta model built from config.json) against the weights' header; its size if they fit."""
    implied = n_stored(dry)
    try:
        check_state(dry, shapes, where)
    except CheckpointError as e:
        held = sum(t.numel() for t in shapes.values())
        if held == implied:
            raise
        raise CheckpointError(f"{e} (config.json implies {implied:,} parameters, the file holds "
                              f"{held:,})") from None
    return implied
