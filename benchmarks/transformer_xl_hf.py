"""Transformer-XL evaluation speed: lmlab's memory protocol vs HF TransfoXLLMHeadModel, same weights.

Transformer-XL left transformers in v5, so this runs in a second environment with transformers
4.44 (`make bench` builds it as .venv-oracle and runs this script there, with lmlab from src/):

    PYTHONPATH=src .venv-oracle/bin/python benchmarks/transformer_xl_hf.py [--quick] [--threads N]
                                                                           [--repeats R]

Per case, a randomly initialised HF TransfoXLLMHeadModel (HF's own init, seeded) is saved with
save_pretrained and loaded by both sides: lmlab with `lmlab.from_hf`, HF with `from_pretrained`.
A random stream of S x L + 1 ids is cut into S contiguous streams of L targets read side by side
(the batchify of the paper's eval.py), in segments of tgt_len, each continuing the memory of the
one before from an empty memory (Dai et al. 2019, §3.2), so every target is scored once:

* lmlab: `lmlab.eval.memory.memory_token_losses(model, ids, streams=S)`, the public API;
* HF: what a user of TransfoXLLMHeadModel writes for the same thing: per segment,
  `model(input_ids=x, mems=mems)`, then the log-probability of each target gathered from
  `prediction_scores` and `mems = out.mems`. (HF's `labels=` shifts the targets inside the segment
  and so drops one target per segment; it cannot score the same tokens.)

The settings (tgt_len, mem_len, clamp_len, same_length) live in config.json, read by both sides.
The two sides' S x L per-token losses must agree to 1e-4. tok/s = S x L / median wall time of one
whole call over interleaved repeats; peak memory as in benchmarks/common.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests" / "oracles"))  # transfo_xl_compat

import common  # noqa: E402
import torch  # noqa: E402
from transfo_xl_compat import accept_type_as_dtype  # noqa: E402

import lmlab  # noqa: E402
from lmlab.eval.memory import memory_token_losses  # noqa: E402

# name -> transformers.TransfoXLConfig fields, evaluation settings included. txl-char: a small
# character-level model, one stream (the per-token Python and kernel-launch work shows). txl-word:
# a word-level base model with the adaptive input and softmax (div_val 4), four streams.
CONFIGS = {
    "txl-char": dict(vocab_size=256, cutoffs=[], div_val=1, d_model=128, d_embed=128, n_head=4, d_head=32,
                     d_inner=512, n_layer=4, tgt_len=64, mem_len=128, clamp_len=0, same_length=True),
    "txl-word": dict(vocab_size=32000, cutoffs=[2000, 10000], div_val=4, d_model=512, d_embed=512,
                     n_head=8, d_head=64, d_inner=2048, n_layer=6, tgt_len=64, mem_len=256, clamp_len=200,
                     same_length=True),
}
COMMON = dict(dropout=0.0, dropatt=0.0, untie_r=True, pre_lnorm=False, adaptive=True)
CASES = [("txl-char", 1, 1024), ("txl-word", 4, 512)]  # (config, streams S, targets per stream L)
TOLERANCE = 1e-4


def make_txl_dir(name: str, directory: Path) -> Path:
    """A randomly initialised HF TransfoXLLMHeadModel of CONFIGS[name], saved with save_pretrained."""
    return common.save_random_model(directory / name, "TransfoXLConfig", "TransfoXLLMHeadModel",
                                    {**COMMON, **CONFIGS[name]})


def load_side(side: str, txl_dir: Path):
    if side == "lmlab":
        model, _ = lmlab.from_hf(txl_dir)
        return model.eval()
    import transformers

    accept_type_as_dtype()
    return transformers.TransfoXLLMHeadModel.from_pretrained(txl_dir, torch_dtype=torch.float32).eval()


def stream(streams: int, length: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(streams * length)
    return torch.randint(0, vocab, (streams * length + 1,), generator=g)


@torch.no_grad()
def hf_token_losses(model, ids: torch.Tensor, streams: int) -> torch.Tensor:
    """Per-token NLL, (len(ids) - 1,) in stream order: stream b scores ids[b·L + 1 .. (b+1)·L]."""
    c = model.config
    x, y = ids[:-1].view(streams, -1), ids[1:].view(streams, -1)  # (S, L)
    mems = [torch.zeros(0, streams, c.d_model) for _ in range(c.n_layer)]  # empty, as lmlab and the paper
    pieces = []
    for s in range(0, x.shape[1], c.tgt_len):
        out = model(input_ids=x[:, s:s + c.tgt_len], mems=mems)
        logp = out.prediction_scores  # (S, T, V) log-probabilities
        pieces.append(-logp.gather(-1, y[:, s:s + c.tgt_len, None])[..., 0])
        mems = out.mems
    return torch.cat(pieces, dim=1).reshape(-1)


def make_run(side: str, model, ids: torch.Tensor, streams: int):
    if side == "lmlab":
        return lambda: memory_token_losses(model, ids, streams=streams)
    return lambda: hf_token_losses(model, ids, streams)


def memory_setup(side: str, txl_dir: Path, streams: int, length: int):
    """Run in the memory child: load, warm up on one short stream, hand back the full evaluation."""
    model = load_side(side, txl_dir)
    vocab = CONFIGS[txl_dir.name]["vocab_size"]
    make_run(side, model, stream(streams, CONFIGS[txl_dir.name]["tgt_len"], vocab), streams)()
    return make_run(side, model, stream(streams, length, vocab), streams)


def run_case(name: str, streams: int, length: int, txl_dir: Path, repeats: int, threads: int) -> dict:
    if length % CONFIGS[name]["tgt_len"]:
        raise ValueError(f"{name}: {length} targets per stream is not a whole number of segments")
    models = {side: load_side(side, txl_dir) for side in common.SIDES}
    ids = stream(streams, length, CONFIGS[name]["vocab_size"])
    runs = {side: make_run(side, models[side], ids, streams) for side in common.SIDES}
    losses = {side: runs[side]() for side in common.SIDES}  # also the first warm-up
    tokens = streams * length
    settings = {k: CONFIGS[name][k] for k in ("tgt_len", "mem_len", "clamp_len", "same_length")}
    row = {"case": f"txl eval {name} {streams}x{length}", "config": name, "streams": streams,
           "targets_per_stream": length, "tokens": tokens, **settings,
           **common.loss_agreement(losses, tokens, TOLERANCE)}
    if not row["losses_equal"]:
        common.log(f"  losses differ: {row}")
    common.add_speed(row, runs, repeats, tokens)  # the check above was the warm-up
    del models, runs, losses
    common.add_peak_memory(row, memory_setup, txl_dir, streams, length, threads=threads)
    return row


COLUMNS = [*common.SPEED_COLUMNS, ("losses_equal", "same losses")]


def main(argv=None, workdir: Path | None = None) -> dict:
    return common.run_side_by_side("transformer_xl_hf", __doc__, argv, workdir, CASES, "txl-char", run_case,
                                   make_txl_dir, COLUMNS, extra={"tolerance": TOLERANCE})


if __name__ == "__main__":
    main()
