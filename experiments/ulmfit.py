"""The experiments of docs/ulmfit.md, small enough for a CPU (Howard & Ruder 2018, §4-5, scaled down).

    PYTHONPATH=src python experiments/ulmfit.py [--out runs/ulmfit-exp] [--only rt|polarity]

Every stage is an `lmlab` command (printed before it runs), so this file is also the recipe:
1. general-domain LM: `lmlab pretrain --model ulmfit` on builtin:ptb (expected in --lm, made by the
   command in docs/ulmfit.md), then its test perplexity with the memory protocol;
2. target-domain LM fine-tuning (`lmlab finetune --task lm --recipe ulmfit`) on the training texts
   of the task (labels unused: the paper's semi-supervised setting), new words at the mean embedding;
3. classifier fine-tuning (`lmlab finetune --task classify --recipe ulmfit`, concat pooling) on 100,
   500 and all labelled rotten-tomatoes snippets, and on the 1,500 polarity reviews (the first 200
   tokens of each): from scratch (same network, random weights), ULMFiT, ULMFiT without LM
   fine-tuning; at 100 and 500 labels also ULMFiT with each of STLR (-> cosine), discriminative rates
   (-> one rate) and gradual unfreezing (-> all layers from the start) ablated. One seed each.
Every text is first written the way PTB is tokenized (`ptb_style`: lower case, numbers as N,
punctuation split off), so that the pretrained vocabulary covers the task's words.
Results: OUT/results.json, OUT/results.md (tables), OUT/lowshot.png (dev error vs labels). A run
whose report.json exists is not run again, so the script can be stopped and restarted.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

PY = [sys.executable, "-m", "lmlab"]
VARIANTS = {  # name -> (classifier backbone: "lm" fine-tuned / "general", extra finetune flags)
    # the paper's baseline: the same network trained on the task alone, every layer at one rate from the
    # start (gradual unfreezing of random layers would leave the classifier on random features)
    "from scratch": ("general", ["--from-scratch", "--no-gradual-unfreezing", "--discriminative", "1"]),
    "ULMFiT": ("lm", []),
    "ULMFiT, no LM fine-tuning": ("general", []),
    "- STLR (cosine)": ("lm", ["--schedule", "cosine", "--warmup-ratio", "0"]),
    "- discriminative": ("lm", ["--discriminative", "1"]),
    "- gradual unfreezing": ("lm", ["--no-gradual-unfreezing"]),
}
MAIN = ("from scratch", "ULMFiT", "ULMFiT, no LM fine-tuning")
SEEDS = {100: (0, 1, 2)}  # training seeds of the main variants at 100 labels


def run(cmd: list[str], done: Path) -> dict:
    if done.exists():
        return json.loads(done.read_text())
    print("$ lmlab " + " ".join(cmd[3:]), flush=True)
    t = time.time()
    subprocess.run(cmd, check=True)
    print(f"  ({time.time() - t:.0f} s)", flush=True)
    return json.loads(done.read_text())


def ptb_style(text: str) -> str:
    """Text tokenized the way the general-domain corpus (PTB) is: lower case, numbers as N, clitics and
    punctuation split off, so that the pretrained vocabulary covers the task's words."""
    text = re.sub(r"\d[\d,.]*", " N ", text.lower())
    text = re.sub(r"n't\b", " n't", text)
    text = re.sub(r"'(s|re|ve|ll|d|m)\b", r" '\1", text)
    return " ".join(re.sub(r"([^\w\s'])", r" \1 ", text).split())


def write_subsets(out: Path, source: str, sizes: list[int | None]) -> dict:
    """JSONL files of the first n training examples in a seeded random order, the dev file, and the
    texts for LM fine-tuning; every text PTB-style (ptb_style)."""
    from lmlab.data.corpora import read_task_data

    def read(split):
        return [{"text": ptb_style(r["text"]), "label": r["label"]} for r in read_task_data(source, split)]

    train, dev = read("train"), read("dev")
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    files = {}
    for n in sizes:
        path = out / f"train-{n or 'all'}.jsonl"
        chosen = order[:n or len(train)]
        path.write_text("".join(json.dumps(train[i]) + "\n" for i in chosen), encoding="utf-8")
        files[n] = str(path)
    text = out / "target-lm.txt"  # every training text, labels unused
    text.write_text("".join(r["text"] + "\n" for r in train), encoding="utf-8")
    dev_text = out / "target-lm-dev.txt"
    dev_text.write_text("".join(r["text"] + "\n" for r in dev), encoding="utf-8")
    dev_file = out / "dev.jsonl"
    dev_file.write_text("".join(json.dumps(r) + "\n" for r in dev), encoding="utf-8")
    return {"train": files, "lm_text": str(text), "lm_dev": str(dev_text), "dev": str(dev_file)}


def task(out: Path, lm: str, source: str, sizes: list, variants: dict, lm_flags: list,
         clf_flags: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    files = write_subsets(out, source, sizes)
    lm_dir = out / "lm"
    run([*PY, "finetune", lm, "--task", "lm", "--train", files["lm_text"], "--dev", files["lm_dev"], "--out",
         str(lm_dir), "--recipe", "ulmfit", "--extend-vocab", "20000", "--no-progress", *lm_flags],
        lm_dir / "report.json")
    results = {}
    order = [(n, name) for n in sizes for name in variants[n] if name in MAIN]
    order += [(n, name) for n in sizes for name in variants[n] if name not in MAIN]  # ablations last
    for n, name in order:
        base, flags = VARIANTS[name]
        backbone = str(lm_dir) if base == "lm" else lm
        extend = [] if base == "lm" else ["--extend-vocab", "20000"]  # the same vocabulary for all
        reports = []
        for seed in SEEDS.get(n, (0,)) if name in MAIN else (0,):
            run_dir = out / (f"clf-{n or 'all'}-{name.replace(' ', '_').replace(',', '')}"
                             + (f"-s{seed}" if seed else ""))
            cmd = [*PY, "finetune", backbone, "--task", "classify", "--train", files["train"][n], "--dev",
                   files["dev"], "--out", str(run_dir), "--recipe", "ulmfit", "--seed", str(seed),
                   "--no-progress", *extend, *clf_flags.get(n, clf_flags[None]), *flags]
            reports.append(run(cmd, run_dir / "report.json"))
        errors = [round(1 - r["dev_metrics"]["accuracy"], 4) for r in reports]
        row = {"error": round(sum(errors) / len(errors), 4), "errors": errors,
               "mcc": round(sum(r["dev_metrics"]["mcc"] for r in reports) / len(reports), 4),
               **{k: reports[0][k] for k in ("n_train", "steps", "wall_s")}}
        results.setdefault(str(n or "all"), {})[name] = row
        print(f"  {source} n={n or 'all'} {name}: error {row['error']:.3f} {errors}", flush=True)
    lm_report = json.loads((lm_dir / "report.json").read_text())
    return {"lm_finetune": {k: lm_report[k] for k in ("train_tokens", "new_words", "steps", "dev_metrics")},
            "classifier": results}


def test_perplexity(lm: str, out: Path) -> dict:
    path = out / "ptb-test.json"
    if not path.exists():
        print(f"$ lmlab evaluate {lm} --data builtin:ptb --split test --protocol memory", flush=True)
        done = subprocess.run([*PY, "evaluate", lm, "--data", "builtin:ptb", "--split", "test", "--protocol",
                               "memory"], check=True, capture_output=True, text=True)
        path.write_text(done.stdout)
    return json.loads(path.read_text())


def cell(row: dict | None) -> str:
    """error (MCC), mean over seeds with their spread when there are several."""
    if row is None:
        return ""
    errors = row.get("errors", [])
    spread = f" ± {(max(errors) - min(errors)) / 2:.3f}" if len(errors) > 1 else ""
    return f"{row['error']:.3f}{spread} ({row['mcc']:+.2f})"


def tables(results: dict) -> str:
    lines = []
    for source, r in results["tasks"].items():
        sizes = list(r["classifier"])
        lines += [f"\n{source}: dev error (1 - accuracy), MCC in brackets\n", "| variant | " + " | ".join(
            f"{s} labels" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
        names = list(dict.fromkeys(n for s in sizes for n in r["classifier"][s]))
        for name in names:
            cells = [cell(r["classifier"][s].get(name)) for s in sizes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results["tasks"]["rotten-tomatoes"]["classifier"]
    sizes = list(r)
    x = [r[s]["ULMFiT"]["n_train"] for s in sizes]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in MAIN:
        ax.plot(x, [r[s][name]["error"] for s in sizes], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training examples (rotten-tomatoes)")
    ax.set_ylabel("dev error")
    ax.set_title("ULMFiT low-shot (small AWD-LSTM, CPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ulmfit-exp")
    parser.add_argument("--lm", default="runs/ptb-lm", help="the pretrained general-domain LM dir")
    parser.add_argument("--only", choices=("rt", "polarity"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"lm": args.lm, "ptb_test": test_perplexity(args.lm, out), "tasks": {}}
    path = out / "results.json"
    if path.exists():
        results["tasks"] = json.loads(path.read_text()).get("tasks", {})
    # dev metrics and a checkpoint at the end only (--eval-every/--save-every past the last step)
    common = ["--bptt", "70", "--batch-size", "32", "--eval-every", "100000", "--save-every", "100000"]
    if args.only in (None, "rt"):
        results["tasks"]["rotten-tomatoes"] = task(
            out / "rt", args.lm, "rotten-tomatoes", [100, 500, None],
            {100: list(VARIANTS), 500: list(VARIANTS), None: list(MAIN)},  # ablations: the low-shot sizes
            ["--epochs", "3", "--batch-size", "32", "--bptt", "70"],
            {100: [*common, "--epochs", "16", "--batch-size", "16"], 500: [*common, "--epochs", "10"],
             None: [*common, "--epochs", "5", "--batch-size", "64"]})
        path.write_text(json.dumps(results, indent=1))
    if args.only in (None, "polarity"):
        results["tasks"]["polarity"] = task(
            out / "polarity", args.lm, "polarity", [None], {None: list(MAIN)},
            ["--steps", "100", "--batch-size", "32", "--bptt", "70"],
            {None: [*common, "--epochs", "3", "--max-len", "200", "--truncate", "--pool-len", "140"]})
        path.write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(tables(results))
    if "rotten-tomatoes" in results["tasks"]:
        plot(results, out / "lowshot.png")
    print(tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
