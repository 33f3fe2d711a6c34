"""ULMFiT's low-shot claim, small (Howard & Ruder 2018, §5 "Low-shot learning", Figure 3, on IMDb's
full reviews): with n labelled examples, ULMFiT against the same network trained from scratch.

    PYTHONPATH=src python experiments/ulmfit_lowshot.py --lm runs/ptb-lm --out runs/ulmfit-lowshot \
        [--sizes 100] [--seeds 0,1,2] [--variants scratch,ulmfit]

Data (every text PTB-style, experiments/ulmfit.py's `ptb_style`):
- polarity: Pang & Lee's 1,500 full reviews (builtin:polarity, train and dev parts together), in one
  seeded order; the first 200 are the training side, of which the first n are labelled (n in
  --sizes, at most 200); the other 1,300 are the dev set for every n (standard error of an error
  rate near 0.4: sqrt(0.24/1300) = 0.014).
- rotten-tomatoes: the first n training snippets of experiments/ulmfit.py's order, its 1,275 dev
  snippets.
Stage 2 (the paper's semi-supervised setting: the LM reads the unlabelled text of the training side,
never a dev text): one target LM fine-tuned from the general LM on every rotten-tomatoes training
snippet and the 200 training-side polarity reviews (labels unused), 3 epochs, new words at the
mean embedding (experiments/ulmfit.py's task-LM settings). Stage 3: one classifier setting for every
variant, task and n, fixed before any comparison (experiments/ulmfit.py's 100-label setting): 16
epochs of batch 16, BPTT 70, the whole document pooled. A polarity review is cut to its last
sentences, at most 400 words (`tail`; ~55 % of an average review): whole reviews made one run ~15
minutes on this shared CPU.
Variants: `scratch` (same network, random weights, every layer at one rate from the start),
`ulmfit` (the full recipe from the target LM), `nolm` (the recipe from the general LM).
Every stage is an `lmlab` command, printed before it runs; a run whose report.json exists is read,
not rerun. Results: OUT/lowshot.json, OUT/lowshot.md (table), OUT/lowshot.png (dev error vs labels).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

from ulmfit import PY, VARIANTS, jsonl, majority_error, ptb_style, run, write_subsets

NAMES = {"scratch": "from scratch", "ulmfit": "ULMFiT (LM on task text)", "nolm": "ULMFiT, no LM fine-tuning"}
TRAIN_SIDE = 200  # polarity reviews on the training side: the LM may read them, the classifier n of them
TAIL = 400  # the classifier reads each review's last 400 words (whole reviews: ~15 CPU-minutes a run)
CLASSIFIER = ["--epochs", "16", "--batch-size", "16", "--bptt", "70", "--max-len", "100000",
              "--eval-every", "100000", "--save-every", "100000"]


def tail(text: str, words: int = TAIL) -> str:
    """The last sentences (lines) of `text` that hold at most `words` words (a longer last sentence: its
    last `words` words). A review's verdict is mostly at its end."""
    kept, n = [], 0
    for line in reversed(text.split("\n")):
        n += len(line.split())
        if n > words:
            if not kept:
                kept.append(" ".join(line.split()[-words:]))
            break
        kept.append(line)
    return "\n".join(reversed(kept))


def polarity_split(out: Path, sizes: list[int]) -> dict:
    """train-N.jsonl (the first n of the training side), dev.jsonl (the 1,300 others), both with each
    review's tail, and side.txt (the training side's whole texts, for stage 2)."""
    from lmlab.data.corpora import read_task_data

    out.mkdir(parents=True, exist_ok=True)
    reviews = [{"text": ptb_style(r["text"]), "label": r["label"]}
               for part in ("train", "dev") for r in read_task_data("polarity", part)]
    random.Random(0).shuffle(reviews)
    side, dev = reviews[:TRAIN_SIDE], reviews[TRAIN_SIDE:]
    (out / "side.txt").write_text("".join(r["text"] + "\n" for r in side), encoding="utf-8")
    def tails(rows):
        return [{**r, "text": tail(r["text"])} for r in rows]

    return {"train": {n: jsonl(out / f"train-{n}.jsonl", tails(side[:n])) for n in sizes},
            "dev": jsonl(out / "dev.jsonl", tails(dev)), "side": str(out / "side.txt")}


def classifier(lm: str, backbone_lm: str, train: str, dev: str, run_dir: Path, variant: str,
               seed: int) -> dict:
    extend = ["--extend-vocab", "20000"] if backbone_lm == lm else []  # the task's words, as stage 2 adds
    cmd = [*PY, "finetune", backbone_lm, "--task", "classify", "--train", train, "--dev", dev,
           "--out", str(run_dir), "--recipe", "ulmfit", "--seed", str(seed), "--no-progress", *extend,
           *CLASSIFIER, *VARIANTS[NAMES[variant]][1]]
    return run(cmd, run_dir / "report.json")


def summarise(reports: list[dict]) -> dict:
    """Mean dev error over seeds, its standard error: the seeds' spread and the dev sample's
    binomial error together, sqrt(s²/k + p(1-p)/n_dev)."""
    errors = [1 - r["dev_metrics"]["accuracy"] for r in reports]
    k, n_dev = len(errors), reports[0]["n_dev"]
    mean = sum(errors) / k
    seed_var = sum((e - mean) ** 2 for e in errors) / (k - 1) if k > 1 else 0.0
    return {"error": round(mean, 4), "errors": [round(e, 4) for e in errors],
            "se": round(math.sqrt(seed_var / k + mean * (1 - mean) / n_dev), 4),
            "mcc": round(sum(r["dev_metrics"]["mcc"] for r in reports) / k, 4), "n_dev": n_dev,
            "n_train": reports[0]["n_train"], "wall_s": round(sum(r["wall_s"] for r in reports), 1)}


def table(results: dict) -> str:
    lines = ["| task | labels | variant | dev error (mean ± SE) | seeds | MCC | ULMFiT margin |",
             "|---|---|---|---|---|---|---|"]
    for task, sizes in results.items():
        for n, rows in sorted(sizes.items(), key=lambda item: int(item[0])):
            for name, r in rows.items():
                margin = ""
                if name == "ulmfit" and "scratch" in rows:
                    s = rows["scratch"]
                    diff, se = s["error"] - r["error"], math.hypot(s["se"], r["se"])
                    margin = f"{diff:+.3f} ({diff / se:+.1f} SE)"
                seeds = ", ".join(f"{e:.3f}" for e in r["errors"])
                lines.append(f"| {task} (dev {r['n_dev']}) | {n} | {NAMES[name]} | {r['error']:.3f} ± "
                             f"{r['se']:.3f} | {seeds} | {r['mcc']:+.2f} | {margin} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path, majority: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
    for ax, (task, sizes) in zip(axes[0], results.items(), strict=True):
        for variant in NAMES:
            have = sorted((n for n in sizes if variant in sizes[n]), key=int)
            if have:
                rows = [sizes[n][variant] for n in have]
                ax.errorbar([int(n) for n in have], [r["error"] for r in rows], yerr=[r["se"] for r in rows],
                            marker="o", capsize=3, label=NAMES[variant])
        ax.axhline(majority[task], color="grey", linestyle="--", linewidth=1, label="majority class")
        ax.set_xscale("log")
        ticks = sorted(int(n) for n in sizes)
        ax.set_xticks(ticks, [str(n) for n in ticks], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel(f"labelled training examples ({task})")
        ax.set_ylabel("dev error")
        ax.set_title(f"ULMFiT low-shot, {task}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ulmfit-lowshot")
    parser.add_argument("--lm", default="runs/ptb-lm", help="the pretrained general-domain LM dir")
    parser.add_argument("--tasks", default="polarity,rt")
    parser.add_argument("--sizes", default="100", help="labelled examples (polarity: at most 200)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="scratch,ulmfit")
    parser.add_argument("--table-only", action="store_true", help="run nothing: the table and plot of OUT")
    args = parser.parse_args()
    out, sizes = Path(args.out), [int(s) for s in args.sizes.split(",")]
    if max(sizes) > TRAIN_SIDE:
        parser.error(f"--sizes: at most {TRAIN_SIDE} (polarity's training side)")
    pol = polarity_split(out / "polarity", sizes)
    rt = write_subsets(out / "rt", "rotten-tomatoes", sizes)
    lm_text = out / "lm" / "train.txt"
    lm_text.parent.mkdir(parents=True, exist_ok=True)
    lm_text.write_text(Path(rt["lm_text"]).read_text() + Path(pol["side"]).read_text(), encoding="utf-8")
    target = out / "lm" / "model"
    stage2 = run([*PY, "finetune", args.lm, "--task", "lm", "--train", str(lm_text), "--dev", rt["lm_dev"],
                  "--out", str(target), "--recipe", "ulmfit", "--no-progress", "--extend-vocab", "20000",
                  "--epochs", "3", "--batch-size", "32", "--bptt", "70", "--eval-every", "100000",
                  "--save-every", "100000"], target / "report.json")
    backbones = {"scratch": args.lm, "nolm": args.lm, "ulmfit": str(target)}
    path = out / "lowshot.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for task in [] if args.table_only else args.tasks.split(","):
        files = pol if task == "polarity" else rt
        for n in sizes:
            for variant in args.variants.split(","):
                reports = [classifier(args.lm, backbones[variant], files["train"][n], files["dev"],
                                      out / task / f"clf-{n}-{variant}-s{seed}", variant, int(seed))
                           for seed in args.seeds.split(",")]
                results.setdefault(task, {}).setdefault(str(n), {})[variant] = summarise(reports)
                path.write_text(json.dumps({**results, "_stage2": stage2}, indent=1))
                print(f"  {task} n={n} {variant}: {results[task][str(n)][variant]}", flush=True)
    results.pop("_stage2", None)
    (out / "lowshot.md").write_text(table(results))
    majority = {"polarity": majority_error(pol["dev"]), "rt": majority_error(rt["dev"])}
    plot(results, out / "lowshot.png", majority)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
