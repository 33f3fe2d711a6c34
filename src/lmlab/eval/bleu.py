"""Corpus BLEU (Papineni et al. 2002) computed as sacrebleu computes its default score (Post 2018):
`sacrebleu.corpus_bleu(hypotheses, [references])`, tokenizer 13a, 4-grams, "exp" smoothing, one
reference per hypothesis, on a 0-100 scale. tests/eval/test_bleu.py holds it equal to sacrebleu.

Tokenization 13a (mteval-v13a.pl, WMT's): remove `<skipped>`, join lines ending in "-", newlines
become spaces, unescape &quot; &amp; &lt; &gt;; then pad every character of {|}~, [\\]^_`, space-&,
(-+, :-@ and / with spaces, split "." and "," off unless a digit is on the side they touch, split
"-" after a digit; runs of whitespace become one space. Text is stripped on the right first.

Statistics per segment: hypothesis length c, reference length r, and for n = 1..4 the n-grams of the
hypothesis (total_n) and those matched by the reference with clipped counts (correct_n); the corpus
sums them. Score: BP · exp(Σ_n log p_n / 4) with BP = exp(1 - r/c) when c < r (0 when c = 0),
p_n = 100 · correct_n / total_n; where correct_n = 0 the "exp" smoothing (NIST's) puts
p_n = 100 / (2^m · total_n), m counting those orders so far; an order without any n-gram stops the
sum (its term and the later ones count as log 0, a huge negative number: the score is 0). No
matched word at all gives 0.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from lmlab.errors import ConfigError

MAX_ORDER = 4
_PUNCT = re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])")
_PERIOD_COMMA_AFTER = re.compile(r"([^0-9])([\.,])")
_PERIOD_COMMA_BEFORE = re.compile(r"([\.,])([^0-9])")
_DASH = re.compile(r"([0-9])(-)")
_LOG_ZERO = -9999999999.0  # sacrebleu's floor for log(0)


def tokenize_13a(line: str) -> str:
    """The 13a tokenization of one segment (tokens separated by single spaces)."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    line = _PUNCT.sub(r" \1 ", line)
    line = _PERIOD_COMMA_AFTER.sub(r"\1 \2 ", line)
    line = _PERIOD_COMMA_BEFORE.sub(r" \1 \2", line)
    line = _DASH.sub(r"\1 \2 ", line)
    return " ".join(line.split())


def _ngrams(tokens: list[str]) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, MAX_ORDER + 1)
                   for i in range(len(tokens) - n + 1))


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """{"sys_len", "ref_len", "correct": [4], "total": [4]} summed over the segments."""
    if len(hypotheses) != len(references):
        raise ConfigError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    sys_len = ref_len = 0
    correct, total = [0] * MAX_ORDER, [0] * MAX_ORDER
    for hyp, ref in zip(hypotheses, references, strict=True):
        h = tokenize_13a(hyp.rstrip()).split()
        r = tokenize_13a(ref.rstrip()).split()
        sys_len, ref_len = sys_len + len(h), ref_len + len(r)
        ref_grams = _ngrams(r)
        for gram, count in _ngrams(h).items():
            total[len(gram) - 1] += count
            if gram in ref_grams:
                correct[len(gram) - 1] += min(count, ref_grams[gram])
    return {"sys_len": sys_len, "ref_len": ref_len, "correct": correct, "total": total}


def score_from_statistics(stats: dict) -> float:
    """BLEU (0-100) of summed statistics, "exp" smoothing (see the module docstring)."""
    sys_len, ref_len, correct, total = stats["sys_len"], stats["ref_len"], stats["correct"], stats["total"]
    bp = 1.0
    if sys_len < ref_len:
        bp = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    if not any(correct):
        return 0.0
    precisions = [0.0] * MAX_ORDER
    smooth = 1.0
    for n in range(MAX_ORDER):
        if total[n] == 0:
            break
        if correct[n] == 0:
            smooth *= 2
            precisions[n] = 100.0 / (smooth * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    logs = [math.log(p) if p != 0.0 else _LOG_ZERO for p in precisions]
    return bp * math.exp(sum(logs) / MAX_ORDER)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) of the hypotheses against one reference each, as sacrebleu computes it."""
    return score_from_statistics(bleu_statistics(hypotheses, references))
