"""Single-text and text-pair classification (and regression): tasks "classify" and "pair".

Inputs. Decoders (GPT §3.3, Fig. 1): `<start> text <extract>`; pairs `<start> a <delim> b
<extract>`; with pair_mode "similarity" both orders `<start> a <delim> b <extract>` and `<start> b
<delim> a <extract>`, whose extract states are added before the linear layer (GPT's similarity
input, symmetric in a and b). Encoders (BERT §4.1): `[CLS] a [SEP] (b [SEP])` with segment ids,
read at the pooled [CLS] state. Head: dropout + one linear layer; cross-entropy over the labels,
or mean squared error on one output for regression (STS-B style).

Files. JSONL: one object per line, `{"text": ..., "text_b": ..., "label": ...}` (text_b for
pairs). GLUE TSV: a header row, tab-separated fields, no quoting. The columns (JSON fields or TSV
header names) can be named with text_column / text_b_column / label_column; by default a TSV
header is recognised as one of the GLUE layouts:
    SST-2  sentence, label                        RTE, WNLI  sentence1, sentence2, label
    MRPC   #1 String, #2 String, Quality          QQP        question1, question2, is_duplicate
    MNLI   sentence1, sentence2, gold_label       QNLI       question, sentence, label
    STS-B  sentence1, sentence2, score (regression)
`builtin:rotten-tomatoes` is built-in classify data (lmlab.data.corpora.TASK_DATA).

Labels are strings (JSON numbers are written as they print); the training file's labels, sorted
(numerically when all are integers), are the classes. Regression is detected when every training
label is a number and one is not an integer (STS-B's "3.800"), or forced by options["regression"].
A dev/test label the training data does not have is an error naming file, line and label. So
are labels no class should come from: empty, a non-finite number (JSON NaN/Infinity, or "nan"
written for a missing value), a file whose labels mix numbers, words and JSON booleans (0/1
beside "pos"/"neg"), and, for classification, one number spelled two ways ("1" and "1.0").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.data.corpora import TASK_DATA, decode_text, is_builtin, jsonl_records, read_task_data
from lmlab.errors import DataError
from lmlab.models.heads import TaskOutput, TaskSpec
from lmlab.tasks.base import pad_2d, pad_3d, run_model
from lmlab.tasks.metrics import classification_metrics, regression_metrics

# Header names tried in order when a column is not given (GLUE layouts, see the docstring).
TEXT_COLUMNS = ("sentence1", "#1 String", "question1", "question", "sentence", "text")
TEXT_B_COLUMNS = ("sentence2", "#2 String", "question2", "sentence", "text_b")
LABEL_COLUMNS = ("gold_label", "label", "Quality", "is_duplicate", "score")


@dataclass(frozen=True)
class Example:
    text: str
    text_b: str | None
    label: str | None
    where: str  # "file:line", for messages


# ---------------------------------------------------------------- reading


def read(source: str, split: str, options: dict) -> list[Example]:
    """Examples of `source` (JSONL, GLUE TSV or builtin:NAME; split picks a built-in's part).

    options: task ("classify" or "pair"), text_column, text_b_column, label_column (None = default).
    """
    task = options.get("task", "classify")
    if is_builtin(source):
        data = TASK_DATA.get(source.split(":", 1)[1])
        if data is not None and (data.task != "classify" or task == "pair"):
            raise DataError(f"{source} is {data.task} data (single texts), not {task} data")
        part = "train" if split == "train" else "dev"
        records = read_task_data(source, part)
        return [Example(r["text"], None, r["label"], f"{source}[{part}]:{i + 1}")
                for i, r in enumerate(records)]
    path = Path(source).expanduser()
    try:
        text = decode_text(path.read_bytes(), str(path))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    jsonl = path.suffix in (".jsonl", ".json") or (path.suffix != ".tsv" and text.lstrip().startswith("{"))
    examples = _read_jsonl(path, text, options) if jsonl else _read_tsv(path, text, options)
    if not examples:
        raise DataError(f"{path}: no examples")
    if task == "pair":
        for ex in examples:
            if ex.text_b is None:
                raise DataError(f"{ex.where}: a pair task needs a second text (text_b)")
    return examples


def _json_label(value, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return _nonempty_label(str(value), where)
    raise DataError(f"{where}: label must be a string or a number, got {type(value).__name__}")


def _number(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:
        return None


def _nonempty_label(label: str, where: str) -> str:
    if not label.strip():  # would become a class of its own
        raise DataError(f"{where}: the label is empty")
    x = _number(label)
    if x is not None and not math.isfinite(x):  # JSON NaN/Infinity, or "nan" written for a missing value
        raise DataError(f"{where}: label {label!r} is not a finite number (a missing value?); label the "
                        f"example or leave it out")
    return label


def _label_kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, (int, float)) or _number(value) is not None else "a word"


def _check_kinds(examples: list[Example], kinds: list[str]) -> None:
    """One kind of label per file: 0/1 beside "pos"/"neg" would silently make four classes."""
    for ex, kind in zip(examples, kinds, strict=True):
        if kind != kinds[0]:
            first = examples[0]
            raise DataError(f"{ex.where}: label {ex.label!r} is {kind}, but the label at line "
                            f"{first.where.rsplit(':', 1)[1]} ({first.label!r}) is {kinds[0]}; a file's "
                            f"labels must be all numbers, all words or all booleans")


def _read_jsonl(path: Path, text: str, options: dict) -> list[Example]:
    text_key = options.get("text_column") or "text"
    b_key = options.get("text_b_column") or "text_b"
    label_key = options.get("label_column") or "label"
    examples, kinds = [], []
    for where, record in jsonl_records(path, text):
        for key, required in ((text_key, True), (label_key, True)):
            if required and key not in record:
                raise DataError(f"{where}: missing field {key!r}")
        if not isinstance(record[text_key], str):
            raise DataError(f"{where}: field {text_key!r} must be a string")
        b = record.get(b_key)
        if b is not None and not isinstance(b, str):
            raise DataError(f"{where}: field {b_key!r} must be a string")
        examples.append(Example(record[text_key], b, _json_label(record[label_key], where), where))
        kinds.append(_label_kind(record[label_key]))
    _check_kinds(examples, kinds)
    return examples


def _column(header: list[str], given, candidates: tuple[str, ...], taken: set, where: str) -> int | None:
    if given is not None:
        if given in header:
            return header.index(given)
        raise DataError(f"{where}: no column {given!r} in the header (columns: {', '.join(header)})")
    for name in candidates:
        if name in header and header.index(name) not in taken:
            return header.index(name)
    return None


def _read_tsv(path: Path, text: str, options: dict) -> list[Example]:
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    head_where = f"{path}:1"
    text_col = _column(header, options.get("text_column"), TEXT_COLUMNS, set(), head_where)
    if text_col is None:
        raise DataError(f"{head_where}: cannot tell the text column from the header "
                        f"({', '.join(header)}); pass --text-column")
    b_col = _column(header, options.get("text_b_column"), TEXT_B_COLUMNS if options.get("task") == "pair"
                    else (), {text_col}, head_where)
    label_col = _column(header, options.get("label_column"), LABEL_COLUMNS, {text_col, b_col}, head_where)
    if label_col is None:
        raise DataError(f"{head_where}: no label column in the header ({', '.join(header)}); "
                        f"pass --label-column")
    need = max(c for c in (text_col, b_col, label_col) if c is not None) + 1
    examples = []
    for lineno, line in enumerate(lines[1:], 2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < need:
            raise DataError(f"{path}:{lineno}: {len(fields)} tab-separated fields, expected {len(header)} "
                            f"as in the header")
        b = fields[b_col] if b_col is not None else None
        where = f"{path}:{lineno}"
        examples.append(Example(fields[text_col], b, _nonempty_label(fields[label_col], where), where))
    _check_kinds(examples, [_label_kind(ex.label) for ex in examples])
    return examples


def label_set(examples: list[Example], options: dict) -> tuple[tuple[str, ...], bool]:
    """(labels, regression) from the training examples."""
    regression = options.get("regression")
    numbers = []
    for ex in examples:
        try:
            numbers.append(float(ex.label))
        except (TypeError, ValueError):
            if regression:
                raise DataError(f"{ex.where}: regression label {ex.label!r} is not a number") from None
            numbers = None
            break
    if regression is None:
        regression = numbers is not None and any(x != int(x) for x in numbers if np.isfinite(x))
    if regression:
        return (), True
    spelled: dict[float, Example] = {}
    for ex in examples:  # "1" and "1.0" (or "01") would be two classes
        x = _number(ex.label)
        first = ex if x is None else spelled.setdefault(x, ex)
        if first.label != ex.label:
            raise DataError(f"{ex.where}: label {ex.label!r} is the number of label {first.label!r} at "
                            f"{first.where} spelled another way; write each class one way")
    labels = sorted({ex.label for ex in examples})
    if all(lab.lstrip("-").isdigit() for lab in labels):
        labels.sort(key=int)
    if len(labels) < 2:
        raise DataError(f"{examples[0].where.rsplit(':', 1)[0]}: the training data has a single label "
                        f"{labels[0]!r}; a classifier needs at least two")
    return tuple(labels), False


# ---------------------------------------------------------------- features


def target(ex: Example, spec: TaskSpec):
    """The training target of `ex`: its class index, or its number for regression; a label the
    training data does not have is a DataError naming file and line."""
    if spec.regression:
        try:
            return float(ex.label)
        except (TypeError, ValueError):
            raise DataError(f"{ex.where}: regression label {ex.label!r} is not a number") from None
    if ex.label not in spec.labels:
        raise DataError(f"{ex.where}: label {ex.label!r} does not occur in the training data "
                        f"(labels: {', '.join(spec.labels)})")
    return spec.labels.index(ex.label)


def truncate_longest_first(a: list[int], b: list[int] | None, budget: int):
    """Cut tokens off the end of the longer text (a on ties) until len(a) + len(b) <= budget."""
    a, b = list(a), None if b is None else list(b)
    while len(a) + (len(b) if b is not None else 0) > budget:
        if b is not None and len(b) > len(a):
            b.pop()
        else:
            a.pop()
    return a, b


def too_long_error(where: str, n: int, limit: int, more: int) -> DataError:
    extra = f" ({more} more examples are too long)" if more else ""
    return DataError(f"{where}: the input is {n} tokens with the task tokens, longer than the limit of "
                     f"{limit} (--max-len, at most the model's position table){extra}; pass --truncate "
                     f"to cut the texts longest-first")


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    batch = getattr(tokenizer, "encode_batch", None)
    return batch(texts) if batch is not None else [tokenizer.encode(t) for t in texts]


def decoder_input(a: list[int], b: list[int] | None, spec: TaskSpec) -> list[int]:
    """GPT's transformation: <start> a <extract>, or <start> a <delim> b <extract>."""
    if b is None:
        return [spec.start_id, *a, spec.extract_id]
    return [spec.start_id, *a, spec.delim_id, *b, spec.extract_id]


def encode_pairs(pairs: list[tuple[str, str | None]], wheres: list[str], tokenizer, spec: TaskSpec,
                 truncate: bool) -> list[dict]:
    """{"input_ids" (+ "token_type_ids" for encoders)} per (a, b) pair; too long -> error or cut."""
    limit, out, too_long = spec.max_len, [], []
    if spec.reader == "concat_pool":  # ULMFiT: the document's own tokens, read in chunks
        for ids, where in zip(encode_texts(tokenizer, [a for a, _ in pairs]), wheres, strict=True):
            if not ids:
                raise DataError(f"{where}: the text has no tokens; a document needs at least one")
            if len(ids) > limit:
                too_long.append((where, len(ids)))
                ids = ids[:limit]
            out.append({"input_ids": ids})
    elif spec.reader == "pooled_cls":
        for (a, b), where in zip(pairs, wheres, strict=True):
            enc = tokenizer.encode_pair(a, b, max_length=None, truncation=None)
            if len(enc["input_ids"]) > limit:
                too_long.append((where, len(enc["input_ids"])))
                enc = tokenizer.encode_pair(a, b, max_length=limit, truncation="longest_first")
            out.append({"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]})
    else:
        ids_a = encode_texts(tokenizer, [a for a, _ in pairs])
        ids_b = iter(encode_texts(tokenizer, [b for _, b in pairs if b is not None]))
        for (_, b), where, x in zip(pairs, wheres, ids_a, strict=True):
            y = None if b is None else next(ids_b)
            specials = 2 if y is None else 3
            n = len(x) + (len(y) if y is not None else 0) + specials
            if n > limit:
                too_long.append((where, n))
                x, y = truncate_longest_first(x, y, limit - specials)
            out.append({"input_ids": decoder_input(x, y, spec)})
    if too_long and not truncate:
        raise too_long_error(too_long[0][0], too_long[0][1], limit, len(too_long) - 1)
    return out


def featurize(examples: list[Example], tokenizer, spec: TaskSpec, truncate: bool = False) -> list[dict]:
    """One feature dict per example: input_ids (a list, or two lists for a similarity pair),
    token_type_ids (encoders), label (class index or float)."""
    targets = [target(ex, spec) for ex in examples]
    wheres = [ex.where for ex in examples]
    pairs = [(ex.text, ex.text_b if spec.name == "pair" else None) for ex in examples]
    feats = encode_pairs(pairs, wheres, tokenizer, spec, truncate)
    if spec.name == "pair" and spec.pair_mode == "similarity" and spec.reader == "extract_token":
        swapped = encode_pairs([(b, a) for a, b in pairs], wheres, tokenizer, spec, truncate)
        feats = [{"input_ids": [f["input_ids"], s["input_ids"]]} for f, s in zip(feats, swapped, strict=True)]
    for f, t in zip(feats, targets, strict=True):
        f["label"] = t
    return feats


def collate(features: list[dict], spec: TaskSpec) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask, (token_type_ids | extract_index), labels."""
    ids = [f["input_ids"] for f in features]
    nested = isinstance(ids[0][0], list)
    pad = pad_3d if nested else pad_2d
    batch = {"input_ids": pad(ids, spec.pad_id),
             "attention_mask": pad([[[1] * len(r) for r in g] for g in ids] if nested
                                   else [[1] * len(r) for r in ids], 0)}
    if spec.reader == "pooled_cls":
        batch["token_type_ids"] = pad_2d([f["token_type_ids"] for f in features], 0)
    elif spec.reader == "extract_token":
        batch["extract_index"] = batch["attention_mask"].sum(-1) - 1  # the last real token
    labels = [f["label"] for f in features]
    batch["labels"] = torch.tensor(labels, dtype=torch.float32 if spec.regression else torch.long)
    return batch


# ---------------------------------------------------------------- loss, evaluation


def loss(out: TaskOutput, batch: dict, spec: TaskSpec) -> torch.Tensor:
    logits = out.logits.float()
    if spec.regression:
        return F.mse_loss(logits.squeeze(-1), batch["labels"].float())
    return F.cross_entropy(logits, batch["labels"])


def evaluate(model: torch.nn.Module, features: list[dict], spec: TaskSpec, batch_size: int = 64) -> dict:
    """Dev metrics: accuracy, macro_f1, mcc (+ f1 for two classes), or pearson/spearman/mse; loss."""
    preds, golds, total = [], [], 0.0
    for out, batch in run_model(model, features, lambda f: collate(f, spec), batch_size):
        total += float(loss(out, batch, spec)) * len(batch["labels"])
        logits = out.logits.float()
        preds.append(logits.squeeze(-1) if spec.regression else logits.argmax(-1))
        golds.append(batch["labels"])
    pred, gold = torch.cat(preds).cpu().numpy(), torch.cat(golds).cpu().numpy()
    metrics = regression_metrics(pred, gold) if spec.regression else \
        classification_metrics(pred, gold, len(spec.labels))
    return {**metrics, "loss": total / max(1, len(features)), "n": len(features)}
