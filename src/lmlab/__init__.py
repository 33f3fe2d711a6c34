"""lmlab: the 2017-2019 lineage of pretrained language models in one PyTorch toolkit."""

__version__ = "0.1.0"

from lmlab.checkpoints.io import load, save
from lmlab.generate import generate, stream
from lmlab.models.registry import build


def from_hf(hf_dir, device="cpu"):
    """(model, tokenizer) from a Hugging Face model dir (gpt2, openai-gpt, bert, transfo-xl layouts)."""
    from lmlab.checkpoints.convert import from_hf as _from_hf

    return _from_hf(hf_dir, device=device)


def to_hf(model, tokenizer, hf_dir):
    """Write `model` (and tokenizer) in the Hugging Face layout of its family."""
    from lmlab.checkpoints.convert import to_hf as _to_hf

    return _to_hf(model, tokenizer, hf_dir)


__all__ = ["__version__", "build", "load", "save", "generate", "stream", "from_hf", "to_hf"]
