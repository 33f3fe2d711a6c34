"""`lmlab zoo --run`: every family trained with its own recipe under one CPU budget, then measured the
way its paper measured it, into one report dir.

For each family (the registry's order, or `--families`), from its declaration alone:

1. **Pretraining**: `lmlab pretrain` of its declared preset (`Lineage.preset`, `tiny` unless it says
   otherwise) on its declared built-in corpus
   (`Lineage.corpus`: PTB words, PTB characters for the character models, ...) with its own recipe
   (objective, batches, validation). Every family gets an equal share of what is left of the budget
   (so one that overran is paid for by the ones after it), 70% of it up to the end of pretraining
   and the rest for transfer. A short probe run times its steps, and the real run gets as many steps
   as fit before that point (at least 10): preparing the corpus and the probe count against it.
2. **Language-model quality**: causal LMs are scored on the corpus's test split with `lmlab evaluate`
   (perplexity per token, bits per character for a character tokenizer, NLL per event for a MIDI
   one; families that carry state with the memory protocol); other kinds report their recipe's own
   validation (BERT: perplexity of the masked tokens; ELMo: the mean of the two directions).
3. **Transfer**: `lmlab finetune` on the downstream task with the options of the family's own
   transfer method (`Lineage.transfer`: ELMo's frozen features beside GloVe, GPT's auxiliary LM loss,
   ...), again timed to its share; the dev-set metrics are reported.

Resumable: each finished family is written to `results.json` at once, and a second run skips it
(a family stopped half-way resumes its pretraining from its checkpoint, with the steps planned
before). Wall times depend on the machine; the step counts are in the report.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lmlab.checkpoints.atomic import finite_json, write_bytes_atomic
from lmlab.errors import ConfigError
from lmlab.models.registry import FAMILIES, Family, family_spec

RESULTS, PLAN = "results.json", "plan.json"
PROBE_STEPS = 3
PRETRAIN_SHARE = 0.7  # of a family's budget; the rest is transfer (all of it without one)
DOWNSTREAM = {"task": "classify", "train": "builtin:rotten-tomatoes", "dev": "builtin:rotten-tomatoes"}


@dataclass(frozen=True)
class ZooRun:
    out: Path
    budget_minutes: float
    families: tuple[str, ...]
    device: str = "auto"
    lr: float = 1e-3
    batch_size: int = 16
    eval_tokens: int = 20000
    seed: int = 0
    progress: bool = True



def _measurable(lineage) -> bool:
    """Something to train: a corpus to pretrain on, or a task it learns from the start (CVT)."""
    return lineage is not None and (lineage.corpus is not None or lineage.transfer is not None)


def runnable(names: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The families to run: those named (checked), or every family with a lineage to measure."""
    if not names:
        return tuple(name for name, family in FAMILIES.items() if _measurable(family.lineage))
    for name in names:
        if not _measurable(family_spec(name).lineage):  # family_spec: one line for an unknown name
            raise ConfigError(f"--families: {name} declares no lineage (corpus or transfer) to run")
    return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------- one family


def _steps_for(deadline: float, probe_wall: float, probe_steps: int) -> int:
    """The steps that fit between now and `deadline` (time.perf_counter()), at the probe's pace."""
    per_step = max(probe_wall / probe_steps, 1e-3)
    return max(10, int((deadline - time.perf_counter()) / per_step))


def _planned(folder: Path, key: str, probe) -> int:
    """The steps of phase `key`: planned before (a resumed run keeps them), or from a fresh probe run
    (probe() -> steps), written down before the phase starts."""
    plan_file = folder / PLAN
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
    if key not in plan:
        plan[key] = probe()
        write_bytes_atomic(plan_file, json.dumps(plan).encode())
    return plan[key]


def _fresh(path: Path) -> str:
    """A probe's run dir, removed (before: a probe left by an interrupted run is redone; after: only
    its timing is kept)."""
    shutil.rmtree(path, ignore_errors=True)
    return str(path)


def _pretrain(run: ZooRun, name: str, family: Family, folder: Path, deadline: float) -> tuple[dict, Path]:
    from lmlab.train.pretrain import pretrain

    common = dict(model=name, preset=family.lineage.preset, data=family.lineage.corpus, lr=run.lr,
                  batch_size=run.batch_size,
                  device=run.device, seed=run.seed, eval_every=0, save_every=0, progress=False)
    folder.mkdir(parents=True, exist_ok=True)

    def probe() -> int:
        timed = pretrain(out=_fresh(folder / "probe"), steps=PROBE_STEPS, eval_batches=1, **common)
        _fresh(folder / "probe")
        return _steps_for(deadline, timed.wall_s, PROBE_STEPS)

    steps = _planned(folder, "pretrain_steps", probe)
    lm_dir = folder / "lm"
    resume = (lm_dir / "checkpoints").is_dir()
    result = pretrain(out=str(lm_dir), steps=steps, resume=resume,
                      **{**common, "progress": run.progress, "save_every": max(1, steps // 4)})
    return {"steps": steps, "train_tokens_per_s": round(result.tokens_per_s, 1),
            "train_loss": result.loss, "val_loss": result.val_loss, "val_metrics": result.val_metrics,
            "pretrain_wall_s": round(result.wall_s, 1)}, lm_dir


def _lm_quality(run: ZooRun, family: Family, lm_dir: Path, trained: dict) -> dict:
    """The paper's measure of the pretrained network: (metric name, value, split)."""
    if family.kind == "causal_lm":
        from lmlab.eval.cli import evaluate_command

        protocol = "memory" if family.carries_state else "fixed"
        r = evaluate_command(str(lm_dir), family.lineage.corpus, split="test", protocol=protocol,
                             device=run.device, max_tokens=run.eval_tokens)
        if "bpc" in r:
            return {"metric": "bpc", "value": r["bpc"], "split": "test", "tokens": r["tokens"]}
        if "nll_per_event" in r:  # a MIDI tokenizer: the Music Transformer's NLL per event
            return {"metric": "NLL/event", "value": r["nll_per_event"], "split": "test",
                    "tokens": r["tokens"]}
        return {"metric": "ppl", "value": r["ppl"], "split": "test", "tokens": r["tokens"]}
    metrics = trained["val_metrics"]
    if "bleu" in metrics:  # translation (CoVe's MT-LSTM): greedy BLEU on valid sentences
        return {"metric": "BLEU", "value": metrics["bleu"], "split": "valid"}
    if "mlm_loss" in metrics:  # masked LM: the perplexity of the masked tokens, NSP apart
        return {"metric": "masked-token ppl", "value": math.exp(metrics["mlm_loss"]), "split": "valid"}
    return {"metric": "ppl", "value": math.exp(trained["val_loss"]), "split": "valid"}


def _transfer(run: ZooRun, family: Family, lm_dir: Path, folder: Path, deadline: float) -> dict:
    from lmlab.tasks.finetune import finetune

    options = {**DOWNSTREAM, **family.lineage.transfer}
    common = dict(device=run.device, seed=run.seed, batch_size=32, max_len=64, truncate=True, progress=False,
                  log_every=1)

    def probe() -> int:
        timed = finetune(lm_dir, out=_fresh(folder / "transfer-probe"), steps=PROBE_STEPS, eval_every=10**6,
                         save_every=10**6, **common, **options)
        _fresh(folder / "transfer-probe")
        return _steps_for(deadline, timed["wall_s"], PROBE_STEPS)

    steps = _planned(folder, "transfer_steps", probe)
    out = folder / "transfer"
    report = finetune(lm_dir, out=out, steps=steps, eval_every=steps, save_every=max(1, steps // 4),
                      resume=(out / "checkpoints").is_dir(), **{**common, "progress": run.progress},
                      **options)
    return {"task": options["task"], "data": options["dev"], "steps": steps,
            "dev_metrics": report["dev_metrics"], "transfer_options": family.lineage.transfer,
            "transfer_wall_s": report["wall_s"]}


def run_family(run: ZooRun, name: str, share: float) -> dict:
    """Train and measure family `name` in about `share` seconds."""
    import torch

    from lmlab.checkpoints.io import load

    family = family_spec(name)
    folder = run.out / name
    t0 = time.perf_counter()
    row = {"family": name, "paper": family.paper, "corpus": family.lineage.corpus, "steps": 0,
           "train_tokens_per_s": None, "lm": None}
    model_dir: str | Path = "none"  # no corpus: a new model learns the task from the start (CVT)
    if family.lineage.corpus is not None:
        lm_share = share * (PRETRAIN_SHARE if family.lineage.transfer is not None else 1.0)
        trained, model_dir = _pretrain(run, name, family, folder, t0 + lm_share)
        row.update(trained)
        torch.manual_seed(run.seed)
        row["lm"] = _lm_quality(run, family, model_dir, trained)
    if family.lineage.transfer is not None:
        row["transfer"] = _transfer(run, family, model_dir, folder, t0 + share)
    trained_dir = model_dir if family.lineage.corpus is not None else folder / "transfer"
    model, _ = load(trained_dir, device="cpu")
    row["parameters"] = sum(p.numel() for p in model.parameters())
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


# ---------------------------------------------------------------- the whole run


def _read_results(out: Path) -> dict:
    path = out / RESULTS
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a zoo results file ({e}); choose another --out") from None


def run_zoo(run: ZooRun) -> dict:
    """Train and measure `run.families` into `run.out`; returns the results dict (also results.json,
    results.md and the PNG charts)."""
    from tqdm import tqdm

    from lmlab.zoo.report import write_report

    run.out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in asdict(run).items() if k not in ("out", "progress", "families")}
    results = _read_results(run.out)
    if results and results.get("settings") != settings:
        raise ConfigError(f"{run.out / RESULTS} was made with other settings ({results.get('settings')}); "
                          f"choose another --out")
    results = {"settings": settings, "families": results.get("families", {})}
    todo = [name for name in run.families if name not in results["families"]]
    bar = tqdm(total=len(run.families), initial=len(run.families) - len(todo), desc="zoo", unit="family",
               disable=not run.progress)
    for i, name in enumerate(todo):
        bar.set_postfix_str(name)
        done = results["families"]
        spent = sum(done[other]["wall_s"] for other in run.families if other in done)
        share = max(run.budget_minutes * 60 - spent, 0.0) / (len(todo) - i)
        results["families"][name] = run_family(run, name, share)
        write_bytes_atomic(run.out / RESULTS, finite_json(results, indent=2).encode())
        bar.update(1)
    bar.close()
    write_report(results, run.out)
    return results
