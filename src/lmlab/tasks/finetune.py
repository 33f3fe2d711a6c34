"""`lmlab finetune` and `lmlab evaluate --task`: a saved model + task data -> a fine-tuned TaskModel.

Recipe (GPT §4.1, BERT §4): AdamW (weight decay 0.01 on matrices, betas 0.9/0.999), a linear
warmup over `warmup_ratio` of the steps then a linear decay to 0, gradient clipping at 1.0,
dropout 0.1 on the head input, 3 epochs of batch 32; GPT's lr is 6.25e-5 and λ = 0.5, BERT
fine-tunes with lr in {2, 3, 5}e-5 (pass --lr). The loop, checkpoints and exact resume are
lmlab.train.loop's: the run dir gets metrics.jsonl (val_* = dev metrics at each evaluation),
checkpoints/step-N/, the final TaskModel and report.json (final dev metrics).

`--recipe ulmfit` (Howard & Ruder 2018, §3.2-3.3) fine-tunes any family with ULMFiT's schedule
instead: slanted triangular rates (cut_frac 0.1, ratio 32; lmlab.train.schedule), discriminative
rates (÷2.6 per layer group, the head on top), gradual unfreezing (the top group in the first epoch,
one more group every epoch, the triangle restarting with each), Adam β = (0.7, 0.99), base rate 0.01
(classify) or 0.004 (lm). --schedule, --discriminative and --[no-]gradual-unfreezing override one
piece each (the ablations of §5). Task "lm" (lmlab.tasks.lm) is ULMFiT's second stage.

Data order: each epoch is a permutation of the training features drawn from (seed, epoch); a
batch is the next `batch_size` of them and the epoch's remainder (< batch_size) is skipped, so a
step always has a full batch. The sampler state is (epoch, index): resuming continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmlab.checkpoints.atomic import finite_json, write_bytes_atomic
from lmlab.checkpoints.io import load
from lmlab.devices import resolve_device
from lmlab.errors import ConfigError
from lmlab.models.heads import TaskModel, TaskSpec, build_task_model
from lmlab.models.registry import build_from_config, config_fields, family_of, family_spec
from lmlab.options import option
from lmlab.paths import holds_dir
from lmlab.tasks import features as feature_tasks
from lmlab.tasks.base import add_target_words, add_task_tokens, default_reader, lm_aux_loss
from lmlab.tasks.feature_setup import FeatureSettings, feature_model
from lmlab.tasks.registry import task_module
from lmlab.train.config import TrainConfig
from lmlab.train.loop import train as run_training
from lmlab.train.recipes import FINETUNE_RECIPES
from lmlab.train.state import check_run_dir

REPORT = "report.json"


@dataclass(frozen=True)
class FinetuneOptions:
    """`lmlab finetune`: fine-tune a saved model on task data; --out becomes a run dir and a fine-tuned
    model dir (metrics.jsonl with val_* dev metrics, checkpoints/, report.json). GPT-style models get
    GPT's <start>/<delim>/<extract> inputs and the auxiliary LM loss; BERT reads the pooled [CLS] state."""

    model_dir: str = option(help="a pretrained lmlab model dir (with its tokenizer); with --features, `none` "
                                 "= no model, the word vectors alone", positional=True)
    task: str = option(help="classify (one text), pair (two texts), tag (CoNLL token labels), qa (SQuAD "
                            "spans), choice (context + options)")
    train: str = option(help="JSONL or GLUE TSV file, or builtin:NAME (lmlab data list)")
    dev: str = option(help="the same for the dev set (metrics at each evaluation)")
    out: str = option(help="run dir to write")
    epochs: int = option(3, "passes over the training data")
    steps: int | None = option(None, "optimizer steps instead of --epochs")
    lr: float | None = option(None, "peak learning rate (default: GPT's 6.25e-5; --recipe ulmfit: 0.01, "
                                    "lm 0.004; 1e-3 with --features, whose task model starts from scratch)")
    batch_size: int = option(32, "examples per step")
    max_len: int = option(128, "longest input in tokens, task tokens included, capped at the model's context")
    lm_coef: float = option(0.5, "λ of the auxiliary LM loss, GPT-style models only (GPT's; 0 = off)")
    warmup_ratio: float = option(0.1, "linear warmup share of the steps")
    weight_decay: float = option(0.01, "AdamW weight decay")
    dropout: float = option(0.1, "dropout on the head input")
    pair_mode: str = option("concat", "pair inputs for GPT-style models: concat, or similarity (both orders "
                                      "added; symmetric)", choices=("concat", "similarity"))
    regression: bool | None = option(None, "numeric labels, MSE (default: auto-detected)")
    eval_every: int | None = option(None, "dev evaluation every N steps (default: each epoch)")
    save_every: int | None = option(None, "checkpoint every N steps (default: each epoch)")
    log_every: int = option(10, "write metrics.jsonl every N steps")
    seed: int = option(0, "seed for the head, data order and dropout")
    from_scratch: bool = option(False, "same architecture with random weights (the no-pretraining baseline)")
    resume: bool = option(False, "continue from the newest valid checkpoint in --out")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = option(True, "no progress bar", flag="no-progress")
    text_column: str | None = option(None, "JSONL field / TSV header of the text (default: text, or the GLUE "
                                           "layout the TSV header shows)")
    text_b_column: str | None = option(None, "the second text of a pair (default: text_b or the GLUE layout)")
    label_column: str | None = option(None, "the label (default: label, or the GLUE layout; tag: a column "
                                            "index, default -1 = last)")
    truncate: bool = option(False, "cut texts longer than --max-len longest-first (default: an error)")
    word_column: int | None = option(None, "tag: column index of the word (default 0)")
    tag_scheme: str = option("auto", "tag: rewrite chunk labels in this scheme before training (auto: as "
                                     "written)", choices=("auto", "bio", "iob1", "bioes"))
    doc_stride: int = option(128, "qa: tokens between the starts of context windows")
    max_query_len: int = option(64, "qa: question tokens kept")
    null_threshold: float = option(0.0, "qa v2.0: answer \"\" when null score - best span score exceeds this")
    version_2: bool | None = option(None, "qa: allow \"no answer\" (SQuAD v2.0; default: from the training "
                                          "data)")
    recipe: str = option("default", "default (GPT/BERT: warmup + linear decay) or ulmfit (slanted "
                                    "triangular, discriminative rates, gradual unfreezing; any family)")
    schedule: str | None = option(None, "override the recipe's schedule (default linear; ulmfit stlr)",
                                  choices=("linear", "cosine", "constant", "stlr"))
    discriminative: float | None = option(None, "override the recipe's lr factor per layer group (default 1; "
                                                "ulmfit 2.6)")
    gradual_unfreezing: bool | None = option(None, "override the recipe's gradual unfreezing, one more layer "
                                                   "group per epoch (default off; ulmfit on, not for lm)")
    bptt: int = option(70, "concat_pool and lm: tokens per chunk / per LM training step (ULMFiT's 70)")
    pool_len: int = option(1400, "concat_pool: pool over each document's last N tokens (fastai's 20 x bptt)")
    extend_vocab: int = option(0, "words tokenizers: add up to N words of the training text (seen twice) the "
                                  "vocabulary lacks, rows at the mean embedding (ULMFiT)")
    features: bool = option(False, "classify/pair/tag the paper's feature-based way (ELMo §3.3): "
                                   "MODEL_DIR stays frozen; a biLSTM task model (max-pooled for classify) "
                                   "reads a learned scalar mix of its layers per word, beside "
                                   "--word-vectors. MODEL_DIR `none`: the word vectors alone")
    word_vectors: str | None = option(None, "--features: fixed word vectors beside the mix, "
                                            "builtin:glove-6b-50d or a GloVe text file (words without a "
                                            "vector get zeros, counted)")
    word_pool: str = option("first", "--features: a word's state from its first sub-token or their mean",
                            choices=("first", "mean"))
    mix_layer_norm: bool = option(False, "--features: layer-normalise each layer before the mix (ELMo §3.2)")
    mix_l2: float = option(0.001, "--features: λ of the L2 penalty on the mix weights s (ELMo §5.2)")
    lstm_dim: int = option(100, "--features: the task model's biLSTM units per direction")
    lstm_layers: int = option(1, "--features: the task model's biLSTM layers")
    lowercase: bool = option(False, "--features, --cvt: the encoder reads the words lowercased (pretrained "
                                    "on lowercased text, e.g. builtin:ptb)")
    cvt: bool = option(False, "tag with cross-view training (Clark et al. 2018, docs/cvt.md): MODEL_DIR "
                              "`none` = a new CVT tagger (word embeddings + char CNN + 2-layer biLSTM; "
                              "--word-vectors start its embeddings), or a pretrained encoder with "
                              "per-direction states (ELMo), fine-tuned under CVT's prediction modules")
    unlabeled: str | None = option(None, "--cvt: unlabeled text (a file, one sentence per line) or "
                                         "builtin:NAME; its batches alternate with labeled ones (without it: "
                                         "supervised only)")
    cvt_preset: str = option("small", "--cvt with MODEL_DIR none: the tagger's size (tiny, small, base)")
    ema_decay: float = option(0.998, "--cvt: decay of the weights' moving average that is evaluated and "
                                     "saved (0 = the trained weights themselves)")
    aux_weight: float = option(1.0, "--cvt: weight of the auxiliary modules' cross-entropy on labeled "
                                    "batches (0 = the primary module alone)")
    also_task: str | None = option(None, "--cvt: a second tag set on the same encoder (multi-task CVT): "
                                         "builtin:NAME or TRAIN_FILE,DEV_FILE")


class EpochBatches:
    """Shuffled full batches of `features`, epoch after epoch, collated; state (epoch, index)."""

    def __init__(self, features: list, batch_size: int, seed: int, collate):
        self.features, self.batch_size, self.seed, self.collate = features, batch_size, seed, collate
        self.epoch, self.index = 0, 0

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.features))

    def __iter__(self):
        while True:
            order = self.order(self.epoch)
            while self.index + self.batch_size <= len(order):
                chosen = order[self.index:self.index + self.batch_size]
                self.index += self.batch_size
                yield self.collate([self.features[i] for i in chosen])
            self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def make_objective(module, spec: TaskSpec):
    """loss = task loss + λ·L_LM (GPT §3.2, eq. 5; the extract_token reader only, λ = spec.lm_coef)."""

    def objective(net, batch):
        out = net(**batch)
        loss = module.loss(out, batch, spec)
        if out.lm_nll is not None:
            loss = loss + spec.lm_coef * lm_aux_loss(out, batch)
        return loss

    return objective


def _backbone(model_dir, from_scratch: bool, seed: int):
    """(backbone, tokenizer, family) from a model dir; a TaskModel dir gives its backbone."""
    model, tokenizer = load(model_dir)
    if isinstance(model, TaskModel):
        model = model.backbone
    if tokenizer is None:
        raise ConfigError(f"{model_dir}: the model dir has no tokenizer; fine-tuning needs one")
    family = family_of(model)
    torch.manual_seed(seed)
    if from_scratch:  # the same architecture, random weights: the transfer baseline
        model = build_from_config(family, config_fields(model))
    return model, tokenizer, family


def _task_model(model_dir, from_scratch, seed, task, labels, regression, lm_coef, pair_mode, max_len, dropout,
                extra, target_texts: list[str], extend_vocab: int, bptt: int, pool_len: int):
    """(TaskModel, tokenizer, spec, family, new words): a pretrained model fine-tuned whole (pooled_cls,
    extract_token, concat_pool reading `bptt`-token chunks and pooling the last `pool_len`); with
    extend_vocab, up to that many words of target_texts join a words vocabulary (ULMFiT)."""
    backbone, tokenizer, family = _backbone(model_dir, from_scratch, seed)
    reader = default_reader(family_spec(family))
    if reader == "scalar_mix":
        raise ConfigError(f"{model_dir}: {family} models are read through a frozen scalar mix; "
                          f"pass --features")
    if reader == "directions":
        raise ConfigError(f"{model_dir}: {family} models are trained per direction; pass --cvt")
    added = add_target_words(backbone, tokenizer, target_texts, extend_vocab)
    ids = add_task_tokens(backbone, tokenizer) if reader == "extract_token" else {}
    pad = tokenizer.eos_token_id if reader == "extract_token" else getattr(tokenizer, "pad_token_id", None)
    if reader == "concat_pool":
        extra = {**extra, "bptt": bptt, "pool_len": pool_len}
    spec = TaskSpec(name=task, labels=labels, regression=regression, lm_coef=lm_coef, pair_mode=pair_mode,
                    max_len=min(max_len, backbone.config.max_seq_len), reader=reader, pad_id=pad or 0,
                    dropout=dropout, extra=extra, **ids)
    return build_task_model(backbone, spec), tokenizer, spec, family, added


def _check(epochs, batch_size, max_len, warmup_ratio, lr, lm_coef, steps, log_every) -> None:
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--max-len", max_len),
                        ("--steps", 1 if steps is None else steps), ("--log-every", log_every)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not 0 <= warmup_ratio < 1:
        raise ConfigError(f"--warmup-ratio must be in [0, 1), got {warmup_ratio}")
    if not lr > 0:
        raise ConfigError(f"--lr must be > 0, got {lr}")
    if not lm_coef >= 0:
        raise ConfigError(f"--lm-coef must be >= 0, got {lm_coef}")


@holds_dir("finetune")  # one process per run dir (lmlab.paths.DirLock)
def finetune(model_dir: str | Path, task: str, train: str, dev: str, out: str | Path, *,
             epochs: int = 3, lr: float | None = None, batch_size: int = 32, max_len: int = 128,
             warmup_ratio: float = 0.1, lm_coef: float = 0.5, seed: int = 0, from_scratch: bool = False,
             truncate: bool = False, resume: bool = False, device: str = "auto",
             pair_mode: str = "concat", regression: bool | None = None, dropout: float = 0.1,
             weight_decay: float = 0.01, text_column: str | None = None, text_b_column: str | None = None,
             label_column: str | None = None, steps: int | None = None, eval_every: int | None = None,
             save_every: int | None = None, log_every: int = 10, eval_batch_size: int = 64,
             progress: bool = True, word_column: int | None = None, tag_scheme: str = "auto",
             doc_stride: int = 128, max_query_len: int = 64, null_threshold: float = 0.0,
             version_2: bool | None = None, features: bool = False, word_vectors: str | None = None,
             word_pool: str = "first", mix_layer_norm: bool = False, mix_l2: float = 0.001,
             lstm_dim: int = 100, lstm_layers: int = 1, lowercase: bool = False, recipe: str = "default",
             schedule: str | None = None, discriminative: float | None = None,
             gradual_unfreezing: bool | None = None, bptt: int = 70, pool_len: int = 1400,
             extend_vocab: int = 0, cvt: bool = False, unlabeled: str | None = None,
             cvt_preset: str = "small", ema_decay: float = 0.998, aux_weight: float = 1.0,
             also_task: str | None = None) -> dict:
    """Fine-tune the model in `model_dir` on `task`; returns (and writes) the report dict.

    steps (default epochs × full batches per epoch), eval_every and save_every (default: once an
    epoch) are in optimizer steps. `recipe` (lmlab.train.recipes.FINETUNE_RECIPES) and its overrides:
    see the module docstring. features: the frozen model + ScalarMix task model
    (lmlab.tasks.feature_setup), with the word_vectors ... lowercase settings. cvt: cross-view training
    (lmlab.tasks.cross_view_setup) with the unlabeled ... also_task settings, word_vectors and lowercase.
    """
    fresh_model = (features or cvt) and lr is None  # a task model from scratch: 1e-3
    rates = recipe_rates(recipe, task, 1e-3 if fresh_model else lr, schedule, discriminative,
                         gradual_unfreezing)
    lr = rates.pop("lr")
    _check(epochs, batch_size, max_len, warmup_ratio, lr, lm_coef, steps, log_every)
    for name, value in (("--bptt", bptt), ("--pool-len", pool_len), ("--extend-vocab", extend_vocab + 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if extend_vocab and (task not in ("classify", "lm") or features):
        raise ConfigError(f"--extend-vocab applies to tasks classify and lm without --features, not {task}"
                          + (" --features" if features else ""))
    if task == "lm":  # ULMFiT's second stage: the family's own LM objective on the target text
        from lmlab.tasks.lm import finetune_lm

        unfreeze = rates.pop("unfreeze")
        values = dict(batch_size=batch_size, seq_len=bptt, lr=lr, min_lr_ratio=0.0, weight_decay=weight_decay,
                      grad_clip=1.0, seed=seed, log_every=log_every, eval_every=eval_every,
                      save_every=save_every, device=device, progress=progress, **rates)
        return finetune_lm(model_dir, train, dev, out, cfg_values=values, epochs=epochs, steps=steps,
                           extend_vocab=extend_vocab, resume=resume, warmup_ratio=warmup_ratio,
                           unfreeze=unfreeze)
    target = resolve_device(device)  # a bad --device fails before the data is read
    check_run_dir(Path(out), not resume)  # before the data is read (the training loop checks again)
    options = {"task": task, "text_column": text_column, "text_b_column": text_b_column,
               "label_column": label_column, "regression": regression, "word_column": word_column,
               "tag_scheme": tag_scheme, "doc_stride": doc_stride, "max_query_len": max_query_len,
               "null_threshold": null_threshold, "version_2": version_2}
    if cvt:
        from lmlab.tasks import cross_view_setup as cross

        settings = cross.CrossViewSettings(unlabeled, cvt_preset, ema_decay, aux_weight, also_task,
                                           word_vectors, lowercase)
        cross.check_options(settings, task, features)
        cfg = {"lr": lr, "weight_decay": weight_decay, "beta1": 0.9, "beta2": 0.999, "grad_clip": 1.0,
               "seed": seed, "log_every": log_every, "device": device, "progress": progress}
        return cross.cross_view_finetune(
            model_dir, task, train, dev, out, settings, options=options, cfg=cfg, device=target,
            batch_size=batch_size, epochs=epochs, steps=steps, warmup_ratio=warmup_ratio,
            eval_every=eval_every, save_every=save_every, max_len=max_len, dropout=dropout,
            from_scratch=from_scratch, truncate=truncate, resume=resume, eval_batch_size=eval_batch_size)
    module = feature_tasks if features else task_module(task)
    train_ex = module.read(str(train), "train", options)
    dev_ex = module.read(str(dev), "dev", options)
    labels, is_regression = module.label_set(train_ex, options)
    extra, oov, added = _spec_extra(task_module(task), train_ex, options), None, 0
    if features:
        settings = FeatureSettings(word_vectors, word_pool, mix_layer_norm, mix_l2, lstm_dim, lstm_layers,
                                   lowercase)
        model, tokenizer, spec, family, oov = feature_model(
            model_dir, task, train_ex, dev_ex, labels, is_regression, settings, max_len=max_len,
            dropout=dropout, extra=extra, from_scratch=from_scratch, seed=seed)
    else:
        model, tokenizer, spec, family, added = _task_model(
            model_dir, from_scratch, seed, task, labels, is_regression, lm_coef, pair_mode, max_len, dropout,
            extra, [ex.text for ex in train_ex] if extend_vocab else [], extend_vocab, bptt, pool_len)
    reader, lm_coef = spec.reader, spec.lm_coef
    # Features before training: a too-long text or an unseen dev label stops the run at once.
    train_f = module.featurize(train_ex, tokenizer, spec, truncate)
    dev_f = module.featurize(dev_ex, tokenizer, spec, truncate)
    model = model.to(target)

    bs = min(batch_size, len(train_f))
    per_epoch = len(train_f) // bs
    total = epochs * per_epoch if steps is None else steps
    unfreeze = per_epoch if rates.pop("unfreeze") else 0
    warmup = 0 if rates["schedule"] == "stlr" else round(warmup_ratio * total)
    cfg = TrainConfig(steps=total, batch_size=bs, seq_len=spec.max_len, lr=lr, min_lr_ratio=0.0,
                      warmup=warmup, weight_decay=weight_decay, unfreeze_every=unfreeze, **rates,
                      grad_clip=1.0, seed=seed,
                      log_every=min(log_every, total),
                      eval_every=per_epoch if eval_every is None else eval_every, eval_batches=1,
                      save_every=per_epoch if save_every is None else save_every, device=device,
                      progress=progress)
    batches = EpochBatches(train_f, bs, seed, lambda f: module.collate(f, spec))
    result = run_training(model, tokenizer, cfg, out, batches,
                   evaluate=lambda m: module.evaluate(m, dev_f, spec, eval_batch_size),
                   objective=make_objective(module, spec), resume=resume)
    report = {"task": task, "model": str(model_dir), "family": family, "from_scratch": from_scratch,
              "train": str(train), "dev": str(dev), "n_train": len(train_f), "n_dev": len(dev_f),
              "reader": reader, "labels": list(labels), "regression": is_regression, "lm_coef": lm_coef,
              "pair_mode": pair_mode, "epochs": epochs, "steps": total, "batch_size": bs, "lr": lr,
              "warmup_steps": cfg.warmup, "seed": seed, "train_loss": result.loss, "recipe": recipe,
              "schedule": cfg.schedule, "discriminative": cfg.discriminative, "unfreeze_every": unfreeze,
              "new_words": added,
              "dev_metrics": result.val_metrics, "wall_s": round(result.wall_s, 1)}
    if features:
        report["features"] = {k: spec.extra[k] for k in ("vectors", "encoder_kind", "mix_layers", "word_pool",
                                                         "mix_layer_norm", "mix_l2", "lstm_dim", "lowercase")}
        report["oov"] = oov
        report["mix_weights"] = mix_weights(model)
    write_bytes_atomic(Path(out) / REPORT, finite_json(report, indent=2).encode())
    return report


def recipe_rates(recipe: str, task: str, lr: float | None, schedule: str | None, discriminative: float | None,
                 gradual_unfreezing: bool | None) -> dict:
    """{"lr", "schedule", "discriminative", "unfreeze", "beta1", "beta2"} of a fine-tuning recipe
    (lmlab.train.recipes.FINETUNE_RECIPES) with the overrides given (None = the recipe's)."""
    if recipe not in FINETUNE_RECIPES:
        raise ConfigError(f"--recipe must be one of {', '.join(FINETUNE_RECIPES)}, got {recipe!r}")
    r = FINETUNE_RECIPES[recipe]
    unfreeze = (r.unfreeze and task != "lm") if gradual_unfreezing is None else gradual_unfreezing
    return {"lr": lr if lr is not None else r.lr.get(task, r.lr[None]), "schedule": schedule or r.schedule,
            "discriminative": r.discriminative if discriminative is None else discriminative,
            "unfreeze": bool(unfreeze), "beta1": r.betas[0], "beta2": r.betas[1]}


def mix_weights(model: TaskModel) -> list[float] | None:
    """softmax(s) of a feature-based model's ScalarMix, bottom layer first (None without a mix)."""
    mix = model.head.words.mix if model.spec.reader == "scalar_mix" else None
    return None if mix is None else [round(float(w), 4) for w in mix.weights().detach()]


def _spec_extra(module, train_ex, options: dict) -> dict:
    """The task's own saved options (TaskSpec.extra): tag_scheme (tag), windowing and answer options (qa)."""
    make = getattr(module, "spec_extra", None)
    return make(train_ex, options) if make is not None else {}


def evaluate_task(model_dir: str | Path, task: str, data: str, split: str = "dev", batch_size: int = 64,
                  device: str = "cpu", truncate: bool = False, text_column: str | None = None,
                  text_b_column: str | None = None, label_column: str | None = None,
                  word_column: int | None = None, null_threshold: float | None = None) -> dict:
    """Metrics of the fine-tuned model in `model_dir` on `data` (a built-in's `split` part).

    The zero-shot tasks (lambada, cloze, summarize, translate) score a plain causal LM instead:
    they go to lmlab.eval.zeroshot.zeroshot_command with its defaults."""
    from lmlab.eval.zeroshot import ZEROSHOT_TASKS, zeroshot_command

    if task in ZEROSHOT_TASKS:
        return zeroshot_command(model_dir, task, data, device=device, batch_size=batch_size)
    model, tokenizer = load(model_dir, device=resolve_device(device))
    if not isinstance(model, TaskModel):
        raise ConfigError(f"{model_dir} is not a fine-tuned model (its config.json has no \"task\"); "
                          f"run lmlab finetune first")
    spec = model.spec
    if task != spec.name:
        raise ConfigError(f"{model_dir} was fine-tuned for task {spec.name!r}, not {task!r}")
    if spec.reader == "directions":  # a cross-view tagger
        from lmlab.tasks.cross_view_setup import evaluate_tagger

        return evaluate_tagger(model, tokenizer, data, split, batch_size, truncate, word_column, label_column)
    module = feature_tasks if spec.reader == "scalar_mix" else task_module(spec.name)
    if null_threshold is not None:  # qa v2.0: score the same model with another no-answer threshold
        spec = dataclasses.replace(spec, extra={**spec.extra, "null_threshold": float(null_threshold)})
    options = {"task": spec.name, "text_column": text_column, "text_b_column": text_b_column,
               "label_column": label_column, "regression": spec.regression, "word_column": word_column}
    features = module.featurize(module.read(str(data), split, options), tokenizer, spec, truncate)
    return module.evaluate(model, features, spec, batch_size)


def summary(report: dict) -> str:
    metrics = report["dev_metrics"]
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                      if isinstance(v, float) and math.isfinite(v) and k != "loss")
    how = [f"{report['n_train']} examples"]
    if report.get("reader") == "extract_token":  # the auxiliary LM loss is GPT's only
        how.append(f"lm_coef {report['lm_coef']}")
    if report["from_scratch"]:
        how.append("from scratch")
    if report.get("oov"):
        how.append(f"{report['oov']['types']} word types without a vector")
    if report.get("cross_view", {}).get("unlabeled"):
        how.append(f"cross-view training with {report['cross_view']['n_unlabeled']} unlabeled sentences")
    if report.get("mix_weights"):
        how.append("mix weights " + " ".join(f"{w:.2f}" for w in report["mix_weights"]))
    return (f"fine-tuned {report['task']} for {report['steps']} steps ({', '.join(how)}): "
            f"dev {shown}; {report['wall_s']} s")
