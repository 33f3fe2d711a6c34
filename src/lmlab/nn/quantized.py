"""Int8 copies of linear layers, for CPU inference where the answer may be approximate (draft models).

Weights are quantised once, symmetrically per output channel; activations are quantised per call
(dynamic quantisation) by PyTorch's fbgemm kernels, which use AVX2 / AVX-512 VNNI integer dot
products. A decoding step of a 124M model reads 124 MB of int8 instead of 494 MB of fp32 weights, and
on a 2-core Xeon it runs the layers' matmuls ~3.5x faster (benchmarks/generate.py). The outputs differ
from fp32 by ~1% of their scale: fine for proposing tokens, not for scoring them.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from lmlab.errors import LmlabError

ENGINE = "fbgemm"  # the x86 server kernels; "x86" picks between fbgemm and oneDNN, which was slower here


def int8_available() -> bool:
    """Whether this torch build has the kernels (torch marks them deprecated: a later one may not)."""
    try:
        return (ENGINE in torch.backends.quantized.supported_engines
                and hasattr(torch, "quantize_per_channel") and torch.ops.quantized.linear_dynamic is not None)
    except (AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def _engine(name: str):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


class Int8Linear(nn.Module):
    """y ≈ x·Wᵀ + b from a float weight (d_out, d_in), held as packed int8. CPU, inference only."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if not int8_available():
            raise LmlabError(f"int8 layers need PyTorch's {ENGINE} quantized kernels (x86 CPUs), which "
                             f"this torch build ({torch.__version__}) does not have")
        w = weight.detach().to("cpu", torch.float32)
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings(), _engine(ENGINE):
            # torch marks quantised tensors as deprecated; the fbgemm linear kernels still need one.
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
            b = None if bias is None else bias.detach().to("cpu", torch.float32)
            self._packed = torch.ops.quantized.linear_prepack(q, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        return torch.ops.quantized.linear_dynamic(flat, self._packed).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"
