"""Feature-based tasks (the `scalar_mix` reader; Peters et al. 2018 §3.3): classify, pair and tag over the
words of each example, read by `lmlab.models.feature_heads` from fixed word vectors and a frozen encoder.
A pair's two texts are read separately (two rows each; the head compares their pooled vectors).

Words. A tag example's words are its tokens. A classify text is split into words as GloVe's and
ELMo's training text was tokenized (Penn Treebank style: punctuation and the clitics 's n't 're 've
'll 'd 'm are words of their own; hyphenated words and numbers stay whole): `split_words`.

Word vectors: row `word_ids[k]` of the head's fixed table, which holds the vectors of the words of the
training and dev data (`lmlab.data.word_vectors`; saved in the model dir, their words in
`TaskSpec.extra["words"]`, so a dir holds kilobytes of vectors, not GloVe's 80 MB). A word the vectors
lack, and any word first seen at `lmlab evaluate`, is row 0: a zero vector, counted in `oov_tokens`.

Encoder inputs, per kind (the family's declaration, never its name):
- `bilm` (ELMo): the words' characters framed `<S> w_1 ... w_n </S>`; word k is position k + 1.
- `masked_lm` (BERT): `[CLS] pieces [SEP]`, every word cut into sub-tokens on its own (WordPiece).
- `causal_lm` (GPT, GPT-2): the words' sub-tokens, words after the first with their leading space.
`word_start`/`word_end` give each word's sub-tokens: the head reads the first (`--word-pool first`,
BERT §5.3) or their mean. With `lowercase` the encoder reads the words lowercased (an encoder
pretrained on lowercased text such as builtin:ptb; the word vectors follow their own case rule).

Stateless encoders. The encoder runs on each batch from a zero state (ELMo's stateless mode, never
carried from one batch to the next): training batches are shuffled examples, so a carried state would
hand one example's text to an unrelated one and make an example's features depend on the batch order
and on the examples evaluated before it.

Inputs longer than `max_len` tokens (encoder input, or words without an encoder) are an error naming
the example, or with `truncate` lose their last words (tag: cut words are predicted as the fallback
label and counted in `truncated_words`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.data.word_vectors import vector_key
from lmlab.errors import ConfigError, DataError
from lmlab.models.heads import TaskOutput, TaskSpec
from lmlab.tasks import classify, tag
from lmlab.tasks.base import pad_2d, run_model
from lmlab.tasks.metrics import classification_metrics, regression_metrics

IGNORE = tag.IGNORE
ENCODER_KINDS = ("bilm", "masked_lm", "causal_lm")  # whose inputs this file builds

_CLITIC = re.compile(r"(?i)(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"(?i)n't|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.']\w+)*|\.\.\.|--|\S")


def split_words(text: str) -> list[str]:
    """Penn-Treebank-like words: "It's a three-hour film." -> It 's a three-hour film ."""
    return _TOKEN.findall(_CLITIC.sub(r" \1", text))


@dataclass
class WordExample:
    """One example as the feature-based task model reads it."""

    word_ids: list[int]  # rows of the word-vector table (0 = none)
    label: object  # class index or float (classify), label index per kept word (tag)
    encoder_ids: np.ndarray | list[int] | None = None  # (T, C) characters (bilm) or (T,) token ids
    word_start: list[int] | None = None
    word_end: list[int] | None = None
    n_words: int = 0  # words before truncation
    gold: tuple[str, ...] = ()  # tag: the sentence's labels (after the scheme conversion)
    second: WordExample | None = None  # pair: the second text (its label unused)


# ---------------------------------------------------------------- inputs


def encoder_input(kind: str, tokenizer, words: list[str]) -> tuple[object, list[int], list[int]]:
    """(the encoder's input for `words`, each word's first position, one past its last)."""
    if kind == "bilm":
        chars = tokenizer.char_ids(words).astype(np.int16)  # (n + 2, C): <S> words </S>
        return chars, list(range(1, len(words) + 1)), list(range(2, len(words) + 2))
    if kind not in ENCODER_KINDS:
        raise ConfigError(f"features of a {kind} model are not implemented (kinds: "
                          f"{', '.join(ENCODER_KINDS)})")
    ids = [tokenizer.cls_token_id] if kind == "masked_lm" else []
    start, end = [], []
    for pieces, at in tag.word_pieces(tokenizer, words):
        start.append(len(ids) + min(at, max(len(pieces) - 1, 0)))
        ids += pieces
        end.append(max(len(ids), start[-1] + 1))
    if kind == "masked_lm":
        ids.append(tokenizer.sep_token_id)
    return ids, start, end


def _fits(kind: str | None, tokenizer, words: list[str], limit: int):
    """(encoder input, starts, ends, words kept) with at most `limit` tokens; n kept = len(starts)."""
    if kind is None:
        return None, None, None, min(len(words), limit)
    enc, start, end = encoder_input(kind, tokenizer, words)
    if len(enc) <= limit:
        return enc, start, end, len(words)
    lo, hi = 0, len(words)  # the most words whose input fits (inputs grow with the words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encoder_input(kind, tokenizer, words[:mid])[0]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    enc, start, end = encoder_input(kind, tokenizer, words[:lo])
    return enc, start, end, lo


def example_words(examples, spec: TaskSpec) -> list[tuple[list[str], str]]:
    """(words, where) of each example: a tag sentence's tokens, or a classify text split into words
    (pair: the first text; `text_words` gives every text)."""
    if spec.name == "tag":
        return [(list(s.words), s.where) for s in examples]
    return [(split_words(ex.text), ex.where) for ex in examples]


def text_words(examples, spec: TaskSpec) -> list[list[str]]:
    """The words of every text of `examples` (both texts of a pair)."""
    words = [w for w, _ in example_words(examples, spec)]
    return words + [split_words(ex.text_b) for ex in examples] if spec.name == "pair" else words


def _text(words: list[str], where: str, tokenizer, spec: TaskSpec, row: dict, too_long: list) -> WordExample:
    """One text's word ids and encoder input (its label filled in by the caller)."""
    x = spec.extra
    if not words:
        raise DataError(f"{where}: no words")
    seen = [w.lower() for w in words] if x["lowercase"] else words
    enc, start, end, kept = _fits(x["encoder_kind"], tokenizer, seen, spec.max_len)
    if kept < len(words):
        too_long.append(where)
    if kept == 0:
        raise DataError(f"{where}: not even the first word fits in --max-len {spec.max_len} tokens")
    ids = [row.get(vector_key(w, x["vectors_lowercase"]), 0) for w in words[:kept]]
    return WordExample(ids, None, enc, start, end, len(words))


def featurize(examples, tokenizer, spec: TaskSpec, truncate: bool = False) -> list[WordExample]:
    """One WordExample per example (a pair's second text in `.second`); an unseen label, an empty text,
    or (without `truncate`) an input over spec.max_len tokens is a DataError before any training."""
    x = spec.extra
    if spec.name == "tag":
        examples = tag.apply_scheme(examples, x.get("tag_scheme", "auto"))
        tag.check_labels(examples, spec.labels)
    row = {w: i + 1 for i, w in enumerate(x["words"])}
    index = {lab: i for i, lab in enumerate(spec.labels)}
    out, too_long = [], []
    for ex, (words, where) in zip(examples, example_words(examples, spec), strict=True):
        f = _text(words, where, tokenizer, spec, row, too_long)
        if spec.name == "tag":
            f.label, f.gold = [index[lab] for lab in ex.labels[:len(f.word_ids)]], tuple(ex.labels)
        else:
            f.label = classify.target(ex, spec)
        if spec.name == "pair":
            f.second = _text(split_words(ex.text_b), where, tokenizer, spec, row, too_long)
        out.append(f)
    if too_long and not truncate:
        more = f" ({len(too_long) - 1} more are too long)" if len(too_long) > 1 else ""
        raise DataError(f"{too_long[0]}: the input is longer than the limit of {spec.max_len} tokens "
                        f"(--max-len){more}; pass --truncate to drop the last words")
    return out


def collate(examples: list[WordExample], spec: TaskSpec) -> dict[str, torch.Tensor]:
    """word_ids first (the training loop counts tokens by the first tensor), word_mask, the encoder's
    input_ids / attention_mask / word_start / word_end, labels. A pair's tensors are (B, 2, ...): the
    two texts of each example side by side (run as 2B rows; the head pools each, then compares them)."""
    pair = spec.name == "pair"
    features = [t for f in examples for t in (f, f.second)] if pair else examples
    batch = {"word_ids": pad_2d([f.word_ids for f in features], 0),
             "word_mask": pad_2d([[1] * len(f.word_ids) for f in features], 0)}
    kind = spec.extra["encoder_kind"]
    if kind is not None:
        if kind == "bilm":  # all-zero character rows are padding tokens
            width = max(len(f.encoder_ids) for f in features)
            ids = torch.zeros(len(features), width, features[0].encoder_ids.shape[1], dtype=torch.long)
            for r, f in enumerate(features):
                ids[r, :len(f.encoder_ids)] = torch.from_numpy(f.encoder_ids.astype(np.int64))
            batch["input_ids"] = ids  # (B, T, C)
        else:
            batch["input_ids"] = pad_2d([f.encoder_ids for f in features], spec.pad_id)
        batch["attention_mask"] = pad_2d([[1] * len(f.encoder_ids) for f in features], 0)
        batch["word_start"] = pad_2d([f.word_start for f in features], 0)
        batch["word_end"] = pad_2d([f.word_end for f in features], 1)
    if spec.name == "tag":
        batch["labels"] = pad_2d([f.label for f in features], IGNORE)
    else:
        batch["labels"] = torch.tensor([f.label for f in examples],
                                       dtype=torch.float32 if spec.regression else torch.long)
    if pair:  # (2B, ...) rows a_0 b_0 a_1 b_1 ... -> (B, 2, ...)
        batch = {k: v if k == "labels" else v.view(len(examples), 2, *v.shape[1:]) for k, v in batch.items()}
    return batch


def probe_encoder(backbone, tokenizer, kind: str) -> tuple[int, int]:
    """(number of hidden states, their width) of the encoder, from one word run through it."""
    enc, start, end = encoder_input(kind, tokenizer, ["the"])
    f = WordExample([0], 0, enc, start, end, 1)
    spec = TaskSpec("classify", labels=("a", "b"), reader="scalar_mix", extra={"encoder_kind": kind})
    batch = collate([f], spec)
    device = next(backbone.parameters()).device
    with torch.no_grad():
        out = backbone(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       output_hidden_states=True)
    if not out.hidden_states:
        raise ConfigError(f"the {kind} model gives no hidden_states to mix")
    return len(out.hidden_states), out.hidden_states[0].shape[-1]


# ---------------------------------------------------------------- loss, evaluation


def loss(out: TaskOutput, batch: dict, spec: TaskSpec) -> torch.Tensor:
    """The task's loss (cross-entropy, or MSE for regression) plus the head's penalty (L2 on the mix)."""
    logits = out.logits.float()
    if spec.name == "tag":
        value = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                                ignore_index=IGNORE)
    elif spec.regression:
        value = F.mse_loss(logits.squeeze(-1), batch["labels"].float())
    else:
        value = F.cross_entropy(logits, batch["labels"])
    return value if out.penalty is None else value + out.penalty


def evaluate(model: torch.nn.Module, features: list[WordExample], spec: TaskSpec,
             batch_size: int = 64) -> dict:
    """Dev metrics: classify as lmlab.tasks.classify, tag as lmlab.tasks.tag (accuracy over words,
    span F1 for chunk labels, truncated_words); loss; oov_tokens (words with no vector)."""
    total, preds, golds = 0.0, [], []
    for out, batch in run_model(model, features, lambda f: collate(f, spec), batch_size):
        n = int((batch["labels"] != IGNORE).sum()) if spec.name == "tag" else len(batch["labels"])
        total += float(loss(out, batch, spec)) * n
        logits = out.logits.float()
        preds += (logits.squeeze(-1) if spec.regression else logits.argmax(-1)).tolist()
        golds += batch["labels"].tolist()
    has_vectors = bool(spec.extra["vector_dim"])
    texts = [*features, *(f.second for f in features if f.second is not None)]
    oov = sum(i == 0 for f in texts for i in f.word_ids) if has_vectors else 0
    if spec.name == "tag":
        fallback = tag.fallback_label(spec.labels)
        pred = [[spec.labels[k] for k in p[:len(f.word_ids)]] + [fallback] * (f.n_words - len(f.word_ids))
                for p, f in zip(preds, features, strict=True)]
        n_labelled = sum(len(f.word_ids) for f in features)
        metrics = {**tag.tag_metrics([f.gold for f in features], pred),
                   "truncated_words": sum(f.n_words - len(f.word_ids) for f in features)}
    else:
        pred, gold = np.asarray(preds), np.asarray(golds)
        n_labelled = len(features)
        metrics = regression_metrics(pred, gold) if spec.regression else \
            classification_metrics(pred, gold, len(spec.labels))
    metrics = {**metrics, "loss": total / max(1, n_labelled), "n": len(features)}
    return {**metrics, "oov_tokens": oov} if has_vectors else metrics


def label_set(examples, options: dict):
    return (tag if options.get("task") == "tag" else classify).label_set(examples, options)


def read(source: str, split: str, options: dict):
    return (tag if options.get("task") == "tag" else classify).read(source, split, options)
