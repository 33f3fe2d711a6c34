"""Greedy generation speed: lmlab.generate vs Hugging Face GPT2LMHeadModel.generate, same weights.

Per case: a 32-token random prompt (batch 1 or 8), 128 new tokens, greedy, KV cache on both sides,
fp32 CPU, eval mode, no_grad. tok/s = batch * 128 / (wall time of one whole generate call, prefill
included), median of interleaved repeats. The generated tokens of the two sides must be equal.

gpt2-124m at batch 1 also runs speculative decoding with an int8 copy of the model as the draft,
timed in the same interleaving as the plain runs: lmlab `generate(..., draft_model=quantized_draft(m))`
against HF `generate(..., assistant_model=a)`, where `a` is HF's model with its Conv1D layers made
nn.Linear and `torch.ao` dynamic int8 quantisation applied (fbgemm, as lmlab), set to the same
proposals per round (8) and to never stop drafting early. Both must give the plain greedy tokens.
Its row also has the ratio to HF's plain greedy decoding ("vs HF greedy").

    python benchmarks/generate.py [--quick] [--threads N] [--repeats R] [--large-repeats R]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import copy  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import common  # noqa: E402
import torch  # noqa: E402

PROMPT_LEN, NEW_TOKENS = 32, 128
CASES = [("small", 1), ("small", 8), ("gpt2-124m", 1), ("gpt2-124m", 8)]
DRAFT_CASES = {("gpt2-124m", 1)}  # also speculative decoding with an int8 draft
HF_PAD = 50256  # any id: nothing is padded and nothing stops early (no eos), it only silences a warning
DRAFT_TOKENS = 8  # lmlab's default; HF's assistant is set to the same


def prompt(batch: int, vocab: int = 50257) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(batch))


def make_run(side: str, model, ids: torch.Tensor, new_tokens: int = NEW_TOKENS, draft=None):
    """A zero-argument call that generates `new_tokens` greedily and returns prompt + new tokens;
    with `draft` (that side's int8 draft, see int8_draft), by speculative decoding."""
    if side == "lmlab":
        import lmlab

        options = {} if draft is None else dict(draft_model=draft, draft_tokens=DRAFT_TOKENS)
        return lambda: lmlab.generate(model, ids, max_new_tokens=new_tokens, **options)
    mask = torch.ones_like(ids)
    options = {} if draft is None else dict(assistant_model=draft)

    def run():
        with torch.no_grad():
            return model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, use_cache=True, pad_token_id=HF_PAD, **options)
    return run


def int8_draft(side: str, model):
    """The side's draft for speculative decoding: its own model with int8 linear layers."""
    if side == "lmlab":
        from lmlab.generate import quantized_draft

        return quantized_draft(model)
    from transformers.pytorch_utils import Conv1D

    assistant = copy.deepcopy(model)
    for module in list(assistant.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv1D):  # GPT-2's (in, out) layers: torch.ao quantises nn.Linear only
                linear = torch.nn.Linear(*child.weight.shape)
                linear.weight.data, linear.bias.data = child.weight.data.t().contiguous(), child.bias.data
                setattr(module, name, linear)
    with warnings.catch_warnings():  # torch.ao.quantization is marked deprecated
        warnings.simplefilter("ignore")
        previous, torch.backends.quantized.engine = torch.backends.quantized.engine, "fbgemm"
        try:
            assistant = torch.ao.quantization.quantize_dynamic(assistant, {torch.nn.Linear}, torch.qint8)
        finally:
            torch.backends.quantized.engine = previous
    config = assistant.generation_config  # lmlab's schedule: always DRAFT_TOKENS proposals
    config.num_assistant_tokens, config.num_assistant_tokens_schedule = DRAFT_TOKENS, "constant"
    config.assistant_confidence_threshold = 0.0
    return assistant


def memory_setup(side: str, hf_dir: Path, batch: int, with_draft: bool = False):
    """Run in the memory child: load (and make the draft), warm up with a 2-token generation (lazy
    imports, kernel caches, first-call buffers), then hand back the full generate call to measure."""
    model = common.load_side(side, hf_dir).eval()
    draft = int8_draft(side, model) if with_draft else None
    make_run(side, model, prompt(batch), new_tokens=2, draft=draft)()
    return make_run(side, model, prompt(batch), draft=draft)


def run_case(name: str, batch: int, hf_dir: Path, repeats: int, threads: int) -> list[dict]:
    with_draft = (name, batch) in DRAFT_CASES
    models = {side: common.load_side(side, hf_dir).eval() for side in common.SIDES}
    ids = prompt(batch)
    runs = {side: make_run(side, models[side], ids) for side in common.SIDES}
    drafted = {}
    if with_draft:
        for side in common.SIDES:
            start = time.perf_counter()
            draft = int8_draft(side, models[side])
            drafted[side] = time.perf_counter() - start
            runs[f"{side}_draft"] = make_run(side, models[side], ids, draft=draft)
    outputs = {run: runs[run]() for run in runs}  # also the first warm-up
    # per run: the full length, and the tokens of plain lmlab decoding
    same = {run: out.shape == (batch, PROMPT_LEN + NEW_TOKENS) and torch.equal(out, outputs["lmlab"])
            for run, out in outputs.items()}
    tokens = batch * NEW_TOKENS
    base = {"config": name, "batch": batch, "hf_attention": common.hf_attention(models["hf"])}
    cpu = {}
    times = common.interleaved(runs, repeats, warmup=0, cpu=cpu)  # the check above was the warm-up
    rows = [{"case": f"generate {name} b{batch}", **base, "tokens_equal": same["lmlab"] and same["hf"],
             **common.speed_fields(times, cpu, tokens)}]
    if with_draft:
        row = {"case": f"generate {name} b{batch} int8 draft", **base,
               "tokens_equal": same["lmlab_draft"] and same["hf_draft"], "draft_tokens": DRAFT_TOKENS,
               "draft_build_seconds": {side: round(t, 2) for side, t in drafted.items()},
               **common.speed_fields(times, cpu, tokens, "lmlab_draft", "hf_draft")}
        row["hf_greedy_ratio"] = row["lmlab_tok_s"] / rows[0]["hf_tok_s"]
        rows.append(row)
    del models, runs, outputs
    for row, draft in zip(rows, (False, True), strict=False):
        common.add_peak_memory(row, memory_setup, hf_dir, batch, draft, threads=threads)
    return rows


COLUMNS = [*common.SPEED_COLUMNS, ("hf_greedy_ratio", "vs HF greedy"), ("tokens_equal", "same tokens")]


def main(argv=None, workdir: Path | None = None) -> dict:
    return common.run_side_by_side("generate", __doc__, argv, workdir, CASES, "small", run_case,
                                   common.make_hf_dir, COLUMNS, large=True,
                                   extra={"prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS})


if __name__ == "__main__":
    main()
