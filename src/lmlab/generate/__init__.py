"""Sampling and decoding for every decoder in lmlab."""

from lmlab.generate.loop import generate, left_pad, stream

__all__ = ["generate", "left_pad", "stream"]
