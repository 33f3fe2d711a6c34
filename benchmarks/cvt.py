"""Cross-view training (Clark et al. 2018, §4: supervised vs CVT), small and on CPU:
the same tagger trained on labeled sentences alone or with CVT on unlabeled text, same labeled budget.

    python benchmarks/cvt.py [--work DIR] [--stage data|runs|report|all] [--steps N] [--threads N]
                             [--only NAME,...]

1. data: builtin:wsj-pos's training part (901 sentences) cut to 10% and 50% (a fixed random choice,
   seed 0; written as CoNLL columns), and the unlabeled text: builtin:ptb's valid and test splits
   (Mikolov's split: WSJ sections 21-24, 7,131 sentences, lowercased, numbers as N, rare words <unk>).
   Not its train split: that holds WSJ section 00, which the wsj-pos sample (wsj_0001 onwards) comes
   from, dev sentences included.
2. runs: `lmlab finetune none --task tag --cvt` (a new `small` CVT tagger: 50-d GloVe words read
   lowercased, char CNN, biLSTM 128 + 64 units per direction, 64-unit prediction modules, dropout 0.5),
   batch 16, peak lr 3e-3 (linear warmup 10% and decay), seed 0, `--steps` labeled batches per run
   (default 300; a CVT run makes as many unlabeled steps in between, so twice the optimizer steps).
   Dev: builtin:wsj-pos's 100 held-out sentences (token accuracy), builtin:chunking's 8 (span F1,
   conlleval). Runs: wsj-pos at 10%, 50%, 100% and chunking (its 32 sentences, CHUNK_STEPS labeled
   batches), each supervised-only and CVT; wsj-pos 10% with CVT on in-domain unlabeled text (the other
   90% of the training sentences, their labels withheld); wsj-pos 10% at peak lr 1e-2, both ways, with
   300 and with LONG_STEPS labeled batches;
   multi-task CVT (wsj-pos 10% + chunking on one encoder, CHUNK_STEPS labeled batches of each)
   against the single-task CVT runs.
3. report: the table (markdown, printed), learning curves (dev score against labeled batches seen) in
   docs/img/cvt_curves.png, everything in benchmarks/results/cvt.json.

Runs go under --work (default runs/cvt), never into the repository; a finished run is not redone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

FRACTIONS = (10, 50)
COMMON = ["--cvt", "--cvt-preset", "small", "--word-vectors", "builtin:glove-6b-50d", "--lowercase",
          "--batch-size", "16", "--seed", "0", "--device", "cpu", "--no-progress",
          "--log-every", "25"]
LR = "3e-3"  # peak learning rate (a run may set its own)
LONG_STEPS = 600  # labeled batches of the pos10 "long" runs
CHUNK_STEPS = 150  # labeled batches of the chunking runs: 32 sentences are 2 batches, so 75 epochs
EVALS = 12  # dev evaluations per run (the learning curve's points)


def runs(work: Path) -> dict[str, dict]:
    """name -> the run's data and settings."""
    data = work / "data"
    out = {}
    for frac in (*FRACTIONS, 100):
        train = "builtin:wsj-pos" if frac == 100 else str(data / f"wsj-pos-{frac}.conll")
        for mode in ("supervised", "cvt"):
            out[f"pos{frac}-{mode}"] = {"task": "wsj-pos", "labeled": frac, "mode": mode, "train": train,
                                        "dev": "builtin:wsj-pos", "metric": "accuracy"}
    for mode in ("supervised", "cvt"):
        out[f"chunk-{mode}"] = {"task": "chunking", "labeled": 100, "mode": mode, "train": "builtin:chunking",
                                "dev": "builtin:chunking", "metric": "f1", "steps": CHUNK_STEPS}
    # The same 10% with in-domain unlabeled text: the other 90% of the training sentences, labels withheld.
    out["pos10-cvt-rest"] = {"task": "wsj-pos", "labeled": 10, "mode": "cvt",
                             "train": str(data / "wsj-pos-10.conll"), "dev": "builtin:wsj-pos",
                             "metric": "accuracy",
                             "unlabeled": str(data / "wsj-pos-rest-10.txt")}
    # The same 10% at a higher peak lr (closer to convergence in the same budget).
    for mode in ("supervised", "cvt"):
        out[f"pos10-{mode}-lr1e-2"] = {**out[f"pos10-{mode}"], "lr": "1e-2"}
    # ... and for twice the labeled batches.
    for mode in ("supervised", "cvt"):
        out[f"pos10-{mode}-long"] = {**out[f"pos10-{mode}"], "lr": "1e-2", "steps": LONG_STEPS}
    out["pos10+chunk-cvt"] = {"task": "wsj-pos + chunking", "labeled": 10, "mode": "cvt multi-task",
                              "train": str(data / "wsj-pos-10.conll"), "dev": "builtin:wsj-pos",
                              "metric": "accuracy", "also": "builtin:chunking", "steps": CHUNK_STEPS}
    return out


def make_data(work: Path) -> None:
    from lmlab.data.corpora import read_corpus
    from lmlab.tasks import tag

    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    sentences = tag.read("builtin:wsj-pos", "train", {})
    order = list(range(len(sentences)))
    random.Random(0).shuffle(order)
    for frac in FRACTIONS:
        chosen = [sentences[i] for i in sorted(order[:round(len(sentences) * frac / 100)])]
        text = "".join("".join(f"{w} {t}\n" for w, t in zip(s.words, s.labels, strict=True)) + "\n"
                       for s in chosen)
        (data / f"wsj-pos-{frac}.conll").write_text(text, encoding="utf-8")
        rest = [sentences[i] for i in sorted(order[round(len(sentences) * frac / 100):])]
        (data / f"wsj-pos-rest-{frac}.txt").write_text("".join(" ".join(s.words) + "\n" for s in rest),
                                                        encoding="utf-8")
    lines = [x.strip() for split in ("valid", "test") for x in read_corpus("builtin:ptb", split) if x.strip()]
    (data / "unlabeled.txt").write_text("".join(x + "\n" for x in lines), encoding="utf-8")


def lmlab(args: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    print("+ lmlab " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lmlab", *args], check=True, env=env)
    return time.perf_counter() - start


def train(work: Path, default_steps: int, threads: int, only: set[str] | None) -> None:
    for name, run in runs(work).items():
        out = work / name
        if (out / "report.json").exists() or (only and name not in only):
            continue
        steps = run.get("steps", default_steps)
        cvt = run["mode"] != "supervised"
        sets = 2 if "also" in run else 1
        period = sets * (2 if cvt else 1)  # optimizer steps per labeled batch of the main tag set
        extra = (["--unlabeled", run.get("unlabeled", str(work / "data" / "unlabeled.txt"))] if cvt else [])
        extra += ["--also-task", run["also"]] if "also" in run else []
        lmlab(["finetune", "none", "--task", "tag", "--train", run["train"], "--dev", run["dev"],
               "--out", str(out), *COMMON, "--lr", run.get("lr", LR), "--steps", str(steps * period),
               "--eval-every", str(steps * period // EVALS), "--save-every", str(steps * period), *extra],
              threads)


def curve(out: Path, metric: str, period: int) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"] // period, r[f"val_{metric}"]) for r in rows if f"val_{metric}" in r]


def report(work: Path) -> dict:
    rows = []
    for name, run in runs(work).items():
        out = work / name
        if not (out / "report.json").exists():
            continue
        r = json.loads((out / "report.json").read_text())
        m = r["dev_metrics"]
        period = (2 if run["mode"] != "supervised" else 1) * (2 if "also" in run else 1)
        row = {"run": name, "task": run["task"], "labeled_pct": run["labeled"], "n_train": r["n_train"],
               "mode": run["mode"], "metric": run["metric"], "dev": round(m[run["metric"]], 4),
               "steps": r["steps"], "labeled_batches": r["steps"] // period,
               "n_unlabeled": r["cross_view"]["n_unlabeled"], "wall_s": r["wall_s"],
               "curve": curve(out, run["metric"], period)}
        if "also" in run:
            row["chunking_f1"] = round(m["chunking_f1"], 4)
        rows.append(row)
    from common import env_info, write_results  # benchmarks/common.py

    done = {r["run"] for r in rows}
    pairs = [paired(work, f"{key}-supervised{suffix}", f"{key}-cvt{suffix}")
             for key, suffix in PAIRED if {f"{key}-supervised{suffix}", f"{key}-cvt{suffix}"} <= done]
    result = {"rows": rows, "paired": pairs, "env": env_info()}
    write_results("cvt", result)
    plot(rows, ROOT / "docs" / "img" / "cvt_curves.png")
    print(table(rows))
    for x in pairs:
        print(f"{x['a']} vs {x['b']}: dev words only one tags right {x['only_a_right']} vs "
              f"{x['only_b_right']}, sign test p = {x['p_sign_test']:.2g}")
    return result


PAIRED = [("pos10", ""), ("pos50", ""), ("pos100", ""), ("pos10", "-lr1e-2"), ("pos10", "-long")]


def paired(work: Path, a: str, b: str) -> dict:
    """The dev words only run a tags right and only run b tags right, and the exact two-sided sign
    test (McNemar) on them. Words of one sentence are not independent: a rough guide, not a proof."""
    import math

    import lmlab
    from lmlab.tasks import cross_view, tag

    dev = tag.read("builtin:wsj-pos", "dev", {})
    right = []
    for name in (a, b):
        model, tokenizer = lmlab.load(work / name)
        examples = cross_view.featurize(dev, tokenizer, model.spec)
        preds, _ = cross_view.predict(model.eval(), examples, model.spec)
        right.append([p == g for ps, s in zip(preds, dev, strict=True)
                      for p, g in zip(ps, s.labels, strict=True)])
    only_a = sum(x and not y for x, y in zip(*right, strict=True))
    only_b = sum(y and not x for x, y in zip(*right, strict=True))
    n = only_a + only_b
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n) if n else 1.0
    return {"a": a, "b": b, "only_a_right": only_a, "only_b_right": only_b, "p_sign_test": p}


def table(rows: list[dict]) -> str:
    lines = ["| task (dev) | labeled sentences | supervised only | CVT | wall s (sup / CVT) |",
             "|---|---|---|---|---|"]
    by = {r["run"]: r for r in rows}
    for key, task in [*((f"pos{f}", "wsj-pos accuracy (100)") for f in (*FRACTIONS, 100)),
                      ("chunk", "chunking span F1 (8)")]:
        sup, cvt = by.get(f"{key}-supervised"), by.get(f"{key}-cvt")
        if not (sup and cvt):
            continue
        lines.append(f"| {task} | {sup['n_train']} ({sup['labeled_pct']}%) | {sup['dev']:.4f} | "
                     f"{cvt['dev']:.4f} | {sup['wall_s']:.0f} / {cvt['wall_s']:.0f} |")
    rest = by.get("pos10-cvt-rest")
    if rest:
        lines.append(f"\nwsj-pos 10% with CVT on the other 90% of the training sentences (labels withheld, "
                     f"{rest['n_unlabeled']} sentences) as unlabeled text: accuracy {rest['dev']:.4f} "
                     f"({rest['wall_s']:.0f} s)")
    sup, cvt = by.get("pos10-supervised-lr1e-2"), by.get("pos10-cvt-lr1e-2")
    if sup and cvt:
        lines.append(f"\nwsj-pos 10% at peak lr 1e-2: supervised only {sup['dev']:.4f}, CVT {cvt['dev']:.4f}")
    sup, cvt = by.get("pos10-supervised-long"), by.get("pos10-cvt-long")
    if sup and cvt:
        lines.append(f"\nwsj-pos 10% at peak lr 1e-2, {sup['labeled_batches']} labeled batches: "
                     f"supervised only {sup['dev']:.4f}, CVT {cvt['dev']:.4f}")
    multi = by.get("pos10+chunk-cvt")
    if multi:
        lines.append(f"\nmulti-task CVT (wsj-pos 10% + chunking, one encoder): wsj-pos accuracy "
                     f"{multi['dev']:.4f}, chunking F1 {multi['chunking_f1']:.4f} ({multi['wall_s']:.0f} s)")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("pos10", "", "wsj-pos, 10% labeled", "accuracy"),
              ("pos10", "-long", "wsj-pos, 10%, lr 1e-2, longer", "accuracy"),
              ("pos50", "", "wsj-pos, 50% labeled", "accuracy"),
              ("pos100", "", "wsj-pos, all 901 labeled", "accuracy"),
              ("chunk", "", "chunking, 32 labeled", "span F1")]
    by = {r["run"]: r for r in rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 3.2), dpi=110)
    for ax, (key, suffix, title, ylabel) in zip(axes, panels, strict=True):
        for mode, style, label in (("supervised", "--", "supervised only"), ("cvt", "-", "CVT, PTB text"),
                                   ("cvt-rest", ":", "CVT, the other 90%")):
            r = by.get(f"{key}-{mode}{suffix}")
            if r:
                xs, ys = zip(*r["curve"], strict=True)
                ax.plot(xs, ys, style, marker=".", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("labeled batches seen")
        ax.set_ylabel(f"dev {ylabel}")
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(ROOT / "runs" / "cvt"))
    parser.add_argument("--stage", choices=("data", "runs", "report", "all"), default="all")
    parser.add_argument("--steps", type=int, default=300,
                        help="labeled batches per run (chunking: CHUNK_STEPS)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.stage in ("data", "all"):
        make_data(work)
    if args.stage in ("runs", "all"):
        train(work, args.steps, args.threads, set(args.only.split(",")) if args.only else None)
    if args.stage in ("report", "all"):
        report(work)


if __name__ == "__main__":
    main()
