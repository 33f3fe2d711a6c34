"""Sizes before allocation, values after reading: what a model file is checked for around the build.

A config.json is only a promise about the weights next to it. Before the real model is built, it is
built on the `meta` device (shapes, no memory: every family of `models.registry` builds there) and
its tensors are compared with the weights' own shapes, read from the safetensors header (or from
the loaded tensors of a `.bin` file), so a config asking for a huge model is one line naming both
sizes instead of an allocation traceback or the OOM killer. Two config values make even the meta
build slow, as they count Python modules: `n_layers` and the adaptive-softmax `cutoffs`; each layer
and cluster has at least one tensor, so neither may exceed the number of tensors in the weights.

The meta build skips the models' random initialisation (`on_meta`): torch's meta `normal_` imports
torch._dynamo on first use, 2-3 s that every `lmlab.load` would pay, for values a meta tensor lacks.

A model that truly is too big for this machine still fails at allocation; `allocating` turns that
into one line too. After reading, `check_finite` refuses NaN and infinite weights by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from lmlab.checkpoints.files import safetensors_shapes
from lmlab.errors import LmlabError

TORCH_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
                "U16": torch.uint16, "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64,
                "U64": torch.uint64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
# Allocation failures as torch's CPU allocator and Python word them.
OUT_OF_MEMORY = ("not enough memory", "DefaultCPUAllocator", "can't allocate memory",
                 "Cannot allocate memory")
FINITE_CHUNK = 1 << 24  # elements checked at a time: a bounded temporary, whatever the tensor's size


# In-place random initialisers (nn.init's and the Tensor methods they call): no-ops on `on_meta`.
INITIALISERS = frozenset(
    [getattr(torch.nn.init, name) for name in dir(torch.nn.init)
     if name.endswith("_") and not name.startswith("_") and callable(getattr(torch.nn.init, name))]
    + [getattr(torch.Tensor, name) for name in ("normal_", "uniform_", "bernoulli_", "exponential_",
                                                 "geometric_", "log_normal_", "cauchy_", "random_")])


class _SkipInit(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in INITIALISERS:
            return args[0] if args else kwargs["tensor"]  # initialisers change values in place only
        return func(*args, **kwargs)


@contextmanager
def on_meta() -> Iterator[None]:
    """Modules built inside have every tensor on the `meta` device (no memory) and no initialisation."""
    with torch.device("meta"), _SkipInit():
        yield


@contextmanager
def meta_build(where: str, error: type[LmlabError]) -> Iterator[None]:
    """`on_meta`, and a config whose tensors could not exist on any machine (more bytes than an int64
    counts: torch's "Storage size calculation overflowed", even on meta) is one line, not a traceback."""
    with on_meta():
        try:
            yield
        except RuntimeError as e:
            if "overflow" not in str(e).lower():
                raise
            first = str(e).strip().splitlines()[0]
            raise error(f"{where}: the config asks for a tensor larger than any machine holds "
                        f"({first})") from None


def header_state(path: Path, error: type[LmlabError]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as `meta` tensors (name, dtype, shape; no data read)."""
    return {name: torch.empty(shape, dtype=TORCH_DTYPES[dtype], device="meta")
            for name, (dtype, shape) in safetensors_shapes(path, error).items()}


def check_structure(fields: dict, n_tensors: int, where: str, error: type[LmlabError]) -> None:
    """n_layers and the number of cutoffs, each at most the tensors the weights hold (see above)."""
    n_layers, cutoffs = fields.get("n_layers"), fields.get("cutoffs")
    counts = {}
    if isinstance(n_layers, int) and not isinstance(n_layers, bool):
        counts[f"n_layers={n_layers:,}"] = n_layers
    if isinstance(cutoffs, (list, tuple)):
        counts[f"{len(cutoffs):,} cutoffs"] = len(cutoffs) + 1  # clusters, each with its own tensors
    for what, n in counts.items():
        if n > n_tensors:
            raise error(f"{where}: {what}, but the weights hold only {n_tensors:,} tensors in all; "
                        f"config and weights belong to different models")


def stored_names(module: torch.nn.Module) -> list[str]:
    """state_dict names with each tied tensor once, under its first name; works on `meta` models
    too (unlike comparing storage pointers, which are all 0 there)."""
    seen, names = set(), []
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            names.append(name)
    return names


def n_stored(module: torch.nn.Module) -> int:
    """Elements of the tensors a checkpoint of `module` holds: its parameters, tied ones once."""
    own = module.state_dict(keep_vars=True)
    return sum(own[name].numel() for name in stored_names(module))


@contextmanager
def allocating(where: str, n_elements: int, error: type[LmlabError]) -> Iterator[None]:
    """Around building a model of `n_elements` float32 values and reading its weights: running out
    of memory is one line naming the size."""
    message = (f"{where}: not enough memory for this model ({n_elements:,} parameters, "
               f"{n_elements * 4 / 2**30:.1f} GiB in float32)")
    try:
        yield
    except MemoryError:
        raise error(message) from None
    except RuntimeError as e:
        if any(words in str(e) for words in OUT_OF_MEMORY):
            raise error(message) from None
        raise


def check_finite(state: dict[str, torch.Tensor], where: str, error: type[LmlabError]) -> None:
    """Every floating-point tensor of `state` finite; else one line naming the first bad tensor.

    NaN and infinities carry through a sum, so a finite sum means finite values (25 times faster
    than isfinite on every element); only a sum that is not finite (or overflowed) is looked into."""
    for name, tensor in state.items():
        if not tensor.is_floating_point() or tensor.device.type == "meta":
            continue
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), FINITE_CHUNK):
            chunk = flat[start:start + FINITE_CHUNK]
            if chunk.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                chunk = chunk.float()  # float8 has no sum or isfinite kernels
            # Half precision is summed in float32: its own range would overflow on finite values.
            total = chunk.sum(dtype=torch.float64 if chunk.dtype == torch.float64 else torch.float32)
            if torch.isfinite(total):
                continue
            bad = ~torch.isfinite(chunk)
            if bad.any():
                what = "NaN" if torch.isnan(chunk).any() else "an infinite value"
                first = start + int(bad.nonzero()[0, 0])
                raise error(f"{where}: tensor {name} holds {what} (at flat index {first:,} of "
                            f"{flat.numel():,}); the weights are broken")
