"""A linear probe of frozen LM features: how much sentiment a ULMFiT language model holds before any
classifier fine-tuning (the diagnostic of docs/ulmfit.md's measurements).

    PYTHONPATH=src python experiments/ulmfit_probe.py --exp runs/ulmfit-exp2 [--task rt] MODEL_DIR [...]

Each model reads the texts that experiments/ulmfit.py or ulmfit_lowshot.py wrote (EXP/TASK/train-N.jsonl
for every N there, EXP/TASK/dev.jsonl, PTB-style) in eval mode, and each text becomes the classifier's
input features h_c = [h_T; maxpool(H); meanpool(H)] (ULMFiT §3.3; lmlab.models.heads.concat_pool_read).
A logistic regression (standardised features, L2, C = 0.1) is fit on the N training texts and scored
on every dev text. `random` rows use the same network with fresh weights (seed 0); `bag of words` is
the same regression on word counts (words seen twice in the training texts), for scale.
Results: EXP/probe-TASK.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import lmlab
from lmlab.models.heads import TaskModel, concat_pool_read
from lmlab.models.registry import build_from_config, config_fields, family_of


def read(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows], [r["label"] for r in rows]


@torch.no_grad()
def features(model, tokenizer, texts: list[str], batch: int = 64) -> torch.Tensor:
    """(N, 3D) concat-pooled last-layer states, documents right-padded in batches."""
    out = []
    for i in range(0, len(texts), batch):
        ids = [tokenizer.encode(t) for t in texts[i:i + batch]]
        width = max(len(x) for x in ids)
        padded = torch.tensor([x + [0] * (width - len(x)) for x in ids])  # (B, T)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        out.append(concat_pool_read(model, padded, mask, bptt=70, pool_len=1400).pooled)
    return torch.cat(out)


def mcc(pred: list, gold: list) -> float:
    classes = sorted(set(gold))
    tp = sum(p == g == classes[1] for p, g in zip(pred, gold, strict=True))
    tn = sum(p == g == classes[0] for p, g in zip(pred, gold, strict=True))
    fp = sum(p == classes[1] != g for p, g in zip(pred, gold, strict=True))
    fn = sum(p == classes[0] != g for p, g in zip(pred, gold, strict=True))
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / den if den else 0.0


def sizes(data: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in data.glob("train-[0-9]*.jsonl"))


def probe(model, tokenizer, data: Path) -> dict:
    """{N: error and MCC} of the regression on the model's features (model None: bag of words)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    dev_texts, dev_labels = read(data / "dev.jsonl")
    if model is not None:
        model.eval()
        dev = features(model, tokenizer, dev_texts).numpy()
    rows = {}
    for n in sizes(data):
        texts, labels = read(data / f"train-{n}.jsonl")
        if model is None:
            clf = make_pipeline(CountVectorizer(min_df=2, token_pattern=r"\S+"),
                                LogisticRegression(C=0.1, max_iter=5000))
            clf.fit(texts, labels)
            pred = list(clf.predict(dev_texts))
        else:
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
            clf.fit(features(model, tokenizer, texts).numpy(), labels)
            pred = list(clf.predict(dev))
        acc = sum(p == g for p, g in zip(pred, dev_labels, strict=True)) / len(dev_labels)
        rows[str(n)] = {"error": round(1 - acc, 4), "mcc": round(mcc(pred, dev_labels), 4)}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", default="runs/ulmfit-exp")
    parser.add_argument("--task", default="rt", help="the folder of EXP holding train-N.jsonl and dev.jsonl")
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    exp, data = Path(args.exp), Path(args.exp) / args.task
    results = {"bag of words": probe(None, None, data)}
    for path in args.models:
        model, tokenizer = lmlab.load(path)
        model = model.backbone if isinstance(model, TaskModel) else model
        results[path] = probe(model, tokenizer, data)
        print(path, results[path], flush=True)
    torch.manual_seed(0)
    model = build_from_config(family_of(model), config_fields(model))  # the last model's shape, fresh
    results["random"] = probe(model, tokenizer, data)
    print("random", results["random"], flush=True)
    (exp / f"probe-{args.task}.json").write_text(json.dumps(results, indent=1))
    ns = sizes(data)
    print("| features | " + " | ".join(f"{n} labels" for n in ns) + " |\n|---|" + "---|" * len(ns))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[str(n)]['error']:.3f} ({r[str(n)]['mcc']:+.2f})" for n in ns)
              + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
