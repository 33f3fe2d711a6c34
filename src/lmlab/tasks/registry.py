"""Task name -> its module: what `lmlab finetune` / `lmlab evaluate --task` need. A literal dict:
no import-time registration. The heads a saved model needs live in `lmlab.models.heads` (HEADS).

A task module provides (see lmlab.tasks): read, label_set, featurize, collate, loss and evaluate;
optionally spec_extra(train_examples, options) -> dict, saved as TaskSpec.extra.
"""

from __future__ import annotations

from types import ModuleType

from lmlab.errors import ConfigError
from lmlab.tasks import choice, classify, lm, qa, tag

TASKS: dict[str, ModuleType] = {
    "classify": classify,
    "pair": classify,
    "choice": choice,
    "tag": tag,
    "qa": qa,
    "lm": lm,  # ULMFiT's target-domain LM fine-tuning (finetune dispatches it before the task machinery)
}


def task_module(name: str) -> ModuleType:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
