"""`lmlab pretrain`: data source -> tokenizer -> shards -> model -> the training loop -> run dir.

Family-agnostic: what a family needs (batches, objective, evaluator, default sequence length, its
own options) comes from its recipe (lmlab.train.recipes) and its declaration (lmlab.models.registry).
Under torchrun, rank 0 trains the tokenizer and tokenizes the corpus first; the other ranks wait
at a barrier and then read the same files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from lmlab.checkpoints.atomic import finite_json, write_bytes_atomic
from lmlab.data.prepare import build_tokenizer_for, check_vocab
from lmlab.devices import resolve_device
from lmlab.errors import ConfigError
from lmlab.models.registry import DEFAULT_FAMILY, family_spec, make_config
from lmlab.options import option
from lmlab.tokenizers import load_tokenizer
from lmlab.train.config import TrainConfig
from lmlab.train.distributed import (
    Dist,
    barrier,
    collective_failure,
    hold_run_dir,
    init_distributed,
    shutdown,
)
from lmlab.train.loop import RunResult, train
from lmlab.train.recipes import option_fields, recipe_for
from lmlab.train.state import RUN_OUTPUTS, check_run_dir


@dataclass(frozen=True)
class PretrainOptions:
    """`lmlab pretrain`: what to train on what, into which run dir (the training loop's own options are
    TrainConfig's, a family's pretraining options its recipe's). The run dir gets metrics.jsonl, plots/,
    checkpoints/ and the final model; works the same under torchrun (DDP)."""

    model: str = option(DEFAULT_FAMILY, "model family")
    preset: str = option("tiny", "preset of the family, e.g. tiny, gpt2-124m")
    data: str = option("builtin:ptb", "builtin:NAME (see `lmlab data list`), a .txt file, a folder of .txt, "
                                      "or JSONL with {\"text\": ...}")
    valid: str | None = option(None, "a separate validation source (default: the corpus's own split)")
    out: str | None = option(None, "run dir to write (a model dir when done); required")
    tokenizer: str | None = option(None, "tokenizer kind (default: the family's, else the corpus's own)")
    vocab_size: int | None = option(None, "byte_bpe / wordpiece vocabulary size (default 8192) or words cap")
    overrides: dict | None = option(None, "override a model config field, e.g. --set d_model=128 "
                                          "(repeatable)", flag="set", repeat=True, metavar="FIELD=VALUE")
    resume: bool = option(False, "continue from the newest valid checkpoint in --out, with the settings the "
                                 "run was started with (OUT/pretrain.json); flags given now win")


TOKENIZER_DIR = "tokenizer"  # the run's tokenizer, written before step 0 so resume reuses it
# What the last `pretrain` into a run dir was asked to do, so that `lmlab pretrain --out DIR
# --resume` needs no other flag. Left out: how to run rather than what (a resumed run may move
# to another device or drop --compile), and the run dir itself.
SETTINGS_FILE = "pretrain.json"
RUN_FILES = (*RUN_OUTPUTS, SETTINGS_FILE)  # any of them in --out: a run is there
NOT_SAVED = {"out", "resume", "compile", "fsdp", "device", "progress", "collective_timeout"}
SAVED = ({f.name for f in fields(PretrainOptions)} | set(option_fields())
         | {f.name for f in fields(TrainConfig)}) - NOT_SAVED


def train_config(values: dict) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in known and v is not None})


def run_tokenizer(run_dir: Path, data: str, kind: str | None, vocab_size: int | None, d: Dist,
                  valid: str | None = None, seq_len: int | None = None):
    """The tokenizer saved in the run dir, or a new one trained on `data` (by rank 0). The corpus
    checks that need no tokenizer (with `seq_len`: room for one window) run before it is trained."""
    saved = run_dir / TOKENIZER_DIR
    if d.is_main and load_tokenizer(saved) is None:
        tok = build_tokenizer_for(data, kind, vocab_size, valid=valid, seq_len=seq_len)
        saved.mkdir(parents=True, exist_ok=True)
        tok.save(saved)
    barrier(d)
    tok = load_tokenizer(saved)
    if kind is not None and tok.kind != kind:
        raise ConfigError(f"{saved} holds a {tok.kind} tokenizer, not the {kind} one asked for; "
                          f"choose another --out for a run with another tokenizer")
    return tok


def save_settings(run_dir: Path, settings: dict) -> None:
    settings = {k: v for k, v in settings.items() if k in SAVED and v is not None}
    write_bytes_atomic(run_dir / SETTINGS_FILE, finite_json(settings, indent=1, sort_keys=True).encode())


def saved_settings(run_dir: str | Path) -> dict:
    """The settings of the last `pretrain` into `run_dir` ({} if it has none), checked."""
    path = Path(run_dir) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: expected a JSON object of pretrain settings")
    unknown = sorted(set(settings) - SAVED)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(SAVED))}")
    if not isinstance(settings.get("overrides", {}), dict):
        raise ConfigError(f"{path}: 'overrides' must be an object of model config fields")
    return settings


def default_seq_len(model: str, preset: str, overrides: dict) -> int:
    """--seq-len when none is given, from the family's recipe (e.g. 128, or the model's context if
    shorter; Transformer-XL: the segment length tgt_len)."""
    return recipe_for(model).default_seq_len(make_config(model, preset, **overrides))


def pretrain(model: str, preset: str, data: str, out: str, overrides: dict | None = None,
             tokenizer: str | None = None, vocab_size: int | None = None, valid: str | None = None,
             resume: bool = False, recipe_options: dict | None = None, **train_values) -> RunResult:
    """Pretrain family `model` (its `preset` with `overrides`) on `data` into the run dir `out`.

    recipe_options: the family recipe's own options (e.g. bert's masking), None = its default."""
    family = family_spec(model)
    recipe = recipe_for(model)
    options = recipe.make_options(model, recipe_options or {})
    if train_values.get("seq_len") is None:
        train_values["seq_len"] = default_seq_len(model, preset, overrides or {})
    cfg = train_config(train_values)
    settings = dict(model=model, preset=preset, data=data, valid=valid, tokenizer=tokenizer,
                    vocab_size=vocab_size, overrides=overrides or {}, **(recipe_options or {}), **asdict(cfg))
    overrides = recipe.config_overrides(overrides or {}, cfg.seq_len)
    tokenizer = tokenizer or family.tokenizer
    device = resolve_device(cfg.device)
    d = init_distributed(device.type, cfg.collective_timeout)
    lock, failed = None, False
    try:
        if d.enabled and device.type == "cuda":
            device = torch.device("cuda", d.local_rank)
            torch.cuda.set_device(device)
        run_dir = Path(out)
        lock = hold_run_dir(run_dir, "pretrain", d)  # one process per run dir, before it is written
        check_run_dir(run_dir, not resume, RUN_FILES)  # before the corpus is read
        tok = run_tokenizer(run_dir, data, tokenizer, vocab_size, d, valid,
                            cfg.seq_len if recipe.reads_windows else None)
        batches, evaluate = recipe.batches(data, tok, cfg, d, valid, options)
        config = make_config(model, preset, **{"vocab_size": tok.vocab_size, **overrides})
        check_vocab(tok.vocab_size, config.vocab_size)
        if cfg.seq_len > config.max_seq_len:
            raise ConfigError(f"--seq-len {cfg.seq_len} is longer than the model's max_seq_len "
                              f"{config.max_seq_len}; lower it or pass --set max_seq_len={cfg.seq_len}")
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every rerun
        net = family.model(config)
        # After the model: parameters an objective makes draw from the RNG after the model's weights.
        objective = recipe.make_objective(options, config, cfg)
        net.family = model
        if recipe.fit_model is not None:
            recipe.fit_model(net, tok)
        net.to(device)
        if d.is_main:  # checked and built: these settings make a run
            save_settings(run_dir, settings)
        result = train(net, tok, cfg, run_dir, batches, evaluate=evaluate, objective=objective,
                       resume=resume, dist=d)
        if d.is_main:
            print(summary(result))
        return result
    except RuntimeError as e:
        failure = collective_failure(e, d)  # a stalled or dead rank: one line, not a traceback
        if failure is None:
            raise
        failed = True
        raise failure from None
    finally:
        if lock is not None:
            lock.release()
        if not failed:  # after a failed collective, tearing the group down may wait on it again
            shutdown(d)


def summary(r: RunResult) -> str:
    val = f", val loss {r.val_loss:.4f} (ppl {math.exp(min(r.val_loss, 50)):.2f})" if r.val_loss else ""
    if "mlm_acc" in r.val_metrics:  # masked LM: a perplexity of MLM + NSP loss means nothing
        m = r.val_metrics
        val = (f", val MLM loss {m['mlm_loss']:.4f} (acc {m['mlm_acc']:.3f}), "
               f"NSP loss {m['nsp_loss']:.4f} (acc {m['nsp_acc']:.3f})")
    resumed = f" (resumed from step {r.resumed_from})" if r.resumed_from else ""
    return (f"trained {r.steps} steps{resumed}, {r.tokens:,} tokens, loss {r.loss:.4f}{val}, "
            f"{r.tokens_per_s:,.0f} tokens/s, {r.skipped} skipped steps, {r.wall_s:.1f} s")
