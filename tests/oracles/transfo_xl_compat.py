"""What transformers 4.44's Transformer-XL needs to run on current torch (oracle environment only).

`TransfoXLModel.forward` calls `torch.arange(...).type_as(dtype=...)`, a form torch has since
dropped. `accept_type_as_dtype()` routes that one form of the call to `.to(dtype)` and passes every
other call on unchanged, so an unmodified `pip install transformers==4.44.2` (`make oracle`) serves
as the reference: tests/oracles/make_transfo_xl_goldens.py and benchmarks/transformer_xl_hf.py.
"""

from __future__ import annotations

import torch


def accept_type_as_dtype() -> None:
    try:
        torch.zeros(1).type_as(dtype=torch.float32)
        return  # this torch takes the keyword (or the patch below is already in place)
    except TypeError:
        pass
    original = torch.Tensor.type_as

    def type_as(self, other=None, *, dtype=None):
        return self.to(dtype) if other is None and dtype is not None else original(self, other)

    torch.Tensor.type_as = type_as
