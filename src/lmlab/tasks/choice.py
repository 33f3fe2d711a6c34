"""Multiple choice (ROCStories, RACE, SWAG style): task "choice".

GPT §3.3 (Fig. 1, "Multiple Choice"): each option becomes its own sequence `<start> context
<delim> option <extract>`; a linear layer scores each extract state and a softmax over the options
gives the distribution. BERT (§4.4, SWAG): `[CLS] context [SEP] option [SEP]` per option, scored
from the pooled state. Examples may have different numbers of options: a batch pads the missing
ones with a masked dummy sequence that takes no probability mass.

File: JSONL, one object per line, `{"context": str, "choices": [str, ...], "label": int}`
(label = the index of the right option).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmlab.data.corpora import decode_text, is_builtin, jsonl_records
from lmlab.errors import DataError
from lmlab.models.heads import TaskOutput, TaskSpec
from lmlab.tasks.base import pad_2d, pad_3d, run_model
from lmlab.tasks.classify import encode_pairs
from lmlab.tasks.metrics import accuracy


@dataclass(frozen=True)
class Example:
    context: str
    choices: tuple[str, ...]
    label: int
    where: str


def read(source: str, split: str, options: dict) -> list[Example]:
    if is_builtin(source):
        raise DataError(f"{source}: there is no built-in multiple-choice data; pass a JSONL file")
    path = Path(source).expanduser()
    try:
        text = decode_text(path.read_bytes(), str(path))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    examples = []
    for where, record in jsonl_records(path, text):
        for key in ("context", "choices", "label"):
            if key not in record:
                raise DataError(f"{where}: missing field {key!r}")
        context, choices, label = record["context"], record["choices"], record["label"]
        if not isinstance(context, str):
            raise DataError(f"{where}: field 'context' must be a string")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{where}: field 'choices' must be a list of strings")
        if not choices:
            raise DataError(f"{where}: empty candidate list ('choices' has no options)")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise DataError(f"{where}: label must be an option index in 0..{len(choices) - 1}, got {label!r}")
        examples.append(Example(context, tuple(choices), label, where))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def label_set(examples: list[Example], options: dict) -> tuple[tuple[str, ...], bool]:
    return (), False  # options are scored, not classified


def featurize(examples: list[Example], tokenizer, spec: TaskSpec, truncate: bool = False) -> list[dict]:
    """input_ids: one sequence per option (and token_type_ids for encoders); label: option index."""
    pairs = [(ex.context, c) for ex in examples for c in ex.choices]
    wheres = [ex.where for ex in examples for _ in ex.choices]
    flat = iter(encode_pairs(pairs, wheres, tokenizer, spec, truncate))
    feats = []
    for ex in examples:
        options = [next(flat) for _ in ex.choices]
        f = {"input_ids": [o["input_ids"] for o in options], "label": ex.label}
        if spec.reader == "pooled_cls":
            f["token_type_ids"] = [o["token_type_ids"] for o in options]
        feats.append(f)
    return feats


def collate(features: list[dict], spec: TaskSpec) -> dict[str, torch.Tensor]:
    """(B, N, T) input_ids/attention_mask (+ token_type_ids | extract_index), choice_mask (B, N), labels."""
    ids = [f["input_ids"] for f in features]
    mask = pad_3d([[[1] * len(r) for r in g] for g in ids], 0)
    batch = {"input_ids": pad_3d(ids, spec.pad_id), "attention_mask": mask}
    if spec.reader == "pooled_cls":
        batch["token_type_ids"] = pad_3d([f["token_type_ids"] for f in features], 0)
    else:
        batch["extract_index"] = (mask.sum(-1) - 1).clamp(min=0)  # dummy options read position 0
    batch["choice_mask"] = pad_2d([[1] * len(g) for g in ids], 0)
    batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
    return batch


def loss(out: TaskOutput, batch: dict, spec: TaskSpec) -> torch.Tensor:
    return F.cross_entropy(out.logits.float(), batch["labels"])


def evaluate(model: torch.nn.Module, features: list[dict], spec: TaskSpec, batch_size: int = 16) -> dict:
    """accuracy (the highest-scoring option is the label) and the mean loss."""
    preds, golds, total = [], [], 0.0
    for out, batch in run_model(model, features, lambda f: collate(f, spec), batch_size):
        total += float(loss(out, batch, spec)) * len(batch["labels"])
        preds.append(out.logits.argmax(-1))
        golds.append(batch["labels"])
    pred, gold = torch.cat(preds).cpu().numpy(), torch.cat(golds).cpu().numpy()
    return {"accuracy": accuracy(pred, gold), "loss": total / max(1, len(features)), "n": len(features)}
