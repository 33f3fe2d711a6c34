"""The auxiliary losses of the deep character transformer (Al-Rfou et al. 2018, §2.1), ablated, small.

    python benchmarks/char_aux_ablation.py [--steps 500] [--data builtin:text8-kjv] [--out DIR]

Five runs of the same 12-layer, 64-wide model for the same steps on the same batches (seed 0):
all three auxiliary losses, each one removed (--no-aux-positions, --no-aux-intermediate,
--no-aux-targets), and none. They train at the same time (one process each, one thread each)
with `lmlab pretrain --model char-transformer`; each logs the validation loss of the next
character (the top layer, fixed windows) every --eval-every steps. Then every final model is
scored on the validation split with `lmlab evaluate`: the fast protocol (non-overlapping windows,
the whole split) and the paper's (sliding windows with stride 1: every character predicted from
its full preceding window) on the first --paper-chars characters, and, to measure the gap between
the protocols on the same text, the fast protocol on that prefix too.

Writes benchmarks/results/char_aux_ablation.json and the curves as docs/char-transformer-ablation.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = 128
MODEL = ["d_model=64", "n_layers=12", "n_heads=4", "d_ff=256", f"max_seq_len={CONTEXT}", "dropout=0.0"]
RUNS = {  # name -> the switches that turn losses off
    "all": [],
    "no multiple positions": ["--no-aux-positions"],
    "no intermediate layers": ["--no-aux-intermediate"],
    "no multiple targets": ["--no-aux-targets"],
    "none": ["--no-aux-positions", "--no-aux-intermediate", "--no-aux-targets"],
}


def slug(name: str) -> str:
    return name.replace(" ", "-")


def pretrain_cmd(out: Path, args, switches: list[str]) -> list[str]:
    sets = [x for item in MODEL for x in ("--set", item)]
    return [sys.executable, "-m", "lmlab", "pretrain", "--model", "char-transformer", "--preset", "tiny",
            "--data", args.data, "--out", str(out), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--seq-len", str(CONTEXT), "--lr", str(args.lr),
            "--warmup", str(args.steps // 10), "--eval-every", str(args.eval_every), "--eval-batches", "8",
            "--save-every", "0", "--log-every", "25", "--device", args.device, "--no-progress",
            *switches, *sets]


def evaluate(model_dir: Path, args, env: dict, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "lmlab", "evaluate", str(model_dir), "--data", args.data, "--split", "valid",
           "--device", args.device, "--batch-size", "32", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def curve(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["val_loss"] / math.log(2)) for r in rows if "val_loss" in r]


def plot(curves: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for name, points in curves.items():
        ax.plot([s for s, _ in points], [b for _, b in points], marker=".", label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation bpc (next character, fixed windows)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps of each run (default 500)")
    parser.add_argument("--data", default="builtin:text8-kjv", help="a character corpus (default "
                                                                     "builtin:text8-kjv)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per step (default 16)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--eval-every", type=int, default=50, help="validation every N steps (default 50)")
    parser.add_argument("--paper-chars", type=int, default=2000,
                        help="characters of the validation split scored with the paper's protocol "
                             "(default 2000)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--out", default="runs/char-aux-ablation", help="where the runs go")
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    procs = {name: subprocess.Popen(pretrain_cmd(Path(args.out) / slug(name), args, sw), env=env,
                                    stdout=subprocess.PIPE, text=True) for name, sw in RUNS.items()}
    summaries = {}
    for name, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode:
            sys.exit(f"{name} run failed (exit {proc.returncode})")
        summaries[name] = out.strip().splitlines()[-1]
        common.log(f"{name}: {summaries[name]}")
    trained = time.perf_counter() - start
    rows, curves = [], {}
    prefix = str(args.paper_chars + 1)  # N + 1 characters: N of them predicted
    for name in RUNS:
        run_dir = Path(args.out) / slug(name)
        curves[name] = curve(run_dir)
        fast = evaluate(run_dir, args, env)
        paper = evaluate(run_dir, args, env, "--protocol", "sliding", "--stride", "1", "--max-tokens", prefix)
        fast_prefix = evaluate(run_dir, args, env, "--max-tokens", prefix)
        rows.append({"run": name, "switches": " ".join(RUNS[name]) or "(all on)",
                     "bpc_fast": fast["bpc"], "chars_fast": fast["tokens"],
                     "bpc_paper_prefix": paper["bpc"], "bpc_fast_prefix": fast_prefix["bpc"],
                     "chars_prefix": paper["tokens"], "train_summary": summaries[name],
                     "curve": curves[name]})
        common.log(f"{name}: fast {fast['bpc']:.4f}, prefix paper {paper['bpc']:.4f} "
                   f"fast {fast_prefix['bpc']:.4f}")
    title = (f"char-transformer 12 x 64, context {CONTEXT}, {args.steps} steps x {args.batch_size} windows, "
             f"{args.data}")
    plot(curves, ROOT / "docs" / "char-transformer-ablation.png", title)
    payload = {"data": args.data, "device": args.device, "steps": args.steps, "batch": args.batch_size,
               "lr": args.lr, "context": CONTEXT, "model": MODEL, "rows": rows,
               "eval": "fast: non-overlapping windows of the context over the whole valid split; paper: "
                       "sliding windows, stride 1, first --paper-chars characters (fast_prefix: the same "
                       "characters with the fast protocol)",
               "train_seconds": round(trained, 1), "seconds": round(time.perf_counter() - start, 1)}
    shown = [{k: f"{v:.4f}" if k.startswith("bpc") else v for k, v in r.items()} for r in rows]
    print(common.table(shown, [("run", "auxiliary losses"), ("bpc_fast", "valid bpc (fast)"),
                              ("bpc_fast_prefix", "prefix bpc (fast)"),
                              ("bpc_paper_prefix", "prefix bpc (paper)")]))
    print(f"{payload['seconds']} s in all")
    common.write_results("char_aux_ablation", payload)
    return payload


if __name__ == "__main__":
    main()
