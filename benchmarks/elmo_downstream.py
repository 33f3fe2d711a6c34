"""ELMo used the paper's way (Peters et al. 2018 §3.3, §5), small and on CPU: word vectors alone vs word
vectors + a learned mix of a frozen ELMo's layers, with the same task model and budget.

    python benchmarks/elmo_downstream.py [--work DIR] [--stage pretrain|downstream|report|all]
                                         [--pretrain-steps N] [--threads N] [--inputs glove|...]

1. pretrain: `lmlab pretrain --model elmo` on builtin:ptb (WSJ text, lowercased, the largest built-in
   English text that fits the budget) at a size a shared two-core CPU trains in ~25 minutes: the
   `small` preset's layout made smaller (token representation and projections 64, 256 LSTM cells,
   320 character filters of widths 1-5, one highway layer), batches of 64 x 20 tokens per direction,
   a 1024-word sampled softmax in training (the full softmax for validation), no dropout (the run
   sees the corpus about once).
2. downstream: `lmlab finetune MODEL --features --word-vectors builtin:glove-6b-50d` on
   builtin:rotten-tomatoes (classify: biLSTM + max-pool) and builtin:wsj-pos (tag: biLSTM), MODEL =
   `none` (GloVe alone) or the ELMo run (GloVe + mix, the ELMo reading lowercased words as it was
   trained). Same task model (one biLSTM layer of 100 units per direction), dropout 0.5 on its input and
   output, batch 32, seed 0; per task the same epochs and peak lr (classify 3 epochs at 1e-3, tag 20
   epochs at 1e-2: 901 sentences make 28 steps an epoch), linear warmup and decay.
3. report: the dev-set table (markdown) and the learned mix weights softmax(s) per task as one PNG
   (docs/img/elmo_mix_weights.png); numbers also in benchmarks/results/elmo_downstream.json.

Data and runs go under --work (default runs/elmo-downstream), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VECTORS = "builtin:glove-6b-50d"
ELMO = ["--model", "elmo", "--preset", "small", "--data", "builtin:ptb", "--set", "d_model=64",
        "--set", "d_lstm=256", "--set", "char_filters=[[1,16],[2,16],[3,32],[4,64],[5,64]]",
        "--set", "n_highway=1", "--set", "dropout=0.0", "--sampled-softmax", "1024", "--batch-size", "64",
        "--lr", "2e-3", "--warmup", "50", "--eval-every", "300", "--eval-batches", "20",
        "--save-every", "300"]
TASKS = {  # task -> (data, epochs, peak lr): 11,477 training texts vs 901 sentences
    "classify": ("builtin:rotten-tomatoes", 3, "1e-3"),
    "tag": ("builtin:wsj-pos", 20, "1e-2"),
}
TASK_MODEL = ["--features", "--word-vectors", VECTORS, "--lstm-dim", "100", "--dropout", "0.5",
              "--batch-size", "32", "--seed", "0"]


def lmlab(args: list[str], threads: int) -> float:
    """Run `python -m lmlab ARGS` with `threads` torch threads; wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    print("+ lmlab " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lmlab", *args, "--no-progress"], check=True, env=env)
    return time.perf_counter() - start


def pretrain(work: Path, steps: int, threads: int) -> None:
    out = work / "elmo-ptb"
    resume = ["--resume"] if (out / "checkpoints").exists() else []
    lmlab(["pretrain", *ELMO, "--steps", str(steps), "--out", str(out), *resume], threads)


def downstream(work: Path, threads: int, inputs: str = "both") -> None:
    for task, (data, epochs, lr) in TASKS.items():
        for name, model in (("glove", "none"), ("glove+elmo", str(work / "elmo-ptb"))):
            out = work / f"{task}-{name}"
            if (out / "report.json").exists() or inputs not in ("both", name):
                continue
            extra = ["--lowercase"] if model != "none" else []
            lmlab(["finetune", model, "--task", task, "--train", data, "--dev", data, "--out", str(out),
                   "--epochs", str(epochs), "--lr", lr, *TASK_MODEL, *extra], threads)


def report(work: Path) -> dict:
    rows, weights = [], {}
    metrics = [json.loads(x) for x in (work / "elmo-ptb" / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if "val_loss" in m][-1]
    train = [m for m in metrics if "loss" in m][-1]
    for task in TASKS:
        for name in ("glove", "glove+elmo"):
            r = json.loads((work / f"{task}-{name}" / "report.json").read_text())
            m = r["dev_metrics"]
            rows.append({"task": task, "data": r["dev"], "inputs": name, "accuracy": round(m["accuracy"], 4),
                         "dev_loss": round(m["loss"], 4), "n_dev": r["n_dev"], "steps": r["steps"],
                         "oov_types": r["oov"]["types"], "oov_token_share": r["oov"]["token_share"],
                         "wall_s": r["wall_s"], "mix_weights": r.get("mix_weights")})
            if r.get("mix_weights"):
                weights[task] = r["mix_weights"]
    result = {"elmo": {"steps": val["step"], "tokens": train["tokens"], "val_ppl": round(val["val_ppl"], 1),
                       "val_forward_ppl": round(val["val_forward_ppl"], 1),
                       "val_backward_ppl": round(val["val_backward_ppl"], 1)},
              "rows": rows}
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "elmo_downstream.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(weights, ROOT / "docs" / "img" / "elmo_mix_weights.png")
    print(table(result))
    return result


def table(result: dict) -> str:
    e = result["elmo"]
    lines = [f"ELMo: {e['steps']} steps, {e['tokens']:,} tokens of builtin:ptb; valid ppl {e['val_ppl']} "
             f"(forward {e['val_forward_ppl']}, backward {e['val_backward_ppl']})", "",
             "| task (dev) | inputs | accuracy | dev loss | mix weights softmax(s), layers 0/1/2 | wall s |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        w = " / ".join(f"{x:.2f}" for x in r["mix_weights"]) if r["mix_weights"] else "-"
        lines.append(f"| {r['task']} ({r['data']}, {r['n_dev']}) | {r['inputs']} | {r['accuracy']:.4f} | "
                     f"{r['dev_loss']:.4f} | {w} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def plot(weights: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    n = max(len(w) for w in weights.values())
    width = 0.8 / len(weights)
    for i, (task, w) in enumerate(weights.items()):
        ax.bar([j + (i - (len(weights) - 1) / 2) * width for j in range(len(w))], w, width, label=task)
    ax.set_xticks(range(n), ["0: tokens (char CNN)", *(f"{j}: biLSTM {j}" for j in range(1, n))])
    ax.axhline(1 / n, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("softmax(s)")
    ax.set_title("ELMo mix weights learned per task")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(ROOT / "runs" / "elmo-downstream"))
    parser.add_argument("--stage", choices=("pretrain", "downstream", "report", "all"), default="all")
    parser.add_argument("--pretrain-steps", type=int, default=900)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--inputs", choices=("glove", "glove+elmo", "both"), default="both",
                        help="downstream runs to do (the glove runs need no pretrained ELMo)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.stage in ("pretrain", "all"):
        pretrain(work, args.pretrain_steps, args.threads)
    if args.stage in ("downstream", "all"):
        downstream(work, args.threads, args.inputs)
    if args.stage in ("report", "all"):
        report(work)


if __name__ == "__main__":
    main()
