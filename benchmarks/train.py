"""Training speed: lmlab GPT-2 vs Hugging Face GPT2LMHeadModel, same weights, one process, CPU fp32.

One step = zero_grad, forward, mean next-token cross-entropy, backward, AdamW step. Each side uses
the optimizer its own trainer makes: lmlab.train.optim.make_optimizer (fused AdamW, decay on
matrices only) and, for HF, torch.optim.AdamW(fused=True) on the same groups, which is what the HF
Trainer builds by default on torch >= 2.8 (optim="adamw_torch_fused"). Dropout is 0 on both sides.
lmlab's loss is lmlab.objectives.clm.clm_loss (the chunked lmlab.nn.lm_loss path) with targets =
inputs shifted left and the last position ignored (-100); HF's is `model(input_ids,
labels=input_ids).loss`, which shifts internally: both average the same T-1 predictions of the
same T-token rows, so their first-step losses must agree to 1e-4.
tok/s = batch * seq / median step time over interleaved repeats.

    python benchmarks/train.py [--quick] [--threads N] [--repeats R] [--large-repeats R]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

from lmlab.objectives.clm import clm_loss  # noqa: E402
from lmlab.train.optim import make_optimizer, param_groups  # noqa: E402

CASES = [("small", 8, 256), ("gpt2-124m", 2, 256)]  # (config, batch, seq)
ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
WEIGHT_DECAY = 0.1
LOSS_TOLERANCE = 1e-4


def batch_of(batch: int, seq: int, vocab: int = 50257) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seq + batch))
    y = torch.cat([x[:, 1:], torch.full((batch, 1), -100)], dim=1)  # next token; the last has none
    return x, y


def make_step(side: str, model, x: torch.Tensor, y: torch.Tensor):
    """A zero-argument call doing one optimizer step; returns the loss (a float)."""
    model.train()
    if side == "lmlab":
        optimizer = make_optimizer(model, ADAMW["lr"], WEIGHT_DECAY, ADAMW["betas"], "cpu")
    else:
        optimizer = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), fused=True, **ADAMW)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = clm_loss(model, (x, y)) if side == "lmlab" else model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def memory_setup(side: str, hf_dir: Path, batch: int, seq: int):
    """Run in the memory child: the first step, so optimizer state and gradients are included."""
    return make_step(side, common.load_side(side, hf_dir), *batch_of(batch, seq))


def run_case(name: str, batch: int, seq: int, hf_dir: Path, repeats: int, threads: int) -> dict:
    x, y = batch_of(batch, seq)
    steps = {side: make_step(side, common.load_side(side, hf_dir), x, y) for side in common.SIDES}
    first = {side: steps[side]() for side in common.SIDES}  # same weights, so the same loss
    tokens = batch * seq
    row = {"case": f"train {name} b{batch}x{seq}", "config": name, "batch": batch, "seq": seq,
           "lmlab_first_loss": first["lmlab"], "hf_first_loss": first["hf"],
           "loss_diff": abs(first["lmlab"] - first["hf"])}
    row["loss_equal"] = row["loss_diff"] < LOSS_TOLERANCE
    common.add_speed(row, steps, repeats, tokens, warmup=1)
    del steps
    common.add_peak_memory(row, memory_setup, hf_dir, batch, seq, threads=threads)
    return row


COLUMNS = [*common.SPEED_COLUMNS, ("loss_equal", "same loss")]


def main(argv=None, workdir: Path | None = None) -> dict:
    return common.run_side_by_side("train", __doc__, argv, workdir, CASES, "small", run_case,
                                   common.make_hf_dir, COLUMNS, large=True,
                                   extra={"adamw": ADAMW, "weight_decay": WEIGHT_DECAY})


if __name__ == "__main__":
    main()
