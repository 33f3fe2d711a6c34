"""Perplexity evaluation speed: lmlab.eval.perplexity.token_losses vs the same loop written for HF.

The stream is N * 256 + 1 random token ids (seeded), cut into N fixed, non-overlapping windows of
256 inputs (window k reads ids[256k : 256k+256] and predicts ids[256k+1 : 256k+257]), so every
one of the N * 256 targets is scored once. Both sides run 8 windows per forward, fp32 CPU, eval
mode, no_grad, on the same weights:

* lmlab: `token_losses(model, ids, window=256, batch_size=8)`, the public API (it plans the
  windows, batches them, runs the model and takes the per-token cross-entropy itself);
* HF: what a user of GPT2LMHeadModel writes for the same thing: for each batch of 8 windows,
  `model(input_ids).logits`, then `F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
  reduction="none")`, and the pieces concatenated.

One timed call scores the whole stream and returns its N * 256 per-token losses; the two sides'
losses must agree to 1e-4 (max abs difference). tok/s = N * 256 / median wall time of one call
over interleaved repeats (benchmarks/common.py). The stream is 16 windows (2 forwards) for small
and 8 windows (1 forward, 4-5 s on one core) for gpt2-124m.

    python benchmarks/evaluate.py [--quick] [--threads N] [--repeats R] [--large-repeats R]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lmlab.eval.perplexity import token_losses  # noqa: E402

WINDOW, BATCH = 256, 8
CASES = [("small", 16), ("gpt2-124m", 8)]  # (config, windows in the stream)
TOLERANCE = 1e-4


def stream(windows: int, vocab: int = 50257) -> torch.Tensor:
    """windows * WINDOW + 1 random ids: exactly `windows` full windows of inputs, each with targets."""
    g = torch.Generator().manual_seed(windows)
    return torch.randint(0, vocab, (windows * WINDOW + 1,), generator=g)


def hf_token_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of the fixed windows, the way an HF user writes it: shape (len(ids) - 1,)."""
    inputs = ids[:-1].view(-1, WINDOW)  # (N, W)
    targets = ids[1:].view(-1, WINDOW)  # (N, W)
    model.eval()
    pieces = []
    with torch.no_grad():
        for i in range(0, len(inputs), BATCH):
            logits = model(inputs[i:i + BATCH]).logits  # (B, W, V)
            pieces.append(F.cross_entropy(logits.flatten(0, 1).float(), targets[i:i + BATCH].flatten(),
                                          reduction="none"))
    return torch.cat(pieces)


def make_run(side: str, model, ids: torch.Tensor):
    """A zero-argument call that scores the whole stream and returns the per-token losses."""
    if side == "lmlab":
        return lambda: token_losses(model, ids, window=WINDOW, batch_size=BATCH)
    return lambda: hf_token_losses(model, ids)


def memory_setup(side: str, hf_dir: Path, windows: int):
    """Run in the memory child: load, warm up on a one-window stream (lazy imports, kernel caches,
    first-call buffers), then hand back the full evaluation to measure."""
    model = common.load_side(side, hf_dir).eval()
    make_run(side, model, stream(1))()
    return make_run(side, model, stream(windows))


def run_case(name: str, windows: int, hf_dir: Path, repeats: int, threads: int) -> dict:
    models = {side: common.load_side(side, hf_dir).eval() for side in common.SIDES}
    ids = stream(windows)
    runs = {side: make_run(side, models[side], ids) for side in common.SIDES}
    losses = {side: runs[side]() for side in common.SIDES}  # also the first warm-up
    tokens = windows * WINDOW
    row = {"case": f"evaluate {name} {windows}x{WINDOW} b{BATCH}", "config": name, "windows": windows,
           "window": WINDOW, "batch": BATCH, "tokens": tokens,
           **common.loss_agreement(losses, tokens, TOLERANCE),
           "hf_attention": common.hf_attention(models["hf"])}
    if not row["losses_equal"]:
        common.log(f"  losses differ: {row}")
    common.add_speed(row, runs, repeats, tokens)  # the check above was the warm-up
    del models, runs, losses
    common.add_peak_memory(row, memory_setup, hf_dir, windows, threads=threads)
    return row


COLUMNS = [*common.SPEED_COLUMNS, ("losses_equal", "same losses")]


def main(argv=None, workdir: Path | None = None) -> dict:
    return common.run_side_by_side("evaluate", __doc__, argv, workdir, CASES, "small", run_case,
                                   common.make_hf_dir, COLUMNS, large=True,
                                   extra={"window": WINDOW, "batch": BATCH, "tolerance": TOLERANCE})


if __name__ == "__main__":
    main()
