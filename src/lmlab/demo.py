"""`lmlab demo` / `make demo`: the main job on the built-in default data.

Pretrains a small GPT-2 on word-level Penn Treebank for a fixed time budget (the step count is
calibrated from a few timed steps, so the cosine schedule still ends at the last step), reports the
validation perplexity next to a unigram baseline, samples three continuations, and leaves a run dir
that `lmlab generate` and `lmlab evaluate` accept.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.checkpoints.atomic import finite_json, write_bytes_atomic
from lmlab.data.prepare import prepare_tokens
from lmlab.devices import resolve_device
from lmlab.errors import ConfigError
from lmlab.eval.perplexity import perplexity, unigram_perplexity
from lmlab.generate.loop import generate
from lmlab.objectives.clm import clm_loss
from lmlab.options import option
from lmlab.paths import LOCK_FILE, DirLock
from lmlab.train.distributed import Dist
from lmlab.train.pretrain import RUN_FILES, pretrain, run_tokenizer, saved_settings
from lmlab.train.state import check_run_dir

DATA = "builtin:ptb"
MODEL = {"d_model": 192, "n_layers": 4, "n_heads": 4, "d_ff": 768, "max_seq_len": 128, "dropout": 0.1}
TRAIN = {"batch_size": 16, "seq_len": 128, "lr": 2e-3, "warmup": 50, "weight_decay": 0.1,
         "log_every": 10, "eval_batches": 10}
PROMPTS = ["the company said", "in new york stock exchange composite trading", "the federal reserve"]


@dataclass(frozen=True)
class DemoOptions:
    """`lmlab demo`: pretrain a small GPT-2 on builtin:ptb for a few minutes, report validation perplexity
    next to a unigram baseline, sample text."""

    out: str = option("runs/demo", "run dir; an earlier demo there is replaced")
    minutes: float = option(5.0, "training time budget")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")


def time_per_step(tokenizer, device: torch.device) -> float:
    """Seconds per optimizer step of the demo model, from 3 timed steps after one warm-up."""
    from lmlab.models.registry import build

    model = build("gpt2", "tiny", vocab_size=tokenizer.vocab_size, **MODEL).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, tokenizer.vocab_size, (TRAIN["batch_size"], TRAIN["seq_len"]), device=device)
    times = []
    for _ in range(4):
        t = time.perf_counter()
        clm_loss(model, (x, x)).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[1]


def is_earlier_demo(run_dir: Path) -> bool:
    """Whether `run_dir` holds a demo run: its pretrain settings, or its finished report, say so."""
    settings = saved_settings(run_dir)
    if settings:
        return settings.get("data") == DATA and settings.get("overrides") == MODEL
    try:
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(report, dict) and report.get("data") == DATA and all(
        report.get(k) == v for k, v in MODEL.items())


def run_demo(out: str = "runs/demo", minutes: float = 5.0, device: str = "auto") -> dict:
    if not 0 < minutes < math.inf:
        raise ConfigError(f"--minutes must be a positive number of minutes, got {minutes:g}")
    with DirLock(out, "demo"):  # one process per run dir, the earlier demo's replacement included
        return _demo(Path(out), minutes, device)


def _clear(run_dir: Path) -> None:
    """Empty the dir of an earlier demo, but for the lock this process holds on it."""
    for p in run_dir.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _demo(run_dir: Path, minutes: float, device: str) -> dict:
    out = str(run_dir)
    if is_earlier_demo(run_dir):
        _clear(run_dir)  # replaced; any other run there is refused, before any work
    check_run_dir(run_dir, True, RUN_FILES)
    dev = resolve_device(device)
    tokenizer = run_tokenizer(run_dir, DATA, None, None, Dist())
    shards = prepare_tokens(DATA, tokenizer, seq_len=TRAIN["seq_len"])
    per_step = time_per_step(tokenizer, dev)
    # Leave about a tenth of the budget to evaluation and checkpoints.
    steps = max(50, int(minutes * 60 * 0.9 / per_step))
    print(f"lmlab demo: GPT-2 ({MODEL['n_layers']} layers, d_model {MODEL['d_model']}) on {DATA}, "
          f"{steps} steps of {TRAIN['batch_size']}x{TRAIN['seq_len']} tokens (~{minutes:g} min on {dev})")
    t0 = time.perf_counter()
    result = pretrain("gpt2", "tiny", DATA, out, overrides=MODEL, steps=steps, device=str(dev),
                      eval_every=max(1, steps // 5), save_every=max(1, steps // 2), **TRAIN)
    train_wall = time.perf_counter() - t0

    from lmlab.checkpoints.io import load

    model, tokenizer = load(run_dir, device=dev)
    valid = torch.from_numpy(shards["valid"].tokens.astype("int64"))
    val = perplexity(model, valid, window=TRAIN["seq_len"], batch_size=32)
    unigram = unigram_perplexity(shards["train"].tokens, shards["valid"].tokens, tokenizer.vocab_size)
    print(f"\nvalidation perplexity {val['ppl']:.1f}  (unigram baseline {unigram:.1f}, "
          f"uniform {tokenizer.vocab_size}) over {val['tokens']:,} tokens")
    samples = []
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    rows = generate(model, prompt_ids, max_new_tokens=30, do_sample=True, top_k=40, seed=0)
    width = rows.shape[1] - 30
    for ids, row in zip(prompt_ids, rows.tolist(), strict=True):
        text = tokenizer.decode(ids + row[width:]).replace("\n", " / ")
        samples.append(text)
        print(f"  > {text}")
    report = {"model": "gpt2", **MODEL, "data": DATA, "steps": result.steps, "tokens": result.tokens,
              "tokens_per_s": round(result.tokens_per_s, 1), "train_wall_s": round(train_wall, 1),
              "val_loss": val["loss"], "val_ppl": val["ppl"], "unigram_ppl": unigram,
              "uniform_ppl": tokenizer.vocab_size, "samples": samples, "device": str(dev)}
    write_bytes_atomic(run_dir / "report.json", finite_json(report, indent=2).encode())
    print(f"\nrun dir {run_dir}: metrics.jsonl, plots/loss.png, report.json, checkpoints/")
    # PTB's <eos> ends a sentence; --no-stop-at-eos keeps sampling across sentence ends.
    print(f"try: lmlab generate {run_dir} --prompt \"the market\" --no-stop-at-eos   |   "
          f"lmlab evaluate {run_dir}")
    return report
