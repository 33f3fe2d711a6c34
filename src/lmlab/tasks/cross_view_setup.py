"""`lmlab finetune --task tag --cvt`: cross-view training of a tagger (Clark et al. 2018; docs/cvt.md).

MODEL_DIR `none`: a new tagger of the family that declares kind `tagger` with the `directions` reader
(the CVT tagger, `--cvt-preset`), its word vocabulary made from the data: every word of the labeled
training sentences, the unlabeled words seen at least twice (the 50,000 most frequent), and with
`--word-vectors` the dev words that have a vector, whose embeddings start from those vectors (the
paper starts from GloVe). Otherwise MODEL_DIR is a pretrained encoder whose family declares the
`directions` reader (ELMo): the encoder is fine-tuned whole, under CVT's prediction modules
(`lmlab.models.cvt.CrossViewHead`), so pretraining and CVT combine.

Training (`lmlab.train.loop`, AdamW, linear warmup and decay, clipping at 1): labeled and unlabeled
batches in turn (`lmlab.tasks.cross_view.CrossViewBatches`) under `lmlab.objectives.cvt`; without
--unlabeled the same tagger trains on labeled batches alone (the supervised baseline). Every dev
evaluation reads the moving average of the weights, and the saved model holds it. --also-task adds
a second tag set on the same encoder (multi-task CVT, §3.4): `builtin:NAME` (its train and dev parts)
or `TRAIN_FILE,DEV_FILE`; its dev metrics are prefixed by its name.

Steps: --steps, or --epochs passes over the main tag set's training sentences, each labeled batch of
every tag set followed by an unlabeled one (so twice the labeled steps with --unlabeled).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.checkpoints.atomic import write_bytes_atomic
from lmlab.checkpoints.io import load, save
from lmlab.data.corpora import BUILTIN_PREFIX, is_builtin
from lmlab.data.word_vectors import lookup
from lmlab.errors import ConfigError, DataError
from lmlab.models.heads import TaskModel, TaskSpec, build_task_model
from lmlab.models.registry import (
    FAMILIES,
    build,
    build_from_config,
    config_fields,
    family_of,
    family_spec,
    spec_of,
)
from lmlab.objectives.cvt import CrossViewObjective
from lmlab.tasks import cross_view, tag
from lmlab.tasks.features import probe_encoder
from lmlab.tasks.finetune import EpochBatches
from lmlab.tokenizers.word_chars import SPECIALS, WordCharTokenizer
from lmlab.train.config import TrainConfig
from lmlab.train.loop import train as run_training

READER = "directions"
MAX_WORDS = 50000  # the vocabulary of a new tagger, specials included
REPORT = "report.json"


@dataclass(frozen=True)
class CrossViewSettings:
    """The --cvt options of `lmlab finetune` (FinetuneOptions holds their help)."""

    unlabeled: str | None = None
    preset: str = "small"
    ema_decay: float = 0.998
    aux_weight: float = 1.0
    also_task: str | None = None
    word_vectors: str | None = None
    lowercase: bool = False


@dataclass
class TagSet:
    name: str
    train: list
    dev: list
    labels: tuple[str, ...]
    scheme: str


def tag_sets(train: str, dev: str, also_task: str | None, options: dict) -> list[TagSet]:
    """The main tag set (--train/--dev, --tag-scheme) and the --also-task one."""
    sets = []
    sources = [(str(train), str(dev), options)]
    if also_task:
        if is_builtin(also_task):
            sources.append((also_task, also_task, {}))
        elif also_task.count(",") == 1:
            sources.append((*also_task.split(","), {}))
        else:
            raise ConfigError(f"--also-task: expected builtin:NAME or TRAIN_FILE,DEV_FILE, got {also_task!r}")
    for i, (tr, dv, opts) in enumerate(sources):
        train_ex, dev_ex = tag.read(tr, "train", opts), tag.read(dv, "dev", opts)
        labels, _ = tag.label_set(train_ex, opts)
        name = "main" if i == 0 else tr[len(BUILTIN_PREFIX):] if is_builtin(tr) else Path(tr).stem
        sets.append(TagSet(name, train_ex, dev_ex, labels, opts.get("tag_scheme") or "auto"))
    return sets


def own_tagger_family() -> str:
    """The family that declares kind `tagger` with the `directions` reader (asked, never named)."""
    names = [n for n, f in FAMILIES.items() if f.kind == "tagger" and READER in f.readers]
    if not names:
        raise ConfigError("no registered family is a tagger with per-direction states")
    return names[0]


def vocabulary(sets: list[TagSet], lines: list[str], settings: CrossViewSettings) -> WordCharTokenizer:
    """Labeled training words, unlabeled words seen twice, dev words with a vector (module docstring)."""
    def norm(w: str) -> str:
        return w.lower() if settings.lowercase else w

    labeled = Counter(norm(w) for s in sets for sent in s.train for w in sent.words)
    unlabeled = Counter(norm(w) for line in lines for w in line.split())
    counts = labeled + Counter({w: n for w, n in unlabeled.items() if n >= 2})
    if settings.word_vectors is not None:
        dev = sorted({norm(w) for s in sets for sent in s.dev for w in sent.words} - set(counts))
        found = lookup(settings.word_vectors, dev)
        counts.update({w: 1 for w, ok in zip(found.words, found.found, strict=True) if ok})
    for special in SPECIALS:
        counts.pop(special, None)
    words = sorted(counts, key=lambda w: (-counts[w], w))[:MAX_WORDS - len(SPECIALS)]
    return WordCharTokenizer([*SPECIALS, *words], max_chars=family_spec(own_tagger_family())
                             .presets[settings.preset].get("max_chars", 30))


def new_tagger(sets: list[TagSet], lines: list[str], settings: CrossViewSettings, seed: int):
    """(a new CVT tagger, its tokenizer, the word-vector report or None)."""
    family = own_tagger_family()
    if settings.preset not in family_spec(family).presets:
        raise ConfigError(f"--cvt-preset {settings.preset!r} does not exist; expected one of "
                          f"{', '.join(family_spec(family).presets)}")
    tokenizer = vocabulary(sets, lines, settings)
    words = [tokenizer.id_to_token(i) for i in range(len(SPECIALS), tokenizer.vocab_size)]
    found = lookup(settings.word_vectors, words) if settings.word_vectors is not None else None
    overrides = {"vocab_size": tokenizer.vocab_size, "n_labels": tuple(len(s.labels) for s in sets),
                 "max_chars": tokenizer.max_chars}
    if found is not None:
        overrides["d_word"] = found.dim
    torch.manual_seed(seed)
    model = build(family, settings.preset, **overrides)
    if found is None:
        return model, tokenizer, None
    rows = [i + len(SPECIALS) for i, ok in enumerate(found.found) if ok]
    model.init_word_vectors(rows, torch.as_tensor(found.vectors[found.found]))
    return model, tokenizer, {"words": len(words), "with_vector": len(rows)}


def pretrained_encoder(model_dir, from_scratch: bool, seed: int):
    """(the encoder of MODEL_DIR, its tokenizer): a family declaring `directions`, of kind bilm."""
    model, tokenizer = load(model_dir)
    if isinstance(model, TaskModel):
        model = model.backbone
    family = spec_of(model)
    if READER not in family.readers:
        raise ConfigError(f"{model_dir}: {family.name} models declare no per-direction states (readers: "
                          f"{', '.join(family.readers)}); --cvt needs the {READER} reader, or MODEL_DIR none")
    if family.kind != "bilm":
        raise ConfigError(f"{model_dir}: a trained {family.kind} continues with --resume in its run dir; "
                          f"--cvt starts from a pretrained encoder (a bilm) or MODEL_DIR none")
    if tokenizer is None:
        raise ConfigError(f"{model_dir}: the model dir has no tokenizer; fine-tuning needs one")
    if from_scratch:
        torch.manual_seed(seed)
        model = build_from_config(family_of(model), config_fields(model))
    return model, tokenizer


def build_model(model_dir, sets, lines, settings: CrossViewSettings, *, max_len: int, dropout: float,
                from_scratch: bool, seed: int):
    """(TaskModel, tokenizer, spec, family name, word-vector report)."""
    extra = {"tasks": [{"name": s.name, "labels": list(s.labels), "tag_scheme": s.scheme} for s in sets],
             "tag_scheme": sets[0].scheme, "lowercase": settings.lowercase}
    vectors = None
    if str(model_dir) == "none":
        backbone, tokenizer, vectors = new_tagger(sets, lines, settings, seed)
        extra["encoder_kind"] = "tagger"
    else:
        backbone, tokenizer = pretrained_encoder(model_dir, from_scratch, seed)
        n_states, width = probe_encoder(backbone, tokenizer, "bilm")
        d_pm = family_spec(own_tagger_family()).presets[settings.preset].get("d_pm", 512)
        extra.update(encoder_kind="bilm", encoder_layers=n_states - 1, encoder_dim=width // 2, d_pm=d_pm)
    spec = TaskSpec(name="tag", labels=sets[0].labels, lm_coef=0.0, max_len=max_len, reader=READER,
                    dropout=dropout, extra=extra)
    torch.manual_seed(seed)
    return build_task_model(backbone, spec), tokenizer, spec, family_of(backbone), vectors


def check_options(settings: CrossViewSettings, task: str, features: bool) -> None:
    if task != "tag":
        raise ConfigError(f"--cvt trains taggers: pass --task tag, not {task!r}")
    if features:
        raise ConfigError("--cvt and --features are two ways to use an encoder; pass one of them")
    if not 0 <= settings.ema_decay < 1:
        raise ConfigError(f"--ema-decay must be in [0, 1), got {settings.ema_decay}")
    if not settings.aux_weight >= 0:
        raise ConfigError(f"--aux-weight must be >= 0, got {settings.aux_weight}")


@dataclass
class Run:
    """What a cross-view run trains on: the stream, the dev examples, the step counts."""

    batches: cross_view.CrossViewBatches
    dev: list
    n_unlabeled: int
    steps: int
    per_epoch: int  # optimizer steps per pass over the main tag set


def make_run(sets: list[TagSet], lines: list[str], tokenizer, spec: TaskSpec, *, batch_size: int, seed: int,
             epochs: int, steps: int | None, truncate: bool) -> Run:
    """Features of every tag set (errors before any training) and the alternating batch stream."""
    train_f = [cross_view.featurize(s.train, tokenizer, spec, k, truncate) for k, s in enumerate(sets)]
    dev_f = [cross_view.featurize(s.dev, tokenizer, spec, k, truncate) for k, s in enumerate(sets)]
    labeled = [EpochBatches(f, min(batch_size, len(f)), seed + k, lambda e: cross_view.collate(e, spec))
               for k, f in enumerate(train_f)]
    unlabeled = (EpochBatches(lines, batch_size, seed, cross_view.UnlabeledCollate(tokenizer, spec))
                 if lines else None)
    period = len(sets) * (2 if unlabeled is not None else 1)  # optimizer steps per main-set batch
    per_epoch = len(train_f[0]) // labeled[0].batch_size * period
    return Run(cross_view.CrossViewBatches(labeled, unlabeled), dev_f, len(lines),
               epochs * per_epoch if steps is None else steps, per_epoch)


def cross_view_finetune(model_dir, task: str, train: str, dev: str, out, settings: CrossViewSettings, *,
                        options: dict, cfg: dict, device: torch.device, batch_size: int, epochs: int,
                        steps: int | None, warmup_ratio: float, eval_every: int | None,
                        save_every: int | None, max_len: int, dropout: float, from_scratch: bool,
                        truncate: bool, resume: bool, eval_batch_size: int = 64) -> dict:
    """Train and save; returns (and writes) the report. `cfg`: TrainConfig fields (lr, seed, ...)."""
    sets = tag_sets(train, dev, settings.also_task, options)
    lines = cross_view.read_unlabeled(settings.unlabeled) if settings.unlabeled is not None else []
    model, tokenizer, spec, family, vectors = build_model(model_dir, sets, lines, settings, max_len=max_len,
                                                          dropout=dropout, from_scratch=from_scratch,
                                                          seed=cfg["seed"])
    run = make_run(sets, lines, tokenizer, spec, batch_size=batch_size, seed=cfg["seed"], epochs=epochs,
                   steps=steps, truncate=truncate)
    if run.steps < 1:
        raise DataError(f"{train}: no full batch of training sentences")
    config = TrainConfig(**cfg, steps=run.steps, batch_size=batch_size, seq_len=max_len, schedule="linear",
                         warmup=round(warmup_ratio * run.steps), min_lr_ratio=0.0, eval_batches=1,
                         eval_every=run.per_epoch if eval_every is None else eval_every,
                         save_every=run.per_epoch if save_every is None else save_every)
    model = model.to(device)
    objective = CrossViewObjective(model, settings.ema_decay, settings.aux_weight)

    def evaluate(m):
        objective.finish_step()  # the average includes the step that just ran
        with objective.module.applied(m):
            return cross_view.evaluate(m, run.dev, spec, eval_batch_size)

    result = run_training(model, tokenizer, config, out, run.batches, evaluate=evaluate, objective=objective,
                          resume=resume)
    objective.finish_step()
    objective.module.copy_to(model)  # the saved model is the average (what was evaluated)
    save(model, tokenizer, out)
    report = {"task": task, "model": str(model_dir), "family": family, "from_scratch": from_scratch,
              "train": str(train), "dev": str(dev), "n_train": len(sets[0].train), "n_dev": len(sets[0].dev),
              "reader": READER, "labels": list(sets[0].labels), "regression": False, "lm_coef": 0.0,
              "epochs": epochs, "steps": run.steps, "batch_size": run.batches.labeled[0].batch_size,
              "lr": config.lr, "warmup_steps": config.warmup, "seed": config.seed, "train_loss": result.loss,
              "dev_metrics": result.val_metrics, "wall_s": round(result.wall_s, 1),
              "cross_view": {"unlabeled": settings.unlabeled, "n_unlabeled": run.n_unlabeled,
                             "tag_sets": [s.name for s in sets], "preset": settings.preset,
                             "encoder_kind": spec.extra["encoder_kind"], "ema_decay": settings.ema_decay,
                             "aux_weight": settings.aux_weight, "vocab_size": tokenizer.vocab_size,
                             "word_vectors": vectors, "lowercase": settings.lowercase}}
    write_bytes_atomic(Path(out) / REPORT, json.dumps(report, indent=2).encode())
    return report


def evaluate_tagger(model: TaskModel, tokenizer, data: str, split: str = "dev", batch_size: int = 64,
                    truncate: bool = False, word_column: int | None = None,
                    label_column: str | None = None) -> dict:
    """`lmlab evaluate --task tag` of a saved cross-view tagger: its first tag set on `data`."""
    options = {"word_column": word_column, "label_column": label_column}
    examples = cross_view.featurize(tag.read(str(data), split, options), tokenizer, model.spec, 0, truncate)
    return cross_view.evaluate(model, [examples], model.spec, batch_size)
