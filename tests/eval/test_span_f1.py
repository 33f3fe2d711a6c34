"""span_f1 against seqeval's default (conlleval) mode on random tags, and hand-worked cases."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import DataError
from lmlab.eval import span_f1
from lmlab.eval.span_f1 import chunks

seqeval_metrics = pytest.importorskip("seqeval.metrics")

SCHEME_TAGS = {
    "bio": ["O", "B-X", "I-X", "B-Y", "I-Y"],
    "iob1": ["O", "I-X", "I-Y", "B-X", "B-Y"],  # IOB1 data: I- everywhere, B- only between same-type chunks
    "iobes": ["O", "B-X", "I-X", "E-X", "S-X", "B-Y", "I-Y", "E-Y", "S-Y"],
}


@st.composite
def gold_and_pred(draw, scheme):
    tags = st.sampled_from(SCHEME_TAGS[scheme])
    lengths = draw(st.lists(st.integers(0, 9), min_size=1, max_size=4))
    gold = [draw(st.lists(tags, min_size=n, max_size=n)) for n in lengths]
    pred = [draw(st.lists(tags, min_size=n, max_size=n)) for n in lengths]
    return gold, pred


def _seqeval(gold, pred):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined-metric warnings: both sides return 0 there
        m = seqeval_metrics
        report = m.classification_report(gold, pred, output_dict=True, zero_division=0)
        return (m.precision_score(gold, pred), m.recall_score(gold, pred), m.f1_score(gold, pred)), report


@pytest.mark.parametrize("scheme", sorted(SCHEME_TAGS))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_matches_seqeval_default_mode(scheme, data):
    gold, pred = data.draw(gold_and_pred(scheme))
    ours = span_f1(gold, pred)
    (p, r, f), report = _seqeval(gold, pred)
    assert ours["precision"] == pytest.approx(p, abs=1e-12)
    assert ours["recall"] == pytest.approx(r, abs=1e-12)
    assert ours["f1"] == pytest.approx(f, abs=1e-12)
    for kind, row in ours["per_type"].items():
        if row["support"]:  # seqeval's report lists only types present in the gold tags
            assert row["f1"] == pytest.approx(report[kind]["f1-score"], abs=1e-12)
            assert row["support"] == report[kind]["support"]


def test_chunk_boundaries_by_hand():
    # IOB2
    assert chunks(["B-NP", "I-NP", "O", "B-VP", "B-NP", "I-NP"]) == [("NP", 0, 1), ("VP", 3, 3), ("NP", 4, 5)]
    # An I- after O opens a chunk; a type change ends one (conlleval, also IOB1)
    assert chunks(["O", "I-NP", "I-NP", "I-VP"]) == [("NP", 1, 2), ("VP", 3, 3)]
    # IOB1: B- separates two adjacent chunks of the same type
    assert chunks(["I-NP", "I-NP", "B-NP", "I-NP", "O"]) == [("NP", 0, 1), ("NP", 2, 3)]
    # IOBES: S- is a chunk of its own, E- closes
    assert chunks(["S-PER", "S-PER", "B-LOC", "E-LOC", "I-LOC"]) == [
        ("PER", 0, 0), ("PER", 1, 1), ("LOC", 2, 3), ("LOC", 4, 4)]
    # a chunk open at the end of the sentence is closed there
    assert chunks(["O", "B-X", "I-X"]) == [("X", 1, 2)]
    assert chunks([]) == []


def test_scores_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-LOC"]]
    out = span_f1(gold, pred)
    # gold: PER(0-1) LOC(3) | ORG(0); pred: PER(0-1) ORG(3) | ORG(0) LOC(1) -> 2 of 4 right, 2 of 3 found
    assert out["n_gold"] == 3 and out["n_pred"] == 4 and out["n_correct"] == 2
    assert out["precision"] == 0.5 and out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert out["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["per_type"]["PER"]["f1"] == 1.0
    assert out["accuracy"] == pytest.approx(4 / 6)
    # a wrong boundary is a wrong chunk, even with the right type
    assert span_f1(["B-X", "I-X"], ["B-X", "O"])["f1"] == 0.0
    # a chunk never crosses a sentence break: flat vs split scores differ
    assert span_f1([["I-X"], ["I-X"]], [["I-X"], ["I-X"]])["n_gold"] == 2
    assert span_f1(["I-X", "I-X"], ["I-X", "I-X"])["n_gold"] == 1
    # nothing to find, nothing found
    assert span_f1(["O", "O"], ["O", "O"])["f1"] == 0.0


def test_bad_input():
    with pytest.raises(DataError, match="sentence 0"):
        span_f1([["O", "O"]], [["O"]])
    with pytest.raises(DataError, match="gold sentences"):
        span_f1([["O"], ["O"]], [["O"]])
    with pytest.raises(DataError, match="NN"):
        span_f1(["NN"], ["O"])
    with pytest.raises(DataError, match="bio scheme"):
        span_f1(["S-X"], ["O"], scheme="bio")
    with pytest.raises(DataError, match="unknown tag scheme"):
        span_f1(["O"], ["O"], scheme="xyz")
