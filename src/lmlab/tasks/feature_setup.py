"""`lmlab finetune --features`: the frozen encoder, the word vectors and the TaskSpec of a feature-based
task model (Peters et al. 2018 §3.3; `lmlab.models.feature_heads`, `lmlab.tasks.features`).

MODEL_DIR is any lmlab model dir whose family declares the `scalar_mix` reader (ELMo, BERT, GPT,
GPT-2), or `none` (`NO_ENCODER`): no encoder, the word vectors alone (the paper's baseline; a folder
really named "none" is `./none`). A dir fine-tuned before gives its backbone.

The word vectors (`--word-vectors builtin:glove-6b-50d` or a GloVe text file) are looked up for the
words of the training and dev data only; those rows, not the whole table, go into the model dir.
Words without a vector are reported (`oov` in report.json: types, tokens, the most frequent ones).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from lmlab.checkpoints.io import load
from lmlab.data.word_vectors import lookup, vector_key
from lmlab.errors import ConfigError
from lmlab.models.feature_heads import FEATURE_TASKS, WORD_POOLS
from lmlab.models.heads import TaskModel, TaskSpec, build_task_model
from lmlab.models.registry import build_from_config, config_fields, family_of, spec_of
from lmlab.tasks import features

NO_ENCODER = "none"


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """The --features options of `lmlab finetune` (FinetuneOptions holds their help)."""

    word_vectors: str | None = None
    word_pool: str = "first"
    mix_layer_norm: bool = False
    mix_l2: float = 0.001
    lstm_dim: int = 100
    lstm_layers: int = 1
    lowercase: bool = False

    def check(self) -> None:
        if self.word_pool not in WORD_POOLS:
            raise ConfigError(f"--word-pool must be one of {', '.join(WORD_POOLS)}, got {self.word_pool!r}")
        if not self.mix_l2 >= 0:
            raise ConfigError(f"--mix-l2 must be >= 0, got {self.mix_l2}")
        for name, value in (("--lstm-dim", self.lstm_dim), ("--lstm-layers", self.lstm_layers)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def load_encoder(model_dir, from_scratch: bool, seed: int):
    """(frozen network or None, its tokenizer, its kind, its family or None) of MODEL_DIR."""
    if str(model_dir) == NO_ENCODER:
        return None, None, None, None
    model, tokenizer = load(model_dir)
    if isinstance(model, TaskModel):
        model = model.backbone
        if model is None:
            raise ConfigError(f"{model_dir} is a task model without an encoder; pass `none` for word "
                              f"vectors alone")
    family = spec_of(model)
    if "scalar_mix" not in family.readers:
        raise ConfigError(f"{model_dir}: {family.name} models declare no scalar_mix reader; --features "
                          f"needs a model whose layers can be mixed (readers: {', '.join(family.readers)})")
    if tokenizer is None:
        raise ConfigError(f"{model_dir}: the model dir has no tokenizer; fine-tuning needs one")
    if from_scratch:  # the same network with random weights, frozen: the random-features baseline
        torch.manual_seed(seed)
        model = build_from_config(family_of(model), config_fields(model))
    return model, tokenizer, family.kind, family.name


def word_table(source: str | None, words: Counter) -> tuple[list[str], np.ndarray, dict, bool]:
    """(the keys of the words that have a vector, their vectors (n, D), the OOV report, whether the
    keys are lowercased) for `words` (word -> count over the task data); no source: nothing, D = 0."""
    if source is None:
        return [], np.zeros((0, 0), np.float32), {}, False
    found = lookup(source, words)
    keys, rows, missing = {}, [], Counter()
    for w, vec, ok in zip(found.words, found.vectors, found.found, strict=True):
        key = vector_key(w, found.lowercase)
        if not ok:
            missing[key] += words[w]
        elif key not in keys:
            keys[key] = len(rows)
            rows.append(vec)
    missing = Counter({k: n for k, n in missing.items() if k not in keys})
    total = sum(words.values())
    report = {"types": len(missing), "tokens": sum(missing.values()),
              "token_share": round(sum(missing.values()) / max(1, total), 4),
              "most_frequent": [w for w, _ in missing.most_common(10)]}
    table = np.stack(rows) if rows else np.zeros((0, found.dim), np.float32)
    return list(keys), table, report, found.lowercase


def feature_model(model_dir, task: str, train_ex, dev_ex, labels, regression: bool, settings: FeatureSettings,
                  *, max_len: int, dropout: float, extra: dict, from_scratch: bool, seed: int):
    """(TaskModel, tokenizer, spec, family name or None, OOV report) for `lmlab finetune --features`."""
    settings.check()
    if task not in FEATURE_TASKS:
        raise ConfigError(f"--features has task models for {', '.join(FEATURE_TASKS)}, not {task!r}")
    backbone, tokenizer, kind, family = load_encoder(model_dir, from_scratch, seed)
    if backbone is None and settings.word_vectors is None:
        raise ConfigError("MODEL_DIR none (no encoder) needs --word-vectors")
    probe_spec = TaskSpec(task, labels=labels, regression=regression, reader="scalar_mix")
    counts = Counter(w for ex in (train_ex, dev_ex) for words in features.text_words(ex, probe_spec)
                     for w in words)
    keys, table, oov, uncased = word_table(settings.word_vectors, counts)
    n_states, width = features.probe_encoder(backbone, tokenizer, kind) if backbone is not None else (0, 0)
    source = settings.word_vectors  # kept as provenance only: a file's name, never its path
    named = None if source is None else source if source.startswith("builtin:") else Path(source).name
    extra = {**extra, "words": keys, "vector_dim": int(table.shape[1]), "vectors_lowercase": uncased,
             "vectors": named, "encoder_kind": kind, "mix_layers": n_states, "encoder_dim": width,
             **{k: v for k, v in dataclasses.asdict(settings).items() if k != "word_vectors"}}
    limit = max_len if backbone is None else min(max_len, backbone.config.max_seq_len)
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    spec = TaskSpec(name=task, labels=labels, regression=regression, lm_coef=0.0, max_len=limit,
                    reader="scalar_mix", pad_id=pad or 0, dropout=dropout, extra=extra)
    torch.manual_seed(seed)
    model = build_task_model(backbone, spec)
    if len(keys):
        with torch.no_grad():
            model.head.words.vectors[1:] = torch.from_numpy(table)
    return model, tokenizer, spec, family, oov

