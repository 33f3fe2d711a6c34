"""Sampling and decoding for every decoder in lmlab."""

from lmlab.generate.loop import generate, left_pad, stream
from lmlab.generate.speculative import quantized_draft

__all__ = ["generate", "left_pad", "quantized_draft", "stream"]
