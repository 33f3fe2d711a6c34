"""`lmlab pretrain`: data source -> tokenizer -> shards -> model -> the training loop -> run dir.

Under torchrun, rank 0 trains the tokenizer and tokenizes the corpus first; the other ranks wait
at a barrier and then read the same files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from pathlib import Path

import torch

from lmlab.checkpoints.atomic import write_bytes_atomic
from lmlab.data.prepare import build_tokenizer_for, check_vocab, prepare_tokens
from lmlab.data.sampler import ContiguousStreams, RandomWindowSampler, SequentialWindows
from lmlab.devices import resolve_device
from lmlab.errors import ConfigError
from lmlab.models.registry import family_spec, make_config
from lmlab.objectives.clm import clm_loss
from lmlab.objectives.clm_memory import MemoryCLM
from lmlab.objectives.mlm_nsp import mlm_nsp_loss
from lmlab.tokenizers import load_tokenizer
from lmlab.train.config import TrainConfig
from lmlab.train.distributed import Dist, barrier, init_distributed, shutdown
from lmlab.train.loop import RunResult, train
from lmlab.train.state import RUN_OUTPUTS, check_run_dir

TOKENIZER_DIR = "tokenizer"  # the run's tokenizer, written before step 0 so resume reuses it
# What the last `pretrain` into a run dir was asked to do, so that `lmlab pretrain --out DIR
# --resume` needs no other flag. Left out: how to run rather than what (a resumed run may move
# to another device or drop --compile), and the run dir itself.
SETTINGS_FILE = "pretrain.json"
RUN_FILES = (*RUN_OUTPUTS, SETTINGS_FILE)  # any of them in --out: a run is there
NOT_SAVED = {"out", "resume", "compile", "fsdp", "device", "progress"}
SAVED = ({"model", "preset", "data", "valid", "tokenizer", "vocab_size", "masking", "dupe_factor",
          "overrides"} | {f.name for f in fields(TrainConfig)}) - NOT_SAVED


def train_config(values: dict) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in known and v is not None})


def run_tokenizer(run_dir: Path, data: str, kind: str | None, vocab_size: int | None, d: Dist):
    """The tokenizer saved in the run dir, or a new one trained on `data` (by rank 0)."""
    saved = run_dir / TOKENIZER_DIR
    if d.is_main and load_tokenizer(saved) is None:
        saved.mkdir(parents=True, exist_ok=True)
        build_tokenizer_for(data, kind, vocab_size).save(saved)
    barrier(d)
    tok = load_tokenizer(saved)
    if kind is not None and tok.kind != kind:
        raise ConfigError(f"{saved} holds a {tok.kind} tokenizer, not the {kind} one asked for; "
                          f"choose another --out for a run with another tokenizer")
    return tok


def save_settings(run_dir: Path, settings: dict) -> None:
    settings = {k: v for k, v in settings.items() if k in SAVED and v is not None}
    write_bytes_atomic(run_dir / SETTINGS_FILE, json.dumps(settings, indent=1, sort_keys=True).encode())


def saved_settings(run_dir: str | Path) -> dict:
    """The settings of the last `pretrain` into `run_dir` ({} if it has none), checked."""
    path = Path(run_dir) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
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


def make_evaluator(shard, seq_len: int, batch_size: int, max_batches: int, d: Dist):
    """Mean validation loss over the first `max_batches` fixed windows (the same every time)."""
    windows = SequentialWindows(shard, seq_len, batch_size=batch_size, rank=d.rank, world_size=d.world_size)

    @torch.no_grad()
    def evaluate(model) -> float:
        model.eval()
        device = next(model.parameters()).device
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for i, (x, y, mask) in enumerate(windows):
            if i >= max_batches:
                break
            x, y, mask = x.to(device), y.to(device), mask.to(device)
            logits = model(x).logits.float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")
            total += torch.stack([(nll * mask).sum().double(), mask.sum().double()])
        if d.enabled:
            torch.distributed.all_reduce(total)
        return float(total[0] / total[1].clamp(min=1))

    return evaluate


def lm_data(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None, **_):
    """Causal LM: random windows of the token stream, validation loss on fixed windows."""
    if d.is_main:
        shards = prepare_tokens(data, tok, valid=valid, seq_len=cfg.seq_len, progress=cfg.progress)
    barrier(d)
    if not d.is_main:
        shards = prepare_tokens(data, tok, valid=valid, seq_len=cfg.seq_len, progress=False)
    per_rank = cfg.batch_size // d.world_size if cfg.batch_size % d.world_size == 0 else cfg.batch_size
    batches = RandomWindowSampler(shards["train"], cfg.seq_len, cfg.batch_size, cfg.seed,
                                  d.rank, d.world_size)
    return batches, make_evaluator(shards["valid"], cfg.seq_len, max(1, per_rank), cfg.eval_batches, d)


def pair_data(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None, masking: str | None = None,
              dupe_factor: int | None = None):
    """BERT: masked sentence pairs (lmlab.data.pairs); MLM/NSP metrics on a fixed set of pairs."""
    from lmlab.data.pairs import DUPE_FACTOR, PairSampler, load_pairs
    from lmlab.objectives.mlm_nsp import MaskingSpec

    spec = MaskingSpec.from_tokenizer(tok)
    splits = {}
    for main in (True, False):  # rank 0 tokenizes first, the others then read its cache
        if d.is_main == main:
            splits = {s: load_pairs(data, s, tok, valid=valid, progress=cfg.progress and main)
                      for s in ("train", "valid")}
        barrier(d)
    ids = (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    batches = PairSampler(splits["train"], cfg.seq_len, cfg.batch_size, spec, *ids, seed=cfg.seed,
                          rank=d.rank, world_size=d.world_size,
                          masking="dynamic" if masking is None else masking,
                          dupe_factor=DUPE_FACTOR if dupe_factor is None else dupe_factor)
    per_rank = cfg.batch_size // d.world_size
    fixed = PairSampler(splits["valid"], cfg.seq_len, per_rank * cfg.eval_batches * d.world_size, spec, *ids,
                        seed=cfg.seed, rank=d.rank, world_size=d.world_size).batch(0)
    return batches, make_pair_evaluator(fixed, per_rank, d)


def make_pair_evaluator(fixed: dict, batch_size: int, d: Dist):
    """{"loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"} over this rank's rows of `fixed`,
    summed over all ranks."""
    from lmlab.objectives.mlm_nsp import metrics_from_sums, mlm_nsp_sums

    @torch.no_grad()
    def evaluate(model) -> dict:
        model.eval()
        device = next(model.parameters()).device
        sums = 0
        for i in range(0, len(fixed["input_ids"]), batch_size):
            sums = sums + mlm_nsp_sums(model, {k: v[i : i + batch_size].to(device) for k, v in fixed.items()})
        if d.enabled:
            torch.distributed.all_reduce(sums)
        return metrics_from_sums(sums.cpu())

    return evaluate


def stream_data(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None, masking: str | None = None,
                dupe_factor: int | None = None):
    """Transformer-XL: the corpus as batch_size contiguous streams read seq_len (= tgt_len) tokens a
    step, so the memory a row leaves is the history of the segment it reads next (§3.2);
    validation loss with the memory protocol."""
    if masking is not None or dupe_factor is not None:
        raise ConfigError("--masking and --dupe-factor are for masked LM pretraining (bert), not transfo-xl")
    if d.is_main:
        shards = prepare_tokens(data, tok, valid=valid, seq_len=cfg.seq_len, progress=cfg.progress)
    barrier(d)
    if not d.is_main:
        shards = prepare_tokens(data, tok, valid=valid, seq_len=cfg.seq_len, progress=False)
    batches = ContiguousStreams(shards["train"], cfg.seq_len, cfg.batch_size, d.rank, d.world_size)
    return batches, make_memory_evaluator(shards["valid"], cfg)


def make_memory_evaluator(shard, cfg: TrainConfig):
    """Memory-protocol loss (the model's own tgt_len / mem_len) over the first eval_batches x
    batch_size x seq_len validation tokens, read as batch_size streams. Every rank computes the
    same number (no reduction), the one a single process would."""
    from lmlab.eval.memory import memory_perplexity

    tokens = getattr(shard, "tokens", shard)
    ids = torch.from_numpy(tokens[:cfg.eval_batches * cfg.batch_size * cfg.seq_len + 1].astype("int64"))

    def evaluate(model) -> float:
        return memory_perplexity(model, ids, streams=cfg.batch_size)["loss"]

    return evaluate


DEFAULT_SEQ_LEN = 128


def default_seq_len(model: str, preset: str, overrides: dict) -> int:
    """--seq-len when none is given: transfo-xl's segment length tgt_len; else 128, or the model's
    context if shorter (BERT's tiny preset has 64 positions)."""
    config = make_config(model, preset, **overrides)
    if model == "transfo-xl":
        return config.tgt_len
    return min(DEFAULT_SEQ_LEN, config.max_seq_len)


def segment_overrides(model: str, overrides: dict, seq_len: int) -> dict:
    """transfo-xl: --seq-len is the segment length tgt_len (training, and later generation)."""
    if model != "transfo-xl":
        return overrides
    if overrides.get("tgt_len", seq_len) != seq_len:
        raise ConfigError(f"for transfo-xl --seq-len is the segment length tgt_len: --set tgt_len="
                          f"{overrides['tgt_len']} disagrees with --seq-len {seq_len}; give one value")
    return {**overrides, "tgt_len": seq_len}


# family -> (builder of the training batches and the evaluator, objective); other families are
# causal LMs. A builder takes (data, tokenizer, TrainConfig, Dist, valid, masking, dupe_factor).
# An objective that is a class carries state across steps (lmlab.train.loop): one new per run.
PRETRAINING = {"bert": (pair_data, mlm_nsp_loss), "transfo-xl": (stream_data, MemoryCLM)}
DEFAULT_TOKENIZER = {"bert": "wordpiece"}


def pretrain(model: str, preset: str, data: str, out: str, overrides: dict | None = None,
             tokenizer: str | None = None, vocab_size: int | None = None, valid: str | None = None,
             resume: bool = False, masking: str | None = None, dupe_factor: int | None = None,
             **train_values) -> RunResult:
    if train_values.get("seq_len") is None:
        train_values["seq_len"] = default_seq_len(model, preset, overrides or {})
    cfg = train_config(train_values)
    settings = dict(model=model, preset=preset, data=data, valid=valid, tokenizer=tokenizer,
                    vocab_size=vocab_size, masking=masking, dupe_factor=dupe_factor,
                    overrides=overrides or {}, **asdict(cfg))
    family_spec(model)
    build_data, objective = PRETRAINING.get(model, (lm_data, clm_loss))
    if isinstance(objective, type):
        objective = objective()  # stateful: its state belongs to this run
    overrides = segment_overrides(model, overrides or {}, cfg.seq_len)
    if model not in PRETRAINING and (masking is not None or dupe_factor is not None):
        raise ConfigError(f"--masking and --dupe-factor are for masked LM pretraining (bert), not {model}")
    if dupe_factor is not None and (type(dupe_factor) is not int or dupe_factor < 1):
        raise ConfigError(f"--dupe-factor must be an integer >= 1, got {dupe_factor!r}")
    tokenizer = tokenizer or DEFAULT_TOKENIZER.get(model)
    device = resolve_device(cfg.device)
    d = init_distributed(device.type)
    try:
        if d.enabled and device.type == "cuda":
            device = torch.device("cuda", d.local_rank)
            torch.cuda.set_device(device)
        run_dir = Path(out)
        check_run_dir(run_dir, not resume, RUN_FILES)  # before the corpus is read
        run_dir.mkdir(parents=True, exist_ok=True)
        tok = run_tokenizer(run_dir, data, tokenizer, vocab_size, d)
        batches, evaluate = build_data(data, tok, cfg, d, valid, masking=masking, dupe_factor=dupe_factor)
        config = make_config(model, preset, **{"vocab_size": tok.vocab_size, **overrides})
        check_vocab(tok.vocab_size, config.vocab_size)
        if cfg.seq_len > config.max_seq_len:
            raise ConfigError(f"--seq-len {cfg.seq_len} is longer than the model's max_seq_len "
                              f"{config.max_seq_len}; lower it or pass --set max_seq_len={cfg.seq_len}")
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every rerun
        net = family_spec(model).model(config)
        net.family = model
        net.to(device)
        if d.is_main:  # checked and built: these settings make a run
            save_settings(run_dir, settings)
        result = train(net, tok, cfg, run_dir, batches, evaluate=evaluate, objective=objective,
                       resume=resume, dist=d)
        if d.is_main:
            print(summary(result))
        return result
    finally:
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
