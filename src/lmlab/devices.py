"""`--device`: the names lmlab accepts, checked against what this machine and torch build have."""

from __future__ import annotations

import torch

from lmlab.errors import ConfigError

KINDS = ("cpu", "cuda", "mps")


def resolve_device(name: str | torch.device) -> torch.device:
    """"auto" (CUDA when there is a GPU, else the CPU), cpu, cuda, cuda:N or mps, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in KINDS:
        raise ConfigError(f"--device {name!r} is not a device lmlab runs on; expected auto, cpu, cuda, "
                          f"cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU here (or this torch is a CPU-only build)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s), numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: Apple's MPS backend is not available here")
    return device
