"""lmlab.eval.bleu against sacrebleu itself (the oracle): the same corpus BLEU, n-gram statistics and
13a tokenization on the same hypotheses and references, including the corner cases (no match, an
empty hypothesis, a missing n-gram order, short hypotheses, punctuation, digits, escaped entities)."""

import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from lmlab.errors import ConfigError
from lmlab.eval.bleu import bleu_statistics, corpus_bleu, tokenize_13a

PIECES = ["the", "cat", "Katze", "die", "sat", "on", "mat", ".", ",", "3.5", "1,000", "-", "2-3", "(", ")",
          "&amp;", "&quot;", "<skipped>", "e.g.", "Menü", "Extras", "-", "Optionen", "'s", "!", "?", "/", "x"]


def oracle(hyps: list[str], refs: list[str]) -> sacrebleu.metrics.bleu.BLEUScore:
    return sacrebleu.corpus_bleu(hyps, [refs])


def assert_same(hyps, refs):
    ref = oracle(hyps, refs)
    stats = bleu_statistics(hyps, refs)
    assert (stats["sys_len"], stats["ref_len"]) == (ref.sys_len, ref.ref_len)
    assert stats["correct"] == list(ref.counts) and stats["total"] == list(ref.totals)
    assert corpus_bleu(hyps, refs) == pytest.approx(ref.score, rel=1e-12, abs=1e-12)


CASES = {
    "perfect": (["the cat sat on the mat ."], ["the cat sat on the mat ."]),
    "partial": (["the cat sat on a mat", "die Katze"], ["the cat sat on the mat .", "die Katze sitzt"]),
    "no match": (["a b c d"], ["e f g h"]),
    "empty hypothesis": ([""], ["the cat"]),
    "no 4-grams": (["the cat"], ["the cat sat"]),
    "unmatched bigrams": (["cat the mat on"], ["the cat on the mat"]),
    "longer than the reference": (["the cat sat on the mat on the mat"], ["the cat sat"]),
    "punctuation and digits": (["Costs 3.5 (or 1,000)-ish, e.g. x/y."],
                               ["Costs 3.5 (or 1,000) - ish, e.g. x / y ."]),
    "entities and skipped": (["Tom &amp; Jerry &quot;hi&quot; <skipped>"], ['Tom & Jerry "hi"']),
    "trailing space": (["the cat   "], ["the cat"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bleu_equals_sacrebleu(case):
    assert_same(*CASES[case])


sentence = st.lists(st.sampled_from(PIECES), min_size=0, max_size=12).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(sentence, sentence), min_size=1, max_size=6))
def test_bleu_equals_sacrebleu_on_random_corpora(pairs):
    assert_same([h for h, _ in pairs], [r for _, r in pairs])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab1.,-/&;()[]{}~^_`'\"@:+ qt")), max_size=30))
def test_13a_tokenization_equals_sacrebleus(text):
    assert tokenize_13a(text.rstrip()) == Tokenizer13a()(text.rstrip())


def test_hypotheses_and_references_must_pair():
    with pytest.raises(ConfigError, match="2 hypotheses for 1 references"):
        corpus_bleu(["a", "b"], ["a"])
