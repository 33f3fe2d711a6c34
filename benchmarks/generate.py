"""Greedy generation speed: lmlab.generate vs Hugging Face GPT2LMHeadModel.generate, same weights.

Per case: a 32-token random prompt (batch 1 or 8), 128 new tokens, greedy, KV cache on both sides,
fp32 CPU, eval mode, no_grad. tok/s = batch * 128 / (wall time of one whole generate call, prefill
included), median of interleaved repeats. The generated tokens of the two sides must be equal.

    python benchmarks/generate.py [--quick] [--threads N] [--repeats R] [--large-repeats R]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

PROMPT_LEN, NEW_TOKENS = 32, 128
CASES = [("small", 1), ("small", 8), ("gpt2-124m", 1), ("gpt2-124m", 8)]
HF_PAD = 50256  # any id: nothing is padded and nothing stops early (no eos), it only silences a warning


def prompt(batch: int, vocab: int = 50257) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(batch))


def make_run(side: str, model, ids: torch.Tensor, new_tokens: int = NEW_TOKENS):
    """A zero-argument call that generates `new_tokens` greedily and returns prompt + new tokens."""
    if side == "lmlab":
        import lmlab

        return lambda: lmlab.generate(model, ids, max_new_tokens=new_tokens)
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            return model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, use_cache=True, pad_token_id=HF_PAD)
    return run


def memory_setup(side: str, hf_dir: Path, batch: int):
    """Run in the memory child: load, warm up with a 2-token generation (lazy imports, kernel
    caches, first-call buffers), then hand back the full generate call to measure."""
    model = common.load_side(side, hf_dir).eval()
    make_run(side, model, prompt(batch), new_tokens=2)()
    return make_run(side, model, prompt(batch))


def run_case(name: str, batch: int, hf_dir: Path, repeats: int, threads: int) -> dict:
    models = {side: common.load_side(side, hf_dir).eval() for side in common.SIDES}
    ids = prompt(batch)
    runs = {side: make_run(side, models[side], ids) for side in common.SIDES}
    outputs = {side: runs[side]() for side in common.SIDES}  # also the first warm-up
    equal = all(o.shape == (batch, PROMPT_LEN + NEW_TOKENS) for o in outputs.values()) and \
        torch.equal(outputs["lmlab"], outputs["hf"])
    tokens = batch * NEW_TOKENS
    row = {"case": f"generate {name} b{batch}", "config": name, "batch": batch, "tokens_equal": equal,
           "hf_attention": common.hf_attention(models["hf"])}
    common.add_speed(row, runs, repeats, tokens)  # the check above was the warm-up
    del models, runs, outputs
    common.add_peak_memory(row, memory_setup, hf_dir, batch, threads=threads)
    return row


COLUMNS = [*common.SPEED_COLUMNS, ("tokens_equal", "same tokens")]


def main(argv=None, workdir: Path | None = None) -> dict:
    return common.run_side_by_side("generate", __doc__, argv, workdir, CASES, "small", run_case,
                                   common.make_hf_dir, COLUMNS, large=True,
                                   extra={"prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS})


if __name__ == "__main__":
    main()
