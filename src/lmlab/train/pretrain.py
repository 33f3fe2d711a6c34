"""`lmlab pretrain`: data source -> tokenizer -> shards -> model -> the training loop -> run dir.

Under torchrun, rank 0 trains the tokenizer and tokenizes the corpus first; the other ranks wait
at a barrier and then read the same files.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import torch

from lmlab.data.prepare import build_tokenizer_for, check_vocab, prepare_tokens
from lmlab.data.sampler import RandomWindowSampler, SequentialWindows
from lmlab.errors import ConfigError
from lmlab.models.registry import family_spec, make_config
from lmlab.tokenizers import load_tokenizer
from lmlab.train.config import TrainConfig
from lmlab.train.distributed import Dist, barrier, init_distributed, shutdown
from lmlab.train.loop import RunResult, resolve_device, train

TOKENIZER_DIR = "tokenizer"  # the run's tokenizer, written before step 0 so resume reuses it


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
    return load_tokenizer(saved)


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


def pretrain(model: str, preset: str, data: str, out: str, overrides: dict | None = None,
             tokenizer: str | None = None, vocab_size: int | None = None, valid: str | None = None,
             resume: bool = False, **train_values) -> RunResult:
    cfg = train_config(train_values)
    family_spec(model)
    device = resolve_device(cfg.device)
    d = init_distributed(device.type)
    try:
        if d.enabled and device.type == "cuda":
            device = torch.device("cuda", d.local_rank)
            torch.cuda.set_device(device)
        run_dir = Path(out)
        run_dir.mkdir(parents=True, exist_ok=True)
        tok = run_tokenizer(run_dir, data, tokenizer, vocab_size, d)
        if d.is_main:
            shards = prepare_tokens(data, tok, valid=valid, seq_len=cfg.seq_len, progress=cfg.progress)
        barrier(d)
        if not d.is_main:
            shards = prepare_tokens(data, tok, valid=valid, seq_len=cfg.seq_len, progress=False)
        config = make_config(model, preset, **{"vocab_size": tok.vocab_size, **(overrides or {})})
        check_vocab(tok.vocab_size, config.vocab_size)
        if cfg.seq_len > config.max_seq_len:
            raise ConfigError(f"--seq-len {cfg.seq_len} is longer than the model's max_seq_len "
                              f"{config.max_seq_len}; lower it or pass --set max_seq_len={cfg.seq_len}")
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every rerun
        net = family_spec(model).model(config)
        net.family = model
        net.to(device)
        per_rank = cfg.batch_size // d.world_size if cfg.batch_size % d.world_size == 0 else cfg.batch_size
        batches = RandomWindowSampler(shards["train"], cfg.seq_len, cfg.batch_size, cfg.seed,
                                      d.rank, d.world_size)
        evaluate = make_evaluator(shards["valid"], cfg.seq_len, max(1, per_rank), cfg.eval_batches, d)
        result = train(net, tok, cfg, run_dir, batches, evaluate=evaluate, resume=resume, dist=d)
        if d.is_main:
            print(summary(result))
        return result
    finally:
        shutdown(d)


def summary(r: RunResult) -> str:
    val = f", val loss {r.val_loss:.4f} (ppl {math.exp(min(r.val_loss, 50)):.2f})" if r.val_loss else ""
    resumed = f" (resumed from step {r.resumed_from})" if r.resumed_from else ""
    return (f"trained {r.steps} steps{resumed}, {r.tokens:,} tokens, loss {r.loss:.4f}{val}, "
            f"{r.tokens_per_s:,.0f} tokens/s, {r.skipped} skipped steps, {r.wall_s:.1f} s")
