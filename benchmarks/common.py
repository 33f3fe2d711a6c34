"""Shared pieces of the side-by-side benchmarks: same weights, interleaved timing, peak memory, output.

Timing. Both sides run in one process on the same weights. After `warmup` untimed runs of each,
`repeats` timed runs alternate between the sides, and the order flips every repeat (A B, B A, ...),
so a slow patch of a shared, busy machine hits both sides instead of one. We report the median.

Peak memory. torch's CPU allocator is plain malloc, so tracemalloc does not see tensors. Instead
every (case, side) runs once more in a fresh child process (multiprocessing "spawn"; the two sides'
children at the same time when the cores hold both), started with
MALLOC_MMAP_THRESHOLD_=65536 so that glibc serves every block of 64 KiB or more with its own
mmap and returns it to the kernel on free: resident memory then follows live tensors instead of
keeping freed heap. The child runs the benchmark's setup (load the model, maybe a short warm-up
for lazy imports and kernel caches), runs `gc.collect()`, resets the kernel's peak-RSS
counter (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0), reads VmRSS as the baseline, runs the
measured work once and reads VmHWM. "peak MB" is VmHWM - baseline: the most resident memory the work
added on top of what was already there (activations, KV cache, logits, gradients, optimizer
state, allocator slack), measured the same way for both sides. Where clear_refs cannot be
written, the peak includes loading the model; the results then say `"peak_includes_load": true`.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import queue as queue_module
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built locally; never download
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIDES = ("lmlab", "hf")
REPEATS = 5  # timed repeats per side and case (--repeats overrides, --quick uses 3)
MMAP_THRESHOLD = "MALLOC_MMAP_THRESHOLD_"

# name -> GPT2Config fields. Dropout is off on both sides: the training numbers then compare the
# same arithmetic, and the first-step losses can be checked for equality.
CONFIGS = {
    "small": dict(n_layer=4, n_embd=256, n_head=4),
    "gpt2-124m": dict(n_layer=12, n_embd=768, n_head=12),
}
COMMON = dict(vocab_size=50257, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)


# ---- models ----------------------------------------------------------------------------------
def save_random_model(path: Path, config_class: str, model_class: str, fields: dict, seed: int = 0) -> Path:
    """transformers.<model_class>(<config_class>(**fields)) with HF's own random initialisation
    (seeded), saved with save_pretrained to `path` unless a model is already there."""
    import transformers

    if not (path / "config.json").is_file():
        torch.manual_seed(seed)
        config = getattr(transformers, config_class)(**fields)
        getattr(transformers, model_class)(config).save_pretrained(path)
    return path


def make_hf_dir(name: str, directory: Path) -> Path:
    """A randomly initialised HF GPT2LMHeadModel of CONFIGS[name], saved with save_pretrained."""
    return save_random_model(directory / name, "GPT2Config", "GPT2LMHeadModel", {**COMMON, **CONFIGS[name]})


def load_side(side: str, hf_dir: Path):
    """The model of one side, fp32 on CPU, loaded from the same HF dir (hence the same weights)."""
    if side == "lmlab":
        import lmlab

        model, _ = lmlab.from_hf(hf_dir)
        return model
    import transformers

    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir, dtype=torch.float32)


def hf_attention(model) -> str:
    return str(getattr(model.config, "_attn_implementation", "?"))


# ---- timing ----------------------------------------------------------------------------------
def interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Wall seconds of `repeats` calls of every run, alternating sides, order flipped every repeat.

    Pass a dict as `cpu` to also get each call's process CPU seconds: on a shared machine the wall
    time includes the time the process waited for a core, the CPU time does not.
    """
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            wall, used = time.perf_counter(), time.process_time()
            runs[name]()
            cpu_times[name].append(time.process_time() - used)
            times[name].append(time.perf_counter() - wall)
    if cpu is not None:
        cpu.update(cpu_times)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---- peak memory -----------------------------------------------------------------------------
def _proc_status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child(setup: Callable, args: tuple, threads: int, queue) -> None:
    try:
        torch.set_num_threads(threads)
        work = setup(*args)
        gc.collect()
        reset = _reset_peak_rss()
        base = _proc_status_kb("VmRSS")
        work()
        peak = _proc_status_kb("VmHWM")
        queue.put({"peak_mb": (peak - base) / 1024, "rss_mb": peak / 1024, "peak_includes_load": not reset})
    except BaseException as e:  # report instead of hanging the parent on an empty queue
        queue.put({"error": f"{type(e).__name__}: {e}"})


def peak_memory(setup: Callable, *args, threads: int) -> dict[str, dict]:
    """Run `setup(side, *args)()` for every side, each in a fresh process; the peak resident memory
    each side's work added.

    `setup` must be a module-level function (spawn pickles it by name); it loads what the work needs,
    warms up if it wants, and returns a zero-argument callable: only that call is measured. Each
    child measures only its own resident memory and nothing here is timed, so when the cores allow
    both children their `threads` (2 x threads <= CPUs) they run at the same time; otherwise one
    after the other, since OpenMP threads that outnumber the cores spin and crawl.
    """
    if not Path("/proc/self/status").is_file():
        return {side: {"peak_mb": float("nan"), "rss_mb": float("nan"), "peak_includes_load": True}
                for side in SIDES}
    together = 2 * threads <= (os.cpu_count() or 1)
    groups = [SIDES] if together else [(side,) for side in SIDES]
    results = {}
    for group in groups:
        children = {side: _start_child(setup, (side, *args), threads) for side in group}
        results.update({side: _child_result(*child) for side, child in children.items()})
    for side, result in results.items():
        if "error" in result:
            raise RuntimeError(f"memory child for {setup.__name__}{(side, *args)}: {result['error']}")
    return results


# Imported once by the fork server, so each memory child starts in well under a second instead of
# ~5 s of importing torch and transformers again (about 20 children in `make bench`).
PRELOAD = ["torch", "transformers", "transformers.models.gpt2.modeling_gpt2",
           "transformers.models.bert.modeling_bert", "lmlab", "common"]


def _context():
    """A fork server (POSIX) started with MALLOC_MMAP_THRESHOLD_ set; spawn where there is none.

    The server imports PRELOAD and runs no torch op, so each child forks without any OpenMP
    threads to inherit; glibc read the threshold when the server started, and a fork keeps it.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _start_child(setup: Callable, args: tuple, threads: int):
    ctx = _context()
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(setup, args, threads, queue))
    saved = os.environ.get(MMAP_THRESHOLD)
    os.environ[MMAP_THRESHOLD] = "65536"  # read by glibc when the child starts (see the top)
    try:
        proc.start()
    finally:
        if saved is None:
            del os.environ[MMAP_THRESHOLD]
        else:
            os.environ[MMAP_THRESHOLD] = saved
    return proc, queue


def _child_result(proc, queue) -> dict:
    """The child's report; an error instead of waiting forever when it died before reporting
    (killed, or failed while starting, before `_child` could catch anything)."""
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive() and queue.empty():
                proc.join()
                return {"error": f"the process exited with status {proc.exitcode} before reporting"}
    proc.join()
    return result


# ---- environment and output --------------------------------------------------------------------
# The table columns every side-by-side benchmark shows; each adds its own correctness column.
SPEED_COLUMNS = [("case", "case"), ("lmlab_tok_s", "lmlab tok/s"), ("hf_tok_s", "HF tok/s"),
                 ("ratio", "lmlab/HF"), ("cpu_ratio", "CPU-time ratio"),
                 ("lmlab_peak_mb", "lmlab peak MB"), ("hf_peak_mb", "HF peak MB")]


def run_side_by_side(name: str, doc: str, argv, workdir: Path | None, cases: list[tuple], quick_case: str,
                     run_case: Callable[..., dict], make_dir: Callable[[str, Path], Path],
                     columns: list[tuple[str, str]], large: bool = False,
                     extra: dict | None = None) -> dict:
    """The main() of the side-by-side CPU benchmarks: options, cases, table, results JSON.

    cases are tuples (config name, *case arguments); `--quick` keeps those of `quick_case` and 3
    repeats. Each case runs as run_case(config, *arguments, model_dir, repeats, threads) and gives a
    row or a list of rows; the model dir is make_dir(config, folder) in `workdir` (shared by
    run_all.py) or a temporary folder.
    With large=True, `--large-repeats` sets the repeats of the gpt2-124m cases.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{quick_case} only, 3 repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed repeats per side (default {REPEATS})")
    if large:
        parser.add_argument("--large-repeats", type=int, default=None,
                            help="timed repeats of the gpt2-124m cases (default: --repeats)")
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else REPEATS)
    large_repeats = (getattr(args, "large_repeats", None) or repeats) if large else repeats
    env = env_info()
    log(f"{name}: {env_line(env)}; {repeats} repeats"
        + (f" ({large_repeats} for gpt2-124m)" if large else ""))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = workdir or Path(tmp)
        for config, *arguments in [c for c in cases if not args.quick or c[0] == quick_case]:
            log(f"  {config} {' x '.join(str(a) for a in arguments)} ...")
            n = large_repeats if config == "gpt2-124m" else repeats
            result = run_case(config, *arguments, make_dir(config, folder), n, threads)
            rows += result if isinstance(result, list) else [result]  # a case may give several rows
    payload = {"benchmark": name, "env": env, "repeats": repeats, **(extra or {}), "rows": rows}
    if large:
        payload["large_repeats"] = large_repeats
    path = write_results(name, payload)
    print(table(rows, columns))
    log(f"wrote {path}")
    return payload


def set_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info() -> dict:
    import transformers

    import lmlab

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "lmlab": lmlab.__version__,
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": [round(x, 2) for x in load] if load else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(name: str, payload: dict) -> Path:
    """benchmarks/results/<name>.json, written to a temp file first and renamed."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table; columns are (key, header); floats get at most one decimal, ratios two."""
    def fmt(key, value):
        if isinstance(value, bool):
            return "\u2713" if value else "\u2717"
        if isinstance(value, float):
            return f"{value:.2f}" if key.endswith("ratio") else f"{value:,.1f}"
        return str(value)

    cells = [[header for _, header in columns]]
    cells += [[fmt(k, row.get(k, "")) for k, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]

    def join(line):  # first column left-aligned, numbers right-aligned
        parts = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        return "  ".join(parts)

    lines = [join(line) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def env_line(env: dict) -> str:
    return (f"torch {env['torch']}, transformers {env['transformers']}, {env['cpu']}, "
            f"{env['torch_threads']} threads of {env['cpu_count']} CPUs, "
            f"load average at start {env['loadavg_at_start']}")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_speed(row: dict, runs: dict[str, Callable[[], object]], repeats: int, tokens: int,
              warmup: int = 0) -> dict:
    """Time `runs` (`interleaved`, after `warmup` untimed calls of each); into `row`: tok/s of each
    side (`tokens` per call over the median wall time), the raw times, and the lmlab/HF ratios."""
    cpu = {}
    times = interleaved(runs, repeats, warmup=warmup, cpu=cpu)
    row.update(speed_fields(times, cpu, tokens))
    return row


def speed_fields(times: dict[str, list[float]], cpu: dict[str, list[float]], tokens: int,
                 lmlab: str = "lmlab", hf: str = "hf") -> dict:
    """tok/s of runs `lmlab` and `hf` of one `interleaved` timing, their raw times and ratios."""
    fields = {}
    for side, run in (("lmlab", lmlab), ("hf", hf)):
        fields[f"{side}_tok_s"] = tokens / median(times[run])
        fields[f"{side}_seconds"] = [round(t, 4) for t in times[run]]
        fields[f"{side}_cpu_seconds"] = [round(t, 4) for t in cpu[run]]
    fields["ratio"] = fields["lmlab_tok_s"] / fields["hf_tok_s"]
    fields["cpu_ratio"] = median(cpu[hf]) / median(cpu[lmlab])  # see interleaved
    return fields


def loss_agreement(losses: dict[str, torch.Tensor], tokens: int, tolerance: float) -> dict:
    """Mean loss of each side, the largest per-token difference and whether it is within tolerance;
    `losses` maps each side to its per-token losses, which must have shape (tokens,)."""
    same_shape = all(loss.shape == (tokens,) for loss in losses.values())
    diff = (losses["lmlab"] - losses["hf"]).abs().max().item() if same_shape else float("inf")
    return {**{f"{side}_mean_loss": losses[side].double().mean().item() for side in SIDES},
            "max_loss_diff": diff, "losses_equal": diff < tolerance}


def add_peak_memory(row: dict, setup: Callable, *args, threads: int) -> dict:
    """Peak memory of `setup(side, *args)` for each side, each in a fresh child process."""
    for side, mem in peak_memory(setup, *args, threads=threads).items():
        row[f"{side}_peak_mb"] = mem["peak_mb"]
        row["peak_includes_load"] = mem["peak_includes_load"]
    return row
