"""Cross-view training's data (Clark et al. 2018): tagged and unlabeled sentences as the tagger reads
them, the stream that alternates them, and dev metrics. The model and the losses are
`lmlab.models.cvt` and `lmlab.objectives.cvt`; `lmlab.tasks.cross_view_setup` runs the training.

Tag data is the tag task's (`lmlab.tasks.tag`: CoNLL columns or builtin:wsj-pos / builtin:chunking,
the same checks and metrics). What the encoder reads, by the kind its family declares:
- `tagger` (a CVT tagger): per word its id in the word_chars vocabulary (<unk> when unseen) and its
  character ids (`chars`, (T, max_chars)); word k is position k;
- `bilm` (ELMo): the words' characters framed `<S> w_1 ... w_n </S>`; word k is position k + 1.
`score_mask` marks the positions that are words (what the losses and metrics read). With
`lowercase` the encoder reads every word lowercased (an encoder or unlabeled text that is lowercased,
such as builtin:ptb).

Unlabeled data: a text file with one sentence per line (words split on whitespace) or a built-in
corpus (`builtin:NAME`, its train split; builtin:ptb is one sentence per line). Blank lines are
skipped; a sentence longer than the limit keeps its first words (no labels are lost). Batches are
made when they are drawn, so a large corpus stays text until then.

The stream (`CrossViewBatches`): labeled and unlabeled batches in turn, L U L U ... (without
unlabeled data: L L ...); with several tag sets the labeled turns go round them (L_0 U L_1 U ...).
Each source is an `EpochBatches` (a permutation per (seed, epoch)); the stream's state is their
positions and the turn, saved in every checkpoint, so a resumed run draws the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.data.corpora import decode_text, is_builtin, read_corpus
from lmlab.errors import DataError
from lmlab.models.heads import TaskSpec
from lmlab.tasks import tag
from lmlab.tasks.base import pad_2d, run_model
from lmlab.tasks.features import encoder_input

IGNORE = tag.IGNORE


@dataclass
class ViewExample:
    input_ids: object  # word ids (tagger) or (T, C) character ids (bilm)
    chars: np.ndarray | None  # (T, C) character ids of the words (tagger)
    positions: list[int]  # per kept word, its position in the input
    labels: list[int] | None = None  # per kept word, its label index (None: unlabeled)
    gold: tuple[str, ...] = ()  # every word's label (after the scheme conversion)
    task: int = 0


def word_limit(spec: TaskSpec) -> int:
    """The most words an input holds: --max-len, less ELMo's <S> and </S>."""
    return spec.max_len - 2 if spec.extra["encoder_kind"] == "bilm" else spec.max_len


def encode_words(words: list[str], tokenizer, spec: TaskSpec) -> ViewExample:
    """The encoder's input for `words` (already cut to the limit)."""
    if spec.extra["lowercase"]:
        words = [w.lower() for w in words]
    if spec.extra["encoder_kind"] == "bilm":
        chars, start, _ = encoder_input("bilm", tokenizer, words)  # (n + 2, C): <S> words </S>
        return ViewExample(chars, None, start)
    unk = tokenizer.unk_token_id
    ids = [tokenizer.token_to_id(w) for w in words]
    chars = np.asarray([tokenizer.spell_word(w) for w in words], dtype=np.int16)  # (n, C)
    return ViewExample([unk if i is None else i for i in ids], chars, list(range(len(words))))


def featurize(sentences: list, tokenizer, spec: TaskSpec, task: int = 0,
              truncate: bool = False) -> list[ViewExample]:
    """One example per tagged sentence of tag set `task`; an unseen label, or (without `truncate`) a
    sentence over the limit, is a DataError before any training."""
    info = spec.extra["tasks"][task]
    sentences = tag.apply_scheme(sentences, info.get("tag_scheme", "auto"))
    tag.check_labels(sentences, info["labels"])
    index = {x: i for i, x in enumerate(info["labels"])}
    limit, out, cut = word_limit(spec), [], []
    for s in sentences:
        if len(s.words) > limit:
            cut.append(s)
        ex = encode_words(list(s.words[:limit]), tokenizer, spec)
        ex.labels, ex.gold, ex.task = [index[x] for x in s.labels[:limit]], s.labels, task
        out.append(ex)
    if not truncate:
        tag.refuse_cut(cut, f"has more than the limit of {limit} words (--max-len)", info["labels"])
    return out


def collate(examples: list[ViewExample], spec: TaskSpec) -> dict[str, torch.Tensor]:
    """input_ids first (the loop counts tokens by it), attention_mask, chars (tagger), score_mask,
    labels (labeled examples only; IGNORE off the words), task (one tag set per batch)."""
    bilm = spec.extra["encoder_kind"] == "bilm"
    lengths = [len(ex.input_ids) for ex in examples]
    B, T = len(examples), max(lengths)
    if bilm:
        ids = torch.zeros(B, T, examples[0].input_ids.shape[1], dtype=torch.long)  # zero rows: padding
        for r, ex in enumerate(examples):
            ids[r, :lengths[r]] = torch.from_numpy(ex.input_ids.astype(np.int64))
    else:
        ids = pad_2d([ex.input_ids for ex in examples], 0)
    batch = {"input_ids": ids, "attention_mask": pad_2d([[1] * n for n in lengths], 0)}
    if not bilm:
        chars = torch.zeros(B, T, examples[0].chars.shape[1], dtype=torch.long)
        for r, ex in enumerate(examples):
            chars[r, :lengths[r]] = torch.from_numpy(ex.chars.astype(np.int64))
        batch["chars"] = chars  # (B, T, C)
    score = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    for r, ex in enumerate(examples):
        score[r, ex.positions] = 1
        if ex.labels is not None:
            labels[r, ex.positions] = torch.tensor(ex.labels, dtype=torch.long)
    batch["score_mask"] = score
    if examples[0].labels is not None:
        batch["labels"] = labels
    batch["task"] = torch.full((B,), examples[0].task, dtype=torch.long)
    return batch


# ---------------------------------------------------------------- unlabeled text


def read_unlabeled(source: str) -> list[str]:
    """The non-blank lines (sentences) of a text file, or of a built-in corpus's train split."""
    source = str(source)
    if is_builtin(source):
        lines = [line for doc in read_corpus(source, "train") for line in doc.splitlines()]
    else:
        path = Path(source).expanduser()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read the unlabeled text ({e.strerror or e})") from None
        lines = decode_text(data, str(path)).splitlines()
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        raise DataError(f"{source}: no unlabeled sentences (expected text, one sentence per line)")
    return lines


class UnlabeledCollate:
    """Batches of unlabeled lines: words split on whitespace, cut to the limit, no labels."""

    def __init__(self, tokenizer, spec: TaskSpec):
        self.tokenizer, self.spec = tokenizer, spec

    def __call__(self, lines: list[str]) -> dict[str, torch.Tensor]:
        limit = word_limit(self.spec)
        return collate([encode_words(line.split()[:limit], self.tokenizer, self.spec) for line in lines],
                       self.spec)


class CrossViewBatches:
    """Labeled batches of each tag set in turn, alternating with unlabeled ones (module docstring)."""

    def __init__(self, labeled: list, unlabeled=None):
        self.labeled, self.unlabeled, self.turn = labeled, unlabeled, 0

    def source(self, turn: int):
        if self.unlabeled is not None:
            if turn % 2:
                return self.unlabeled
            turn //= 2
        return self.labeled[turn % len(self.labeled)]

    def __iter__(self):
        streams = {id(s): iter(s) for s in [*self.labeled, self.unlabeled] if s is not None}
        while True:
            batch = next(streams[id(self.source(self.turn))])
            self.turn += 1
            yield batch

    def state_dict(self) -> dict:
        return {"turn": self.turn, "labeled": [s.state_dict() for s in self.labeled],
                "unlabeled": None if self.unlabeled is None else self.unlabeled.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        same = len(state["labeled"]) == len(self.labeled) and (state["unlabeled"] is None) == (
            self.unlabeled is None)
        if not same:
            raise ValueError("the checkpoint's batch stream has other tag sets or unlabeled data")
        self.turn = int(state["turn"])
        for s, saved in zip(self.labeled, state["labeled"], strict=True):
            s.load_state_dict(saved)
        if self.unlabeled is not None:
            self.unlabeled.load_state_dict(state["unlabeled"])


# ---------------------------------------------------------------- evaluation


def predict(model: torch.nn.Module, examples: list[ViewExample], spec: TaskSpec,
            batch_size: int = 64) -> tuple[list[list[str]], float]:
    """(per sentence the primary module's label of each word; mean cross-entropy over the words)."""
    if not examples:
        return [], 0.0
    labels = spec.extra["tasks"][examples[0].task]["labels"]
    fallback = tag.fallback_label(labels)
    preds, total, count, k = [], 0.0, 0, 0
    for out, batch in run_model(model, examples, lambda e: collate(e, spec), batch_size):
        gold = batch["labels"]
        scored = gold != IGNORE
        total += float(F.cross_entropy(out.logits.float()[scored], gold[scored], reduction="sum"))
        count += int(scored.sum())
        best = out.logits.argmax(-1).tolist()  # (B, T)
        for row in best:
            ex = examples[k]
            cut = len(ex.gold) - len(ex.positions)  # words past the limit (--truncate)
            preds.append([labels[row[p]] for p in ex.positions] + [fallback] * cut)
            k += 1
    return preds, total / max(1, count)


def evaluate(model: torch.nn.Module, dev: list[list[ViewExample]], spec: TaskSpec,
             batch_size: int = 64) -> dict:
    """Dev metrics of every tag set: the first one's as `accuracy` (+ precision/recall/f1 for chunk
    labels), loss, n, truncated_words; the others' prefixed by their name (e.g. chunking_f1)."""
    metrics = {}
    for k, examples in enumerate(dev):
        preds, loss = predict(model, examples, spec, batch_size)
        found = {**tag.tag_metrics([ex.gold for ex in examples], preds), "loss": loss, "n": len(examples),
                 "truncated_words": sum(len(ex.gold) - len(ex.positions) for ex in examples)}
        prefix = "" if k == 0 else f"{spec.extra['tasks'][k]['name']}_"
        metrics.update({prefix + name: value for name, value in found.items()})
    return metrics
