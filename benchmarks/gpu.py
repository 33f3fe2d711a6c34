"""GPU benchmark: lmlab vs Hugging Face transformers on one CUDA GPU, same weights, one process.

Cases (run in the order of `--list`, most important first; a global time guard skips what does not fit):
1. matmul: bf16 8192 x 8192 x 8192 torch.matmul, TFLOP/s = 2·8192³ / median time (CUDA events).
2. train: gpt2-124m, batch 16 x 1024, bf16 autocast, fused AdamW (lmlab.train.optim.param_groups on
   both sides), dropout 0, no clipping; lmlab (clm_loss) vs HF GPT2LMHeadModel(attn_implementation=
   "sdpa", labels=input_ids), each eager and torch.compile'd. tok/s = 16·1024 / median step time
   (step = forward, backward, optimizer step, zero_grad; torch.cuda.synchronize around each).
   MFU = tok/s · (6·N + 12·L·d·T) / peak, N = parameters without the position table (PaLM, App. B),
   against 989 TFLOP/s (H100/H200 SXM dense bf16) and against the matmul measured in case 1.
   lmlab trains inside training_attention (cuDNN attention first on Hopper), as `lmlab pretrain` does;
   its compiled case also reports one step's GPU time by kind of kernel (torch.profiler). Ablations
   of the compiled case: compile-flash (PyTorch's own attention order, FlashAttention-2 first, as HF
   gets it), compile-unpadded (the 50,257-row output matrix, not padded to
   50,304), compile-reduce-overhead (mode="reduce-overhead": forward and backward replayed as CUDA
   graphs), compile-coordinate-descent (inductor's coordinate_descent_tuning: block sizes of its
   Triton kernels tuned at compile time). Every compiled case compiles afresh
   (torch._dynamo.reset(), inductor's caches off).
3. generate: greedy, prompt 32 + 256 new tokens, bf16 weights, gpt2-124m and gpt2-355m, batch 1
   and 32: lmlab.generate (eager, and compile=True: fixed-shape steps compiled and replayed as a
   CUDA graph) vs HF generate() (dynamic cache; cache_implementation="static", which transformers 5
   compiles automatically on CUDA with mode="reduce-overhead"). tok/s = batch·256 / median time of a
   whole generate call (prefill included); "setup s" is the first call (compiling included); "agree"
   is the fraction of new tokens equal to lmlab eager's (bf16 kernels may flip near-ties).
Peak memory: torch.cuda.max_memory_allocated per case (reset before each; weights included).
Same weights: a random GPT2LMHeadModel is saved with save_pretrained, lmlab reads it with from_hf.

Each case runs in its own try block (an error is one line in the table); the table is printed
last; JSON goes to $OUT/gpu.json (when $OUT is set) and benchmarks/results/gpu.json (when writable).

    python benchmarks/gpu.py [--quick] [--cases SUBSTR,...] [--budget SECONDS] [--list] [--dry-run]

--dry-run runs every case on the CPU with a tiny model: it checks the script, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PEAK_TFLOPS = 989.0  # H100 / H200 SXM, dense bf16 (H100 PCIe: 756)
SIZES = {"gpt2-124m": dict(n_layer=12, n_embd=768, n_head=12),
         "gpt2-355m": dict(n_layer=24, n_embd=1024, n_head=16)}
COMMON = dict(vocab_size=50257, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)
DRY_SIZE = dict(n_layer=2, n_embd=64, n_head=4)  # --dry-run: every size is this
TRAIN_BATCH, TRAIN_SEQ = 16, 1024
PROMPT_LEN, NEW_TOKENS = 32, 256
ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8)


# ---- cases -------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    estimate_s: float  # started only when this much time is left
    run: Callable[[], dict]


class Settings:
    quick = False
    dry = False  # CPU, tiny model, short runs
    device = "cuda"
    workdir = Path(".")
    matmul_tflops: float | None = None
    reference: dict = {}  # (size, batch) -> lmlab eager output, for the "agree" column


def hf_dir(size: str) -> Path:
    """A randomly initialised GPT2LMHeadModel of SIZES[size], saved once (seed 0)."""
    import transformers

    path = Settings.workdir / size
    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        config = transformers.GPT2Config(**COMMON, **(DRY_SIZE if Settings.dry else SIZES[size]))
        transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return path


def load(side: str, size: str, dtype=torch.float32):
    if side == "lmlab":
        import lmlab

        model, _ = lmlab.from_hf(hf_dir(size))
        return model.to(Settings.device, dtype)
    import transformers

    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir(size), dtype=dtype,
                                                        attn_implementation="sdpa").to(Settings.device)


def flops_per_token(size: str, seq: int) -> float:
    """6·N + 12·L·d·T (PaLM, App. B), N = parameters without the position table, tied head once:
    V·d + L·(12·d² + 13·d) + 2·d for GPT-2 (124,439,808 - 786,432 for gpt2-124m)."""
    c = DRY_SIZE if Settings.dry else SIZES[size]
    L, d = c["n_layer"], c["n_embd"]
    n = COMMON["vocab_size"] * d + L * (12 * d * d + 13 * d) + 2 * d
    return 6 * n + 12 * L * d * seq


def sync() -> None:
    if Settings.device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds per call, each call between two synchronizations."""
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def matmul_case() -> dict:
    n = 512 if Settings.dry else 8192
    a, b = (torch.randn(n, n, device=Settings.device, dtype=torch.bfloat16) for _ in range(2))
    out = torch.empty(n, n, device=Settings.device, dtype=torch.bfloat16)
    for _ in range(5):
        torch.matmul(a, b, out=out)
    if Settings.dry:
        times = timed(lambda: torch.matmul(a, b, out=out), 3)
    else:  # CUDA events: the kernel alone, no launch or synchronization gap
        times = []
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b, out=out)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    tflops = 2 * n**3 / statistics.median(times) / 1e12
    Settings.matmul_tflops = tflops
    return {"tflops": tflops, "mfu": 100 * tflops / PEAK_TFLOPS, "note": f"bf16 {n}^3"}


def train_case(side: str, compiled: bool, size: str = "gpt2-124m", variant: str = "") -> dict:
    """lmlab trains the way `lmlab pretrain` does: clm_loss (the model scores its targets) inside
    lmlab.nn.attention.training_attention (cuDNN attention first on Hopper). Ablations (lmlab only):
    variant "flash" keeps PyTorch's own kernel order; "unpadded" scores with the 50,257-row output
    matrix as it is; "reduce-overhead" compiles with mode="reduce-overhead" (CUDA graphs);
    "coordinate-descent" lets inductor tune its Triton kernels' block sizes (layer norms, GELU,
    residual adds and the cross-entropy are a third of a compiled step)."""
    import contextlib

    from lmlab.models import gpt
    from lmlab.nn.attention import training_attention
    from lmlab.objectives.clm import clm_loss
    from lmlab.train.optim import make_optimizer, param_groups

    model = load(side, size).train()
    if side == "lmlab":  # what `lmlab pretrain` makes: fused AdamW, decay on matrices only
        optimizer = make_optimizer(model, ADAMW["lr"], 0.1, ADAMW["betas"], Settings.device)
    else:  # what the HF Trainer makes by default on torch >= 2.8 (optim="adamw_torch_fused")
        optimizer = torch.optim.AdamW(param_groups(model, 0.1), fused=Settings.device == "cuda", **ADAMW)
    if side == "hf":
        def loss_of(x, y):
            return model(input_ids=x, labels=x).loss
    else:
        def loss_of(x, y):
            return clm_loss(model, (x, y))
    if compiled:
        torch._dynamo.reset()  # a fresh compile per case (main() also turns inductor's caches off)
        mode = "reduce-overhead" if variant == "reduce-overhead" else None
        loss_of = (torch.compile(loss_of, backend="eager") if Settings.dry
                   else torch.compile(loss_of, mode=mode))
    padding = gpt.PAD_OUTPUT_ON
    if variant == "unpadded":
        gpt.PAD_OUTPUT_ON = set()
    batch, seq = (2, 64) if Settings.dry else (TRAIN_BATCH, TRAIN_SEQ)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, COMMON["vocab_size"], (batch, seq), generator=g).to(Settings.device)
    y = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)  # next token; the last has none

    def kernels():  # a fresh context per step: sdpa_kernel's can be entered once
        if side == "lmlab" and variant != "flash":
            return training_attention(Settings.device)
        return contextlib.nullcontext()

    def step() -> torch.Tensor:
        with torch.autocast(Settings.device, dtype=torch.bfloat16), kernels():
            loss = loss_of(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # inductor reads the option when it compiles, on the first step
    tuning = torch._inductor.config.patch(coordinate_descent_tuning=variant == "coordinate-descent")
    try:
        with tuning:
            start = time.perf_counter()
            loss0 = float(step())  # the same weights and batch: the first losses of both sides agree
            setup = time.perf_counter() - start
            warmup, repeats = (1, 3) if Settings.quick else (3, 8)
            for _ in range(warmup):
                step()
            seconds = statistics.median(timed(step, repeats))
            breakdown = kernel_breakdown(step) if side == "lmlab" and compiled and not variant else None
    finally:
        gpt.PAD_OUTPUT_ON = padding
    tok_s = batch * seq / seconds
    tflops = tok_s * flops_per_token(size, seq) / 1e12
    row = {"tok_s": tok_s, "step_ms": 1e3 * seconds, "tflops": tflops, "mfu": 100 * tflops / PEAK_TFLOPS,
           "setup_s": setup, "loss0": loss0, "note": f"{size} {batch}x{seq}"}
    if Settings.matmul_tflops:
        row["mfu_matmul"] = 100 * tflops / Settings.matmul_tflops
    if breakdown:
        row["kernels_ms"] = breakdown
        row["note"] += " | ms: " + ", ".join(f"{k} {v:.1f}" for k, v in row["kernels_ms"].items()
                                             if k != "top")
        log("  longest kernels:\n    " + "\n    ".join(row["kernels_ms"]["top"]))
    return row


KERNEL_KINDS = [("attention", ("flash", "fmha", "cudnn", "sdpa", "attn")),
                ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90_", "sm80_")),
                ("adamw", ("adam",)), ("triton", ("triton",))]  # first match wins


def kernel_breakdown(step: Callable[[], object]) -> dict:
    """GPU milliseconds of one training step by kind of kernel (torch.profiler), plus the 15
    longest kernels: where the step's time goes. (--dry-run: CPU operators instead.)"""
    from torch.profiler import ProfilerActivity, profile

    gpu = Settings.device == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if gpu else ProfilerActivity.CPU]) as prof:
        step()
        sync()
    totals: dict[str, float] = {}
    kernels = []
    for event in prof.key_averages():
        ms = (event.self_device_time_total if gpu else event.self_cpu_time_total) / 1e3
        if ms <= 0:
            continue
        name = event.key.lower()
        kind = next((k for k, words in KERNEL_KINDS if any(w in name for w in words)), "other")
        totals[kind] = totals.get(kind, 0.0) + ms
        kernels.append((ms, event.key[:70]))
    out = {"total": sum(totals.values()), **dict(sorted(totals.items(), key=lambda kv: -kv[1]))}
    out["top"] = [f"{ms:.2f} ms {name}" for ms, name in sorted(kernels, reverse=True)[:15]]
    return out


def generate_call(side: str, model, ids: torch.Tensor, new: int) -> Callable[[], torch.Tensor]:
    if side.startswith("lmlab"):
        import lmlab

        compile = side == "lmlab-compile"
        return lambda: lmlab.generate(model, ids, max_new_tokens=new, compile=compile)
    options = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                   min_new_tokens=new, pad_token_id=0, use_cache=True)
    if side == "hf-static":
        options["cache_implementation"] = "static"  # transformers 5 compiles the decoding step itself

    def run():
        with torch.inference_mode():
            return model.generate(ids, **options)
    return run


def generate_case(size: str, batch: int, side: str) -> dict:
    import warnings

    new = 8 if Settings.dry else 64 if Settings.quick else NEW_TOKENS
    model = load("lmlab" if side.startswith("lmlab") else "hf", size, torch.bfloat16).eval()
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, COMMON["vocab_size"], (batch, PROMPT_LEN), generator=g).to(Settings.device)
    run = generate_call(side, model, ids, new)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        out = run()
        sync()
        setup = time.perf_counter() - start
        times = timed(run, 1 if Settings.quick else 3)
    tok_s = batch * new / statistics.median(times)
    new_tokens = out[:, PROMPT_LEN:].cpu()
    key = (size, batch)
    if side == "lmlab":
        Settings.reference[key] = new_tokens
    row = {"tok_s": tok_s, "setup_s": setup, "note": f"{size} b{batch} {PROMPT_LEN}+{new}"}
    if key in Settings.reference and Settings.reference[key].shape == new_tokens.shape:
        row["agree"] = float((Settings.reference[key] == new_tokens).float().mean())
    if side == "lmlab-compile":
        row["logit_rel_diff"] = static_vs_eager(model, ids, new)
        row["note"] += f" | max rel logit diff vs eager {row['logit_rel_diff']:.1e}"
    fallback = [str(w.message) for w in caught if "compile=True" in str(w.message)]
    if fallback:
        row["note"] += " | " + fallback[0][:120]
    return row


def static_vs_eager(model, ids: torch.Tensor, new: int, steps: int = 8) -> float:
    """Teacher-forced check of the compiled path: max |logits - eager logits| / max |eager logits|
    over the prompt and `steps` tokens (both fed the eager argmax). bf16: about 1e-2; a bug: ~1."""
    from lmlab.generate.compiled import static_cache_steps
    from lmlab.generate.loop import state_steps

    model.eval()
    with torch.no_grad():
        want, eager_step = state_steps(model, ids, None, new)
        got, static_step = static_cache_steps(model, ids, None, new)  # the decoder generate() made
        worst = 0.0
        for _ in range(steps):
            scale = float(want.float().abs().max())
            worst = max(worst, float((got.float() - want.float()).abs().max()) / scale)
            token = want.argmax(-1)
            want, got = eager_step(token), static_step(token)
    return worst


def all_cases() -> list[Case]:
    """Most important first (the time guard cuts the tail): the matmul peak, training eager and
    compiled on both sides, batch-1 then batch-32 generation, the training ablations, the larger model.
    Estimates are typical first-run times on an H100, compiling included."""
    def train(side: str, compiled: bool, variant: str = "") -> Case:
        mode = ("compile" if compiled else "eager") + (f"-{variant}" if variant else "")
        name = f"train/{side}/{mode}"
        seconds = 150 if variant == "coordinate-descent" else 60 if compiled else 15  # tuning compiles longer
        return Case(name, seconds, lambda: train_case(side, compiled, variant=variant))

    def generate(size: str, batch: int) -> list[Case]:
        estimate = {"lmlab": 8, "lmlab-compile": 30, "hf-dynamic": 12, "hf-static": 40}
        return [Case(f"gen/{size}/b{batch}/{side}", seconds,
                     lambda side=side: generate_case(size, batch, side))
                for side, seconds in estimate.items()]

    return [Case("matmul", 5, matmul_case), train("lmlab", False), train("hf", False), train("lmlab", True),
            train("hf", True), *generate("gpt2-124m", 1), *generate("gpt2-124m", 32),
            *(train("lmlab", True, variant)
              for variant in ("flash", "unpadded", "reduce-overhead", "coordinate-descent")),
            *generate("gpt2-355m", 1), *generate("gpt2-355m", 32)]


# ---- running -----------------------------------------------------------------------------------
class OutOfTime(Exception):
    pass


def _alarm(signum, frame):
    raise OutOfTime("global time budget reached")


def run_all(cases: list[Case], budget: float) -> list[dict]:
    deadline = time.monotonic() + budget
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(budget)))  # the last resort: interrupts a case that runs past the budget
    rows, out_of_time = [], False
    try:
        for case in cases:
            left = deadline - time.monotonic()
            if out_of_time or left < case.estimate_s:
                rows.append({"case": case.name, "status": "skipped",
                             "note": f"time budget ({left:.0f} s left, needs ~{case.estimate_s:.0f} s)"})
                continue
            gc.collect()
            if Settings.device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            log(f"{case.name} ...")
            start = time.perf_counter()
            try:
                row = {"case": case.name, "status": "ok", **case.run()}
            except OutOfTime:
                out_of_time = True
                row = {"case": case.name, "status": "error", "note": "stopped: global time budget reached"}
            except Exception as e:  # noqa: BLE001 - one failing case keeps the rest
                first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
                row = {"case": case.name, "status": "error", "note": f"{type(e).__name__}: {first}"}
                traceback.print_exc(limit=3, file=sys.stderr)
            if Settings.device == "cuda":
                row["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            row["wall_s"] = time.perf_counter() - start
            rows.append(row)
            log(f"  {row['status']} in {row['wall_s']:.1f} s: {summary(row)}")
    finally:
        signal.alarm(0)
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """ratio = lmlab tok/s / HF tok/s in the same mode (train: eager/compile; generate: eager vs
    dynamic cache, compile vs static cache)."""
    speed = {r["case"]: r.get("tok_s") for r in rows if r.get("status") == "ok"}
    peers = {"train/lmlab/eager": "train/hf/eager", "train/lmlab/compile": "train/hf/compile"}
    for name in speed:
        if name.startswith("train/lmlab/compile-"):  # the ablations
            peers[name] = "train/hf/compile"
        if name.startswith("gen/") and name.endswith("/lmlab"):
            peers[name] = name[:-len("lmlab")] + "hf-dynamic"
        if name.endswith("/lmlab-compile"):
            peers[name] = name[:-len("lmlab-compile")] + "hf-static"
    for r in rows:
        mine, peer = speed.get(r["case"]), speed.get(peers.get(r["case"], ""))
        if mine and peer:
            r["ratio"] = mine / peer


def summary(row: dict) -> str:
    keys = ("tok_s", "tflops", "mfu", "peak_gb", "setup_s", "loss0", "agree", "note")
    return ", ".join(f"{k}={row[k]:.3g}" if isinstance(row[k], float) else f"{k}={row[k]}"
                     for k in keys if k in row)


COLUMNS = [("case", "case"), ("status", "status"), ("tok_s", "tok/s"), ("ratio", "vs HF"),
           ("tflops", "TFLOP/s"), ("mfu", "MFU% 989"), ("mfu_matmul", "MFU% matmul"),
           ("peak_gb", "peak GB"), ("setup_s", "setup s"), ("agree", "agree"), ("note", "note")]


def table(rows: list[dict]) -> str:
    def fmt(key, value):
        if value is None or value == "":
            return ""
        if isinstance(value, float):
            if key in ("ratio", "agree"):
                return f"{value:.2f}"
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"
        return str(value)

    cells = [[h for _, h in COLUMNS]] + [[fmt(k, r.get(k)) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    last = len(COLUMNS) - 1
    lines = ["  ".join(c.ljust(w) if i in (0, 1, last) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
             for line in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def env_info() -> dict:
    import platform

    import transformers

    import lmlab

    gpu = {"gpu": "cpu (dry run: numbers mean nothing)"}
    if Settings.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu = {"gpu": torch.cuda.get_device_name(0), "gpu_memory_gb": round(props.total_memory / 2**30, 1),
               "capability": f"{props.major}.{props.minor}"}
    return {**gpu, "cuda": torch.version.cuda, "torch": torch.__version__,
            "transformers": transformers.__version__, "lmlab": lmlab.__version__,
            "python": platform.python_version(),
            "peak_tflops_assumed": PEAK_TFLOPS, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_json(payload: dict) -> list[str]:
    text = json.dumps(payload, indent=2) + "\n"
    targets = [RESULTS / "gpu.json"]
    if os.environ.get("OUT"):
        targets.insert(0, Path(os.environ["OUT"]) / "gpu.json")
    written = []
    for path in targets:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
            written.append(str(path))
        except OSError as e:
            log(f"could not write {path}: {e}")
    return written


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer timed steps, 64 new tokens, gpt2-124m generation only")
    parser.add_argument("--cases", default=None,
                        help="comma-separated substrings: run the cases whose name contains one "
                             "(e.g. matmul,train/lmlab,gen/gpt2-124m/b1); see --list")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all cases (default 270, quick 150); later cases are skipped")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="every case on the CPU with a tiny model: checks the script, no results file")
    args = parser.parse_args(argv)
    cases = all_cases()
    if args.quick:
        cases = [c for c in cases if "gpt2-355m" not in c.name]
    if args.cases:
        wanted = [w.strip() for w in args.cases.split(",") if w.strip()]
        cases = [c for c in cases if any(w in c.name for w in wanted)]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    if not torch.cuda.is_available() and not args.dry_run:
        print("CUDA not available: benchmarks/gpu.py needs a CUDA GPU (nothing was measured)")
        return 1
    Settings.quick, Settings.dry = args.quick, args.dry_run
    import transformers

    transformers.utils.logging.disable_progress_bar()  # the log keeps one line per case
    Settings.device = "cpu" if args.dry_run else "cuda"
    # Every compile from scratch: dynamo's and inductor's caches would hand a case the graph an
    # earlier case traced (their keys do not see the attention kernel order, so compile-flash would
    # rerun the cuDNN graph), and "setup s" would depend on what ran before.
    torch._inductor.config.force_disable_caches = True
    budget = args.budget or (150.0 if args.quick else 270.0)
    env = env_info()
    log(f"gpu: {env['gpu']}, torch {env['torch']}, CUDA {env['cuda']}, transformers {env['transformers']}; "
        f"{len(cases)} cases, budget {budget:.0f} s")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        Settings.workdir = Path(tmp)
        rows = run_all(cases, budget)
    payload = {"benchmark": "gpu", "env": env, "quick": args.quick, "budget_s": budget,
               "wall_s": round(time.perf_counter() - started, 1),
               "train": {"batch": TRAIN_BATCH, "seq": TRAIN_SEQ, "dtype": "bf16 autocast", "optimizer":
                         "AdamW fused", "flops_per_token_124m": flops_per_token("gpt2-124m", TRAIN_SEQ)},
               "generate": {"prompt": PROMPT_LEN, "new": 64 if args.quick else NEW_TOKENS,
                            "dtype": "bf16", "greedy": True},
               "rows": rows}
    for path in ([] if Settings.dry else write_json(payload)):
        log(f"wrote {path}")
    print(f"{env['gpu']} | torch {env['torch']} | transformers {env['transformers']} | "
          f"{payload['wall_s']:.0f} s")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
