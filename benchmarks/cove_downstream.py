"""CoVe the paper's way (McCann et al. 2017, §5), small and on CPU: a translation model trained on real
parallel text, its encoder's states as features beside GloVe, and how the downstream gain moves with
the translation model's BLEU.

    python benchmarks/cove_downstream.py [--work DIR] [--stage pretrain|translate|downstream|report|all]
                                         [--steps N] [--early-step N] [--final-step N] [--which ...]
                                         [--beam-sentences N] [--threads N]

1. pretrain: `lmlab pretrain --model cove --preset small --data builtin:lohelp-en-de` (LibreOffice help,
   English -> German, split by page): GloVe 6B 50-d inputs (fixed), a two-layer biLSTM of 128 units per
   direction, a two-layer 256-unit attentional decoder, 8,000 target words, training pairs of at most 30
   words, batches of 64 pairs, Adam at 3e-3 (no weight decay) with 100 warmup steps and cosine decay to
   5% over 4,000 steps (~9 epochs); checkpoints every 300 steps, all kept.
2. translate: test-split BLEU (computed as sacrebleu does, plain and with <unk> replaced by the most
   attended source word) of an early checkpoint (--early-step) and of the final model (the finished run,
   or checkpoint --final-step), greedy on the whole test split, and for the final model beam 5 against
   greedy on the first --beam-sentences test pairs (0: all); the copy-the-source baseline beside them.
3. downstream: `lmlab finetune CKPT --features --word-vectors builtin:glove-6b-50d` on
   builtin:rotten-tomatoes (classify) and builtin:wsj-pos (tag) with benchmarks/elmo_downstream.py's task
   model and budget (one biLSTM of 100 units per direction, dropout 0.5, batch 32, seed 0; classify 3
   epochs at 1e-3, tag 20 epochs at 1e-2). CKPT: the early checkpoint, the final model, and the same
   network untrained (--from-scratch: random weights, BLEU 0); --which picks among random, early, final.
   The GloVe-alone and GloVe + ELMo rows are elmo_downstream.py's (benchmarks/results/elmo_downstream.json):
   the same task model, budget and seed.
4. report: the tables (markdown) and benchmarks/results/cove_downstream.json; docs/img/cove_bleu_gain.png
   (downstream accuracy against test BLEU).

Data and runs go under --work (default runs/cove-downstream), never into the repository.
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
# The 2015 small-budget recipe (Luong et al.: many epochs, a high rate decayed, dropout, no weight
# decay); training on pairs of <= 30 words halves the step time (85% of the pairs). The first recipe
# (--seq-len 50, --lr 2e-3, weight decay 0.1, 800 steps = 1.5 epochs) stayed below copying the source.
COVE = ["--model", "cove", "--preset", "small", "--data", "builtin:lohelp-en-de", "--vocab-size", "8000",
        "--seq-len", "30", "--batch-size", "64", "--lr", "3e-3", "--warmup", "100", "--min-lr-ratio", "0.05",
        "--weight-decay", "0", "--eval-every", "300", "--eval-batches", "5", "--bleu-sentences", "200",
        "--save-every", "300", "--keep-checkpoints", "100", "--log-every", "50"]
TASKS = {  # as benchmarks/elmo_downstream.py: task -> (data, epochs, peak lr)
    "classify": ("builtin:rotten-tomatoes", 3, "1e-3"),
    "tag": ("builtin:wsj-pos", 20, "1e-2"),
}
TASK_MODEL = ["--features", "--word-vectors", VECTORS, "--lstm-dim", "100", "--dropout", "0.5",
              "--batch-size", "32", "--seed", "0"]


def lmlab(args: list[str], threads: int, capture: bool = False) -> tuple[float, str]:
    """Run `python -m lmlab ARGS` with `threads` torch threads; (wall seconds, stdout if captured)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    print("+ lmlab " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "lmlab", *args], check=True, env=env, text=True,
                          stdout=subprocess.PIPE if capture else None)
    return time.perf_counter() - start, done.stdout or ""


FINAL_STEP: int | None = None  # --final-step: a checkpoint of the run as the "final" model


def checkpoints(work: Path, early: int) -> dict[str, Path]:
    run = work / "cove-lohelp"
    final = run / "checkpoints" / f"step-{FINAL_STEP}" if FINAL_STEP else run
    return {"early": run / "checkpoints" / f"step-{early}", "final": final}


def pretrain(work: Path, steps: int, threads: int) -> None:
    out = work / "cove-lohelp"
    resume = ["--resume"] if (out / "checkpoints").exists() else []
    lmlab(["pretrain", *COVE, "--steps", str(steps), "--out", str(out), "--no-progress", *resume], threads)


def translate(work: Path, early: int, threads: int, beam_sentences: int) -> None:
    """Greedy BLEU on the whole test split for both models; the final model's beam 5 against its
    greedy on the first `beam_sentences` test pairs (beam search in Python is slow on CPU)."""
    final = checkpoints(work, early)["final"]
    runs = [("final", final, 1, None)] + [("final", final, beam, beam_sentences) for beam in (1, 5)]
    runs += [("early", checkpoints(work, early)["early"], 1, None)]
    for name, model, beam, limit in runs:
        tail = "" if not limit else f"-first{limit}"
        out = work / f"bleu-{name}-beam{beam}{tail}.json"
        if out.exists():
            continue
        extra = ["--max-examples", str(limit)] if limit else []
        wall, text = lmlab(["evaluate", str(model), "--data", "builtin:lohelp-en-de", "--split", "test",
                            "--beam-size", str(beam), "--batch-size", "64", *extra], threads, capture=True)
        out.write_text(json.dumps({**json.loads(text), "wall_s": round(wall, 1)}, indent=2) + "\n")


def downstream(work: Path, early: int, threads: int, which: list[str], tasks: list[str]) -> None:
    models = {**{f"glove+cove-{k}": (str(v), []) for k, v in checkpoints(work, early).items()},
              "glove+cove-random": (str(checkpoints(work, early)["early"]), ["--from-scratch"])}
    for task, (data, epochs, lr) in TASKS.items():
        for name, (model, extra) in models.items():
            if name.rsplit("-", 1)[1] not in which or task not in tasks:
                continue
            out = work / f"{task}-{name}"
            if (out / "report.json").exists():
                continue
            lmlab(["finetune", model, "--task", task, "--train", data, "--dev", data, "--out", str(out),
                   "--epochs", str(epochs), "--lr", lr, *TASK_MODEL, *extra, "--no-progress"], threads)


def report(work: Path, early: int) -> dict:
    metrics = [json.loads(x) for x in (work / "cove-lohelp" / "metrics.jsonl").read_text().splitlines()]
    curve = [{k: m[k] for k in ("step", "val_loss", "val_bleu") if k in m}
             for m in metrics if "val_loss" in m]
    train = [m for m in metrics if "loss" in m]
    bleu = {f.stem[len("bleu-"):]: json.loads(f.read_text()) for f in sorted(work.glob("bleu-*.json"))}
    elmo = json.loads((ROOT / "benchmarks" / "results" / "elmo_downstream.json").read_text())
    rows = [{**r, "source": "elmo_downstream.json"} for r in elmo["rows"]]
    test_bleu = {"random": 0.0, **{k: bleu[f"{k}-beam1"]["bleu"] for k in ("early", "final")
                                   if f"{k}-beam1" in bleu}}
    for task in TASKS:
        for which in ("random", "early", "final"):
            if which not in test_bleu or not (work / f"{task}-glove+cove-{which}" / "report.json").exists():
                continue
            r = json.loads((work / f"{task}-glove+cove-{which}" / "report.json").read_text())
            m = r["dev_metrics"]
            rows.append({"task": task, "data": r["dev"], "inputs": f"glove+cove-{which}",
                         "accuracy": round(m["accuracy"], 4), "dev_loss": round(m["loss"], 4),
                         "n_dev": r["n_dev"],
                         "steps": r["steps"], "oov_types": r["oov"]["types"],
                         "oov_token_share": r["oov"]["token_share"], "wall_s": r["wall_s"],
                         "mix_weights": r.get("mix_weights"), "mt_test_bleu": round(test_bleu[which], 2),
                         "source": "cove_downstream.py"})
    final = FINAL_STEP or train[-1]["step"]
    keys = ("bleu", "bleu_replace_unk", "loss", "ppl", "copy_bleu", "sentences", "beam_size", "wall_s")
    result = {"mt": {"steps_run": train[-1]["step"], "final_step": final, "early_step": early,
                     "train_loss_at_final": round(next(m["loss"] for m in train if m["step"] == final), 4),
                     "curve": curve, "test": {k: {x: v.get(x) for x in keys} for k, v in bleu.items()}},
              "rows": rows}
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "cove_downstream.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, ROOT / "docs" / "img" / "cove_bleu_gain.png")
    print(table(result))
    return result


def table(result: dict) -> str:
    mt = result["mt"]
    lines = ["| MT model | step | test sentences | decoding | BLEU | BLEU, <unk> replaced | test ppl "
             "| copy BLEU |", "|---|---|---|---|---|---|---|---|"]
    for key, t in sorted(mt["test"].items()):
        name = key.split("-")[0]
        step = mt["early_step"] if name == "early" else mt["final_step"]
        how = "greedy" if t["beam_size"] == 1 else f"beam {t['beam_size']}"
        lines.append(f"| {name} | {step} | {t['sentences']} | {how} | {t['bleu']:.2f} | "
                     f"{t['bleu_replace_unk']:.2f} | {t['ppl']:.1f} | {t['copy_bleu']:.2f} |")
    lines += ["", "| task (dev) | inputs | MT test BLEU | accuracy | dev loss | mix weights | wall s |",
              "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        w = " / ".join(f"{x:.2f}" for x in r["mix_weights"]) if r.get("mix_weights") else "-"
        b = f"{r['mt_test_bleu']:.2f}" if "mt_test_bleu" in r else "-"
        lines.append(f"| {r['task']} ({r['data']}, {r['n_dev']}) | {r['inputs']} | {b} | "
                     f"{r['accuracy']:.4f} | {r['dev_loss']:.4f} | {w} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=120)
    for ax, task in zip(axes, TASKS, strict=True):
        mine = [r for r in rows if r["task"] == task and "mt_test_bleu" in r]
        ax.plot([r["mt_test_bleu"] for r in mine], [r["accuracy"] for r in mine], "o-", label="GloVe + CoVe")
        for r in mine:
            ax.annotate(r["inputs"].rsplit("-", 1)[1], (r["mt_test_bleu"], r["accuracy"]), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
        for r in rows:
            if r["task"] == task and "mt_test_bleu" not in r:
                ax.axhline(r["accuracy"], ls="--" if r["inputs"] == "glove" else ":", lw=1,
                           color="grey" if r["inputs"] == "glove" else "tab:green", label=r["inputs"])
        ax.set_xlabel("MT test BLEU (lohelp en-de)")
        ax.set_ylabel("dev accuracy")
        ax.set_title(f"{task} ({mine[0]['data'].split(':')[1] if mine else ''})")
        ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(ROOT / "runs" / "cove-downstream"))
    parser.add_argument("--stage", choices=("pretrain", "translate", "downstream", "report", "all"),
                        default="all")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--early-step", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--which", default="random,early,final", help="downstream: the CoVe models to use")
    parser.add_argument("--tasks", default="classify,tag", help="downstream: the tasks to run")
    parser.add_argument("--final-step", type=int, default=None,
                        help="use this checkpoint of the run as the final model (default: the finished run)")
    parser.add_argument("--beam-sentences", type=int, default=300,
                        help="translate: test pairs for beam 5 (0: all)")
    args = parser.parse_args()
    global FINAL_STEP
    FINAL_STEP = args.final_step
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.stage in ("pretrain", "all"):
        pretrain(work, args.steps, args.threads)
    if args.stage in ("translate", "all"):
        translate(work, args.early_step, args.threads, args.beam_sentences)
    if args.stage in ("downstream", "all"):
        downstream(work, args.early_step, args.threads, args.which.split(","), args.tasks.split(","))
    if args.stage in ("report", "all"):
        report(work, args.early_step)


if __name__ == "__main__":
    main()
