"""Task "lm": fine-tune a pretrained language model on target-domain text (ULMFiT §3.2, the second of
its three stages), before a classifier is fine-tuned on top of it.

The model keeps training as it was pretrained: its family's recipe (lmlab.train.recipes) makes the
batches from the target text and gives the objective (AWD-LSTM: contiguous streams, variable-length
BPTT, the state carried, AR/TAR; GPT: random windows), `--dev` is its validation text. With
`--recipe ulmfit` the rates are ULMFiT's for this stage: slanted triangular (eq. 3) and
discriminative (÷2.6 per layer group), Adam β = (0.7, 0.99), base rate 0.004; no gradual unfreezing
(that is the classifier's, §3.3). The tied embedding is the output layer here, so its group is the
top one in this stage (`output_on_top`). The run dir is a language-model dir: `lmlab finetune DIR --task
classify` reads it next.

New words (`--extend-vocab N`, words tokenizers): up to N words of the target text seen at least
twice that the vocabulary lacks are added, and their embedding rows start at the mean of the
pretrained rows (ULMFiT / fastai's `match_embeds`; the model's `init_token_rows`).
"""

from __future__ import annotations

from pathlib import Path

from lmlab.checkpoints.atomic import finite_json, write_bytes_atomic
from lmlab.checkpoints.io import load
from lmlab.data.corpora import read_splits
from lmlab.data.prepare import prepare_tokens
from lmlab.devices import resolve_device
from lmlab.errors import ConfigError
from lmlab.models.heads import TaskModel
from lmlab.models.registry import family_of
from lmlab.tasks.base import add_target_words
from lmlab.train.config import TrainConfig
from lmlab.train.distributed import Dist
from lmlab.train.loop import train as run_training
from lmlab.train.recipes import recipe_for
from lmlab.train.state import check_run_dir


def output_on_top(model) -> None:
    """Layer groups for fine-tuning a language model: the tied embedding is also the output layer, so
    its group goes on top (highest rate, unfrozen first), as fastai's `awd_lstm_lm_split` and the paper's
    finetune_lm.py order them; a classifier keeps the model's own order (embedding at the bottom)."""
    groups = model.layer_groups()
    model.layer_groups = lambda: [*groups[1:], groups[0]]  # this run's instance only, nothing saved


def finetune_lm(model_dir, train: str, dev: str, out, *, cfg_values: dict, epochs: int, steps: int | None,
                extend_vocab: int = 0, resume: bool = False, warmup_ratio: float = 0.0,
                unfreeze: bool = False) -> dict:
    """Fine-tune the language model in `model_dir` on the text `train` (validation text `dev`).

    cfg_values: the TrainConfig fields finetune chose (lr, batch_size, seq_len = bptt, schedule, ...);
    steps default to `epochs` passes over the target text."""
    resolve_device(cfg_values.get("device", "auto"))
    check_run_dir(Path(out), not resume)
    model, tokenizer = load(model_dir)
    if isinstance(model, TaskModel):
        raise ConfigError(f"{model_dir}: holds a fine-tuned task model; --task lm fine-tunes a language "
                          f"model")
    if tokenizer is None:
        raise ConfigError(f"{model_dir}: the model dir has no tokenizer; fine-tuning needs one")
    family = family_of(model)
    added = add_target_words(model, tokenizer, read_splits(train, ("train",))["train"], extend_vocab)
    output_on_top(model)
    recipe = recipe_for(family)
    options = recipe.make_options(family, {})
    bs, bptt = cfg_values["batch_size"], cfg_values["seq_len"]
    n_tokens = len(prepare_tokens(train, tokenizer, valid=dev, seq_len=bptt, progress=False)["train"])
    per_epoch = max(1, n_tokens // (bs * bptt))
    total = epochs * per_epoch if steps is None else steps
    every = {k: cfg_values.get(k) or per_epoch for k in ("eval_every", "save_every")}
    warmup = 0 if cfg_values["schedule"] == "stlr" else round(warmup_ratio * total)
    cfg = TrainConfig(**{**cfg_values, **every, "steps": total, "warmup": warmup,
                         "unfreeze_every": per_epoch if unfreeze else 0,
                         "log_every": min(cfg_values.get("log_every", 10), total)})
    batches, evaluate = recipe.batches(train, tokenizer, cfg, Dist(), dev, options)
    model.to(resolve_device(cfg.device))
    result = run_training(model, tokenizer, cfg, out, batches, evaluate=evaluate,
                          objective=recipe.make_objective(options, model.config, cfg), resume=resume)
    report = {"task": "lm", "model": str(model_dir), "family": family, "train": str(train), "dev": str(dev),
              "train_tokens": n_tokens, "new_words": added, "steps": total, "batch_size": bs, "bptt": bptt,
              "lr": cfg.lr, "schedule": cfg.schedule, "discriminative": cfg.discriminative,
              "train_loss": result.loss, "dev_metrics": result.val_metrics, "n_train": n_tokens,
              "from_scratch": False, "wall_s": round(result.wall_s, 1)}
    write_bytes_atomic(Path(out) / "report.json", finite_json(report, indent=2).encode())
    return report
