"""Task name -> its head builder (HEADS, what `lmlab.load` needs) and its module (TASKS, what
`lmlab finetune` / `lmlab evaluate --task` need). Literal dicts: no import-time registration.

A task module provides (see lmlab.tasks): read, label_set, featurize, collate, loss, evaluate and
build_head; optionally spec_extra(train_examples, options) -> dict, saved as TaskSpec.extra.
"""

from __future__ import annotations

from types import ModuleType

from torch import nn

from lmlab.errors import ConfigError
from lmlab.tasks import choice, classify, qa, tag
from lmlab.tasks.base import TaskModel, TaskSpec

HEADS = {
    "classify": classify.build_head,
    "pair": classify.build_head,
    "choice": choice.build_head,
    "tag": tag.build_head,
    "qa": qa.build_head,
}

TASKS: dict[str, ModuleType] = {
    "classify": classify,
    "pair": classify,
    "choice": choice,
    "tag": tag,
    "qa": qa,
}


def task_module(name: str) -> ModuleType:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


def build_task_model(backbone: nn.Module, spec: TaskSpec) -> TaskModel:
    """`backbone` with a freshly initialised head for `spec` (weights come after, if loading)."""
    if spec.name not in HEADS:
        raise ConfigError(f"no head for task {spec.name!r}; known tasks: {', '.join(HEADS)}")
    return TaskModel(backbone, HEADS[spec.name](backbone, spec), spec)
