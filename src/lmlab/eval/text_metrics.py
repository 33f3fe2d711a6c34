"""ROUGE-N and ROUGE-L F-measure (Lin 2004) and corpus BLEU (sacrebleu), for generated text.

ROUGE, on one prediction and one reference:

    tokens      lowercase, every run of characters outside [a-z0-9] is a separator (the
                tokenization of Lin's ROUGE-1.5.5 and of Google's rouge-score, without stemming)
    ROUGE-N     overlap = sum over n-grams g of min(count_pred(g), count_ref(g))
                P = overlap / #n-grams(pred),  R = overlap / #n-grams(ref)
    ROUGE-L     l = length of the longest common subsequence of the two token lists
                P = l / len(pred),  R = l / len(ref)
    F           2PR / (P + R), and 0 when P + R = 0 (an empty side scores 0)

Scores are fractions in [0, 1] (rouge-score's convention; multiply by 100 for the papers' tables).
BLEU is sacrebleu's corpus BLEU (Post 2018: 13a tokenization, 4-grams, brevity penalty) on a
0-100 scale, computed by lmlab.eval.bleu (tests compare it with sacrebleu).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from lmlab.errors import ConfigError
from lmlab.eval.bleu import corpus_bleu

_SEPARATOR = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """Lowercased alphanumeric runs of `text` (no stemming, no stop-word removal)."""
    return [t for t in _SEPARATOR.split(text.lower()) if t]


def _prf(overlap: int, n_pred: int, n_ref: int) -> dict:
    p = overlap / n_pred if n_pred else 0.0
    r = overlap / n_ref if n_ref else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": p, "recall": r, "fmeasure": f}


def rouge_n(prediction: str, reference: str, n: int) -> dict:
    """{"precision", "recall", "fmeasure"} of the n-gram overlap (clipped counts)."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"ROUGE-N needs n >= 1, got {n!r}")

    def grams(tokens):
        return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))

    pred, ref = grams(rouge_tokens(prediction)), grams(rouge_tokens(reference))
    overlap = sum((pred & ref).values())
    return _prf(overlap, sum(pred.values()), sum(ref.values()))


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence, O(len(a)·len(b)) time, O(len(b)) memory."""
    if not a or not b:
        return 0
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(prediction: str, reference: str) -> dict:
    """{"precision", "recall", "fmeasure"} of the longest common subsequence (sentence-level
    ROUGE-L: the whole text is one sequence; newlines are ordinary separators)."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    return _prf(lcs_length(pred, ref), len(pred), len(ref))


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Mean F-measure over the pairs: {"rouge1", "rouge2", "rougeL"} (fractions in [0, 1])."""
    if len(predictions) != len(references):
        raise ConfigError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ConfigError("ROUGE needs at least one prediction")
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        sums["rouge1"] += rouge_n(pred, ref, 1)["fmeasure"]
        sums["rouge2"] += rouge_n(pred, ref, 2)["fmeasure"]
        sums["rougeL"] += rouge_l(pred, ref)["fmeasure"]
    return {k: v / len(predictions) for k, v in sums.items()}


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (0-100) of the hypotheses against one reference each (lmlab.eval.bleu)."""
    return corpus_bleu(hypotheses, references)
