"""lmlab: the 2017-2019 lineage of pretrained language models in one PyTorch toolkit.

`import lmlab` is fast: the names below and the subpackages (`lmlab.eval`, `lmlab.generate`, ...)
load on first use.

    lmlab.build(family, preset, **fields)          lmlab.load(dir) / lmlab.save(model, tok, dir)
    lmlab.from_hf(dir) / lmlab.to_hf(model, tok, dir)
    lmlab.from_original(family, *files)             original releases (ELMo: options.json, weights.hdf5)
    lmlab.to_original(model, tok, dir)              back to the original layout (ulmfit: fastai's files)
    lmlab.generate(model, ids, ...) / lmlab.stream(...)
    lmlab.embed(model, tokenizer, sentences)        lmlab.eval.span_f1, lmlab.eval.squad_scores
"""

from __future__ import annotations

import importlib

from lmlab.version import __version__

# name -> (module, attribute), imported on first access
_NAMES = {
    "build": ("lmlab.models.registry", "build"),
    "load": ("lmlab.checkpoints.io", "load"),
    "save": ("lmlab.checkpoints.io", "save"),
    "from_hf": ("lmlab.checkpoints.convert", "from_hf"),
    "to_hf": ("lmlab.checkpoints.convert", "to_hf"),
    "from_original": ("lmlab.checkpoints.convert", "from_original"),
    "to_original": ("lmlab.checkpoints.convert", "to_original"),
    "generate": ("lmlab.generate.loop", "generate"),
    "stream": ("lmlab.generate.loop", "stream"),
    "embed": ("lmlab.eval.embed", "embed"),
}
_SUBPACKAGES = ("checkpoints", "data", "eval", "generate", "models", "nn", "objectives", "tasks",
                "tokenizers", "train")

__all__ = ["__version__", *_NAMES, *_SUBPACKAGES]


def __getattr__(name: str):
    if name in _NAMES:
        module, attribute = _NAMES[name]
        value = getattr(importlib.import_module(module), attribute)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"lmlab.{name}")
    else:
        raise AttributeError(f"module 'lmlab' has no attribute {name!r}")
    globals()[name] = value  # the next access does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
