"""The experiments of docs/ulmfit.md, small enough for a CPU (Howard & Ruder 2018, §4-5, scaled down).

    PYTHONPATH=src python experiments/ulmfit.py [--out runs/ulmfit-exp] [--only rt|polarity]

Every stage is an `lmlab` command (printed before it runs), so this file is also the recipe:
1. general-domain LM: `lmlab pretrain --model ulmfit` on builtin:ptb (expected in --lm, made by the
   command in docs/ulmfit.md), then its test perplexity with the memory protocol;
2. target-domain LM fine-tuning (`lmlab finetune --task lm --recipe ulmfit`), labels unused (the
   paper's semi-supervised setting), new words at the mean embedding: on the rotten-tomatoes training
   snippets alone (rt/lm, 264k tokens), and on those plus the 1,350 polarity training reviews
   (reviews/lm, 1.3M tokens of movie reviews; IMDb's stage 2 also read 50k unlabelled reviews);
3. classifier fine-tuning (`lmlab finetune --task classify --recipe ulmfit`, concat pooling) on 100,
   500 and all labelled rotten-tomatoes snippets, and on the 1,350 polarity training reviews (the
   first 200 tokens of each): from scratch (same network, random weights), ULMFiT from each stage-2
   LM, ULMFiT without LM fine-tuning; at 100 and 500 labels also ULMFiT (review LM) with each of STLR
   (-> cosine), discriminative rates (-> one rate) and gradual unfreezing (-> all layers from the
   start) ablated; with all labels also ULMFiT (task LM) with every layer trained from the start.
   Three training seeds for the main variants at 100 labels, one elsewhere.
--sizes picks which rotten-tomatoes sizes run; the tables hold every run whose report exists.
Every text is first written the way PTB is tokenized (`ptb_style`: lower case, numbers as N, no
punctuation, one sentence per line), so that the pretrained vocabulary covers the task's words.
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
VARIANTS = {  # name -> (classifier backbone: "task"/"reviews" stage-2 LM or "general", extra finetune flags)
    # the paper's baseline: the same network trained on the task alone, every layer at one rate from the
    # start (gradual unfreezing of random layers would leave the classifier on random features)
    "from scratch": ("general", ["--from-scratch", "--no-gradual-unfreezing", "--discriminative", "1"]),
    "ULMFiT (LM on task text)": ("task", []),
    "ULMFiT (LM on reviews)": ("reviews", []),
    "ULMFiT, no LM fine-tuning": ("general", []),
    "- STLR (cosine)": ("reviews", ["--schedule", "cosine", "--warmup-ratio", "0"]),
    "- discriminative": ("reviews", ["--discriminative", "1"]),
    "- gradual unfreezing": ("reviews", ["--no-gradual-unfreezing"]),
    # all labels: 5 epochs of gradual unfreezing never reach the embedding group (see docs/ulmfit.md)
    "ULMFiT (LM on task text), all layers from the start": ("task", ["--no-gradual-unfreezing"]),
}
MAIN = ("from scratch", "ULMFiT (LM on task text)", "ULMFiT (LM on reviews)", "ULMFiT, no LM fine-tuning")
# run dirs named before the review LM existed
DIR_NAMES = {"ULMFiT (LM on task text)": "ULMFiT", "ULMFiT (LM on reviews)": "ULMFiT-reviews",
             "ULMFiT (LM on task text), all layers from the start": "ULMFiT-no-gu"}
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
    """Text written the way the general-domain corpus (Mikolov's PTB) is: lower case, numbers as N,
    clitics split off ('s, n't), hyphenated words whole, *no punctuation* (PTB has none: kept, every
    comma and period was <unk> to the general LM, 26-28 % of the review tokens), one sentence per line
    (a line end is the LM's <eos>, as between PTB's sentences; inside a classifier's document too)."""
    text = re.sub(r"\d[\d,.]*", " N ", text.lower())
    text = re.sub(r"n't\b", " n't", text)
    text = re.sub(r"'(s|re|ve|ll|d|m)\b", r" '\1", text)
    lines = (" ".join(WORD.findall(sentence)) for sentence in re.split(r"[.!?]+(?=\s|$)|\n", text))
    return "\n".join(line for line in lines if line)


WORD = re.compile(r"n't|'[a-z]+|[a-z]+(?:[-&][a-z]+)*|\$|\bN\b")  # PTB's kinds of token


def write_subsets(out: Path, source: str, sizes: list[int | None]) -> dict:
    """JSONL files of the first n training examples in a seeded random order, the dev file, and the
    texts for LM fine-tuning; every text PTB-style (ptb_style)."""
    out.mkdir(parents=True, exist_ok=True)
    from lmlab.data.corpora import read_task_data

    def read(split):
        return [{"text": ptb_style(r["text"]), "label": r["label"]} for r in read_task_data(source, split)]

    train, dev = read("train"), read("dev")
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    files = {}
    for n in sizes:
        files[n] = jsonl(out / f"train-{n or 'all'}.jsonl", [train[i] for i in order[:n or len(train)]])
    text = out / "target-lm.txt"  # every training text, labels unused
    text.write_text("".join(r["text"] + "\n" for r in train), encoding="utf-8")
    dev_text = out / "target-lm-dev.txt"
    dev_text.write_text("".join(r["text"] + "\n" for r in dev), encoding="utf-8")
    return {"train": files, "lm_text": str(text), "lm_dev": str(dev_text),
            "dev": jsonl(out / "dev.jsonl", dev)}


def jsonl(path: Path, rows: list[dict]) -> str:
    """`rows` written to `path` one JSON object a line; the path, as a command argument."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def majority_error(dev: str) -> float:
    """The dev error of always answering the most frequent label of the JSONL file `dev`."""
    labels = [json.loads(line)["label"] for line in Path(dev).read_text(encoding="utf-8").splitlines()]
    return 1 - max(labels.count(x) for x in set(labels)) / len(labels)


def stage2(lm: str, text: str, dev: str, out: Path, flags: list[str]) -> dict:
    """Target-domain LM fine-tuning of the general LM `lm` on `text` into `out`; its report."""
    return run([*PY, "finetune", lm, "--task", "lm", "--train", text, "--dev", dev, "--out", str(out),
                "--recipe", "ulmfit", "--no-progress", *flags], out / "report.json")


def classifier_runs(out: Path, backbones: dict, files: dict, plan: list, clf_flags: dict, run_sizes) -> dict:
    """{size: {variant: row}} for each (size, variant) of `plan`: runs those whose size is in run_sizes,
    reads the reports of the others where they exist."""
    results = {}
    for n, name in plan:
        base, flags = VARIANTS[name]
        if backbones.get(base) is None:
            continue
        extend = [] if base != "general" else ["--extend-vocab", "20000"]  # the task's words, as stage 2
        reports = []
        for seed in SEEDS.get(n, (0,)) if name in MAIN else (0,):
            label = DIR_NAMES.get(name, name).replace(" ", "_").replace(",", "")
            run_dir = out / (f"clf-{n or 'all'}-{label}" + (f"-s{seed}" if seed else ""))
            cmd = [*PY, "finetune", backbones[base], "--task", "classify", "--train", files["train"][n],
                   "--dev", files["dev"], "--out", str(run_dir), "--recipe", "ulmfit", "--seed", str(seed),
                   "--no-progress", *extend, *clf_flags.get(n, clf_flags[None]), *flags]
            done = run_dir / "report.json"
            if n in run_sizes or done.exists():
                reports.append(run(cmd, done))
        if not reports:
            continue
        errors = [round(1 - r["dev_metrics"]["accuracy"], 4) for r in reports]
        row = {"error": round(sum(errors) / len(errors), 4), "errors": errors,
               "mcc": round(sum(r["dev_metrics"]["mcc"] for r in reports) / len(reports), 4),
               **{k: reports[0][k] for k in ("n_train", "steps", "wall_s")}}
        results.setdefault(str(n or "all"), {})[name] = row
        print(f"  n={n or 'all'} {name}: error {row['error']:.3f} {errors}", flush=True)
    return results


def lm_summary(report: dict | None) -> dict | None:
    keys = ("train", "train_tokens", "new_words", "steps", "dev_metrics", "wall_s")
    return None if report is None else {k: report[k] for k in keys}


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


def plot(results: dict, path: Path, majority: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results["tasks"]["rotten-tomatoes"]["classifier"]
    sizes = list(r)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in MAIN:
        have = [s for s in sizes if name in r[s]]
        ax.plot([r[s][name]["n_train"] for s in have], [r[s][name]["error"] for s in have], marker="o",
                label=name)
    if majority is not None:
        ax.axhline(majority, color="grey", linestyle="--", linewidth=1, label="majority class")
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
    parser.add_argument("--sizes", default="100,500,all",
                        help="rotten-tomatoes label counts to run (none: only tabulate the runs there are)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_sizes = {None if s == "all" else int(s) for s in args.sizes.split(",") if s != "none"}
    results = {"lm": args.lm, "ptb_test": test_perplexity(args.lm, out), "tasks": {}, "stage2": {}}
    # dev metrics and a checkpoint at the end only (--eval-every/--save-every past the last step)
    common = ["--bptt", "70", "--batch-size", "32", "--eval-every", "100000", "--save-every", "100000"]
    rt = write_subsets(out / "rt", "rotten-tomatoes", [100, 500, None])
    pol = write_subsets(out / "polarity", "polarity", [None])
    # stage 2 on the rotten-tomatoes snippets alone, and on every training review of both tasks
    task_lm = stage2(args.lm, rt["lm_text"], rt["lm_dev"], out / "rt" / "lm",
                     ["--extend-vocab", "20000", "--epochs", "3", "--batch-size", "32", "--bptt", "70"])
    reviews = out / "reviews" / "lm.txt"
    reviews.parent.mkdir(parents=True, exist_ok=True)
    reviews.write_text(Path(rt["lm_text"]).read_text() + Path(pol["lm_text"]).read_text(), encoding="utf-8")
    reviews_lm = stage2(args.lm, str(reviews), rt["lm_dev"], out / "reviews" / "lm",
                        ["--extend-vocab", "8000", "--epochs", "1", "--batch-size", "32", "--bptt", "70",
                         "--log-every", "20"])
    results["stage2"] = {"rt": lm_summary(task_lm), "reviews": lm_summary(reviews_lm)}
    if args.only in (None, "rt"):
        sizes = [100, 500, None]
        plan = [(n, v) for n in sizes for v in VARIANTS if v in MAIN]
        ablations = [v for v in VARIANTS if v.startswith("- ")]
        plan += [(n, v) for n in (100, 500) for v in ablations]  # ablations last
        plan += [(None, "ULMFiT (LM on task text), all layers from the start")]
        flags = {100: [*common, "--epochs", "16", "--batch-size", "16"], 500: [*common, "--epochs", "10"],
                 None: [*common, "--epochs", "5", "--batch-size", "64"]}
        backbones = {"general": args.lm, "task": str(out / "rt" / "lm"),
                     "reviews": str(out / "reviews" / "lm")}
        clf = classifier_runs(out / "rt", backbones, rt, plan, flags, run_sizes)
        results["tasks"]["rotten-tomatoes"] = {"classifier": clf}
        save_results(out, results, "rotten-tomatoes")
    if args.only in (None, "polarity"):
        # the review LM read polarity's training reviews: it is polarity's own stage 2
        plan = [(None, v) for v in ("from scratch", "ULMFiT (LM on reviews)", "ULMFiT, no LM fine-tuning")]
        clf = classifier_runs(out / "polarity", {"general": args.lm, "reviews": str(out / "reviews" / "lm")},
                              pol, plan, {None: [*common, "--epochs", "3", "--max-len", "200", "--truncate",
                                                 "--pool-len", "140"]}, {None})
        results["tasks"]["polarity"] = {"classifier": clf}
        save_results(out, results, "polarity")
    results = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(tables(results))
    if results["tasks"].get("rotten-tomatoes", {}).get("classifier"):
        plot(results, out / "lowshot.png", majority_error(rt["dev"]))
    print(tables(results))
    return 0


def save_results(out: Path, results: dict, source: str) -> None:
    """results.json with this task's tables replaced, the other tasks' kept as the file has them (two
    runs of this script, --only rt and --only polarity, may write it)."""
    path = out / "results.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    merged = {**old, **{k: v for k, v in results.items() if k != "tasks"},
              "tasks": {**old.get("tasks", {}), source: results["tasks"][source]}}
    path.write_text(json.dumps(merged, indent=1))


if __name__ == "__main__":
    sys.exit(main())
