"""Checks and steps that several layout modules (`hf_bert`, `hf_gpt`, `hf_transfo_xl`) share.

Each layout keeps its own key map; these helpers only check config values and tensor names
against it, build the model, and copy the converted tensors in.

`build_loaded` runs a layout's loader twice: first on a `meta` model with the weights' header shapes
(no memory; see checkpoints/sizes.py), so every name and shape the layout checks is checked before
anything is allocated, then on the real model with the real tensors. Loaders compare tied tensors
with `same_values`, which defers that comparison to the real pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from lmlab.checkpoints.files import checked_path
from lmlab.checkpoints.sizes import allocating, check_structure, meta_build, n_stored
from lmlab.errors import ConversionError, LmlabError
from lmlab.models.registry import build_from_config

# read_weights(meta): the HF state dict; with meta=True its tensors may be meta (header shapes only).
ReadWeights = Callable[[bool], dict[str, torch.Tensor]]


def check_architectures(config: dict, supported: tuple[str, ...], where: str) -> None:
    """Every name in config.json's `architectures` (a list or one string) must be `supported`."""
    archs = config.get("architectures") or ()
    for arch in [archs] if isinstance(archs, str) else archs:
        if arch not in supported:
            raise ConversionError(f"{where}: architecture {arch!r} is not supported; "
                                  f"expected one of {', '.join(supported)}")


def lookup(table: dict[str, str], value, field: str, where: str) -> str:
    """`table[value]`, or an error naming `field` and the values `table` knows."""
    if not isinstance(value, str) or value not in table:
        raise ConversionError(f"{where}: {field}={value!r} is not supported; "
                              f"expected one of {', '.join(table)}")
    return table[value]


def build(family: str, fields: dict, where: str):
    """The lmlab model of `family` from config fields, its errors reported at `where`."""
    try:
        return build_from_config(family, fields, where=where)
    except LmlabError as e:  # a bad value in config.json (wrong type, d_model % n_heads, cutoffs ...)
        message = str(e)
        raise ConversionError(message if message.startswith(where) else f"{where}: {message}") from None


def build_loaded(family: str, fields: dict, where: str, read_weights: ReadWeights,
                 load: Callable[[torch.nn.Module, dict[str, torch.Tensor]], None]):
    """The model of `family` from `fields`, filled by `load(model, read_weights(...))`; a config that
    does not fit the weights fails on the meta pass, before any allocation."""
    shapes = read_weights(True)
    check_structure(fields, len(shapes), where, ConversionError)
    with meta_build(where, ConversionError):
        dry = build(family, fields, where)
    implied = n_stored(dry)
    try:
        load(dry, shapes)
    except ConversionError as e:
        held = sum(t.numel() for t in shapes.values())  # buffers and tied copies too: only more is wrong
        if implied <= held:
            raise
        raise ConversionError(f"{e} (config.json implies {implied:,} parameters, the weights hold only "
                              f"{held:,})") from None
    with allocating(where, implied, ConversionError):
        model = build(family, fields, where)
        state = read_weights(False)
    load(model, state)
    return model


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors of the same shape are equal; on the meta pass (no values) assumed so."""
    return a.is_meta or b.is_meta or torch.equal(a, b)


def concat(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """torch.cat along dim 0, or None when the parts do not stack; meta parts give a meta tensor
    without calling torch.cat, whose meta kernel costs a torch._dynamo import (seconds)."""
    if any(p.dim() == 0 for p in parts) or len({tuple(p.shape[1:]) for p in parts}) != 1:
        return None
    if not any(p.is_meta for p in parts):
        return torch.cat(parts)
    rows = sum(p.shape[0] for p in parts)
    return torch.empty((rows, *parts[0].shape[1:]), dtype=parts[0].dtype, device="meta")


def check_names(present: Iterable[str], wanted: set[str], where: str) -> None:
    """The HF tensor names `present` must be exactly those the key map `wanted`."""
    present = set(present)
    unexpected, missing = sorted(present - wanted), sorted(wanted - present)
    if unexpected:
        raise ConversionError(f"{where}: unexpected tensor(s) {', '.join(unexpected[:5])} for this layout")
    if missing:
        raise ConversionError(f"{where}: missing tensor(s) {', '.join(missing[:5])}")


def copy_into(own: dict[str, torch.Tensor], converted: dict[str, torch.Tensor], where: str) -> None:
    """Copy `converted` into `own`, a model's state_dict, once every shape has been checked."""
    for name, tensor in converted.items():
        # copy_ would cast integers silently; fp16/bf16 weights are fine and are cast to the model's.
        if own[name].is_floating_point() and not tensor.is_floating_point():
            raise ConversionError(f"{where}: the tensor for {name} has dtype {tensor.dtype}, lmlab "
                                  f"expects floating point ({own[name].dtype})")
    with torch.no_grad():
        for name, tensor in converted.items():
            own[name].copy_(tensor)  # state_dict tensors share storage with the parameters


def added_tokens_decoder(tokenizer) -> dict[str, dict]:
    """tokenizer_config.json's `added_tokens_decoder`: the tokenizer's special tokens by id."""
    return {str(tokenizer.token_to_id(t)): {"content": t, "special": True, "normalized": False,
                                            "lstrip": False, "rstrip": False, "single_word": False}
            for t in tokenizer.special_tokens}


def torch_file(path: Path, advice: str = ""):
    """What a foreign PyTorch weights file (.pth, .bin) holds, read with `torch.load(weights_only=True)`:
    tensors and plain containers, never code. A missing or unreadable file is one line naming it."""
    try:
        real = checked_path(path, ConversionError)
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing") from None
    try:
        # Its warnings (e.g. about the pickle protocol) are noise on top of the error below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(real, map_location="cpu", weights_only=True)
    except Exception:  # UnpicklingError, RuntimeError (zip), EOFError ...: all mean "unreadable"
        # Not torch's text: it advises weights_only=False, which would run the file's code.
        raise ConversionError(f"{path}: not a readable PyTorch weights file (or it holds more than "
                              f"tensors){advice}") from None


def tensor_dict(state, path: Path, expected: str = "a state dict of tensors") -> dict[str, torch.Tensor]:
    """`state` if it is a dict of named tensors, else one line naming `path` and what was expected."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                              for k, t in state.items()):
        raise ConversionError(f"{path}: expected {expected}")
    return state
