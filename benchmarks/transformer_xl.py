"""Transformer-XL evaluation with state reuse vs the vanilla protocol, and training tokens/s.

    python benchmarks/transformer_xl.py [--quick] [--threads N] [--repeats R] [--device cpu|cuda]

Evaluation (Dai et al. 2019, §3.3 and Table 9). One model, one stream, batch 1, at attention
lengths A = 128, 256, 512 (keys each prediction attends to):
- memory: `lmlab.eval.memory.memory_token_losses` with tgt_len 64, mem_len A and same_length, so
  every query sees exactly A keys; each hidden state is computed once and reused from the memory.
- vanilla: the "vanilla" Transformer evaluation the paper compares with: for every predicted
  token, a fresh forward pass over the A tokens that end at it (a sliding window with stride 1;
  only the last position's prediction is kept), so each token costs a whole A-token pass.
The paper reports speed-ups up to 1,874x at A = 3,800 (GPU, large enwik8 model); the ratio grows
with A because vanilla's cost per token grows with A (about A x the memory protocol's work).

Training: tokens/s of training steps with the memory objective (`CarriedStateCLM`, batch 8 x tgt_len
64) with mem_len 0 (no recurrence) and 128 (= 2 x tgt_len): what carrying memory costs.

Timing follows benchmarks/common.py: warm-up, then repeats alternating the two sides, median.
Threads default to 1: the small matmuls here gain nothing from a second thread on a shared
two-core machine, and a busy second core can make them many times slower.
Writes benchmarks/results/transformer_xl.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

import lmlab  # noqa: E402
from lmlab.eval.memory import EvalSettings, eval_settings, memory_token_losses  # noqa: E402
from lmlab.objectives.clm_state import CarriedStateCLM  # noqa: E402
from lmlab.train.optim import make_optimizer  # noqa: E402

MODEL = dict(vocab_size=256, d_model=128, n_layers=4, n_heads=4, d_head=32, d_ff=512, cutoffs=(),
             dropout=0.0, tgt_len=64, mem_len=128)
SEGMENT = 64
LENGTHS = (128, 256, 512)


def build(device: str, **overrides):
    torch.manual_seed(0)
    return lmlab.build("transfo-xl", "tiny", **{**MODEL, **overrides}).to(device).eval()


def memory_run(model, ids: torch.Tensor, attn_len: int, device: str):
    settings = EvalSettings(tgt_len=SEGMENT, mem_len=attn_len, clamp_len=0, same_length=True)

    def run():
        with eval_settings(model, settings):
            out = memory_token_losses(model, ids)
        sync(device)
        return out

    return run


def vanilla_run(model, ids: torch.Tensor, attn_len: int, n_predict: int, device: str):
    """n_predict predictions, each from a fresh pass over the attn_len tokens ending at it."""
    none = EvalSettings(tgt_len=SEGMENT, mem_len=0, clamp_len=0, same_length=False)

    @torch.no_grad()
    def run():
        out = []
        with eval_settings(model, none):
            for t in range(attn_len, attn_len + n_predict):
                logp = model(ids[None, t - attn_len:t], logits_to_keep=1).logits[0, -1]  # (V,)
                out.append(-logp[ids[t]])
        sync(device)
        return torch.stack(out)

    return run


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def eval_row(model, device: str, repeats: int, attn_len: int, n_predict: int, stream_len: int) -> dict:
    g = torch.Generator().manual_seed(attn_len)
    ids = torch.randint(0, MODEL["vocab_size"], (max(stream_len, attn_len + n_predict + 1),), generator=g)
    ids = ids.to(device)
    runs = {"memory": memory_run(model, ids[:stream_len], attn_len, device),
            "vanilla": vanilla_run(model, ids, attn_len, n_predict, device)}
    common.log(f"attention length {attn_len}: {stream_len - 1} tokens with memory, {n_predict} vanilla")
    times = {k: common.median(v) for k, v in common.interleaved(runs, repeats=repeats, warmup=1).items()}
    mem_tok_s, van_tok_s = (stream_len - 1) / times["memory"], n_predict / times["vanilla"]
    return {"attn_len": attn_len, "memory_tok_s": mem_tok_s, "vanilla_tok_s": van_tok_s,
            "speedup_ratio": mem_tok_s / van_tok_s,
            "memory_s": times["memory"], "vanilla_s": times["vanilla"]}


def train_run(model, optimizer, data: torch.Tensor, steps: int, device: str):
    """`steps` training steps of consecutive segments of `data` (B, steps*SEGMENT + 1), with memory."""
    objective = CarriedStateCLM()
    rows = slice(0, data.shape[0])

    def run():
        objective.reset()
        for k in range(steps):
            x = data[:, k * SEGMENT:(k + 1) * SEGMENT]
            y = data[:, k * SEGMENT + 1:(k + 1) * SEGMENT + 1]
            objective(model, (x, y), rows).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)

    return run


def train_row(device: str, repeats: int, steps: int, mem_len: int, batch: int = 8) -> dict:
    model = build(device, mem_len=mem_len).train()
    optimizer = make_optimizer(model, 3e-4, 0.01, (0.9, 0.95), torch.device(device).type)
    g = torch.Generator().manual_seed(2)
    data = torch.randint(0, MODEL["vocab_size"], (batch, steps * SEGMENT + 1), generator=g).to(device)
    run = train_run(model, optimizer, data, steps, device)
    common.log(f"training with mem_len {mem_len}: {steps} steps of {batch} x {SEGMENT} tokens")
    seconds = common.interleaved({"train": run}, repeats=repeats, warmup=1)["train"]
    return {"mem_len": mem_len, "tgt_len": SEGMENT, "batch": batch, "steps": steps,
            "train_tok_s": batch * SEGMENT * steps / common.median(seconds)}


def environment(device: str) -> dict:
    try:
        env = common.env_info()
    except ImportError:  # transformers is not needed here
        env = {"torch": torch.__version__, "cpu": common.cpu_model(),
               "torch_threads": torch.get_num_threads()}
    env["device"] = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return env


def main(argv=None, workdir=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer predictions and repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="attention lengths")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    n_predict = 16 if args.quick else 48
    stream_len = 1025 if args.quick else 2049
    start = time.perf_counter()
    model = build(args.device)
    evals = [eval_row(model, args.device, repeats, n, n_predict, stream_len) for n in args.lengths]
    training = [train_row(args.device, repeats, 4 if args.quick else 8, m) for m in (0, 2 * SEGMENT)]
    env = environment(args.device)
    payload = {"env": env, "model": {k: list(v) if isinstance(v, tuple) else v for k, v in MODEL.items()},
               "segment": SEGMENT, "vanilla_predictions": n_predict, "memory_stream_tokens": stream_len - 1,
               "repeats": repeats, "eval": evals, "train": training,
               "seconds": round(time.perf_counter() - start, 1)}
    print(f"transfo-xl {MODEL['n_layers']} layers, d_model {MODEL['d_model']}, vocab {MODEL['vocab_size']}, "
          f"batch 1, segment {SEGMENT}; {env.get('device')}, {env.get('torch_threads')} thread(s)")
    print(common.table(evals, [("attn_len", "attention length"), ("memory_tok_s", "memory tok/s"),
                               ("vanilla_tok_s", "vanilla tok/s"), ("speedup_ratio", "speed-up")]))
    print()
    print(common.table(training, [("mem_len", "train mem_len"), ("tgt_len", "tgt_len"), ("batch", "batch"),
                                  ("train_tok_s", "train tok/s")]))
    path = common.write_results("transformer_xl", payload)
    print(f"wrote {path} ({payload['seconds']} s)")
    return payload


if __name__ == "__main__":
    main()
