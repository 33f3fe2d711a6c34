"""Sampling and decoding for every causal LM in lmlab.

`lmlab.generate` is both this package and the function `generate` (DESIGN.md's interface): the
package is callable, so `lmlab.generate(model, ids, ...)` works however the package was imported
first (importing a submodule sets the package as the parent's attribute).
"""

import sys
import types

from lmlab.generate.loop import generate, left_pad, stream
from lmlab.generate.speculative import quantized_draft

__all__ = ["generate", "left_pad", "quantized_draft", "stream"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
