"""squad_scores on hand-computed v1.1 and v2.0 cases."""

from __future__ import annotations

import json

import pytest

from lmlab.errors import DataError
from lmlab.eval import squad_scores
from lmlab.eval.squad import normalize_answer, token_f1


def _dataset(questions, version=None):
    qas = []
    for qid, answers, *impossible in questions:
        qa = {"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in answers]}
        if impossible:
            qa["is_impossible"] = impossible[0]
        qas.append(qa)
    data = {"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}
    if version:
        data["version"] = version
    return data


def test_normalisation():
    assert normalize_answer("The  Cat's hat!") == "cats hat"
    assert normalize_answer("an apple, a pear and THE end.") == "apple pear and end"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert normalize_answer("A-B") == "ab"  # punctuation removed, not replaced by a space


def test_token_f1_by_hand():
    # pred tokens [big, red, dog], gold [red, dog, barks]: 2 shared, P = 2/3, R = 2/3
    assert token_f1("big red dog", "red dog barks") == pytest.approx(2 / 3)
    # multiset overlap: [x, x, y] and [x, y, y] share one x and one y
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert token_f1("", "") == 0.0  # v1.1
    assert token_f1("", "", "v2.0") == 1.0
    assert token_f1("the", "", "v2.0") == 1.0  # "the" normalises to nothing
    assert token_f1("dog", "", "v2.0") == 0.0


def test_v11_by_hand(tmp_path):
    data = _dataset([
        ("q1", ["Denver Broncos", "the Denver Broncos"]),
        ("q2", ["Santa Clara, California", "Levi's Stadium"]),
        ("q3", ["gold"]),
        ("q4", ["1966"]),
    ])
    preds = {
        "q1": "Denver Broncos!",  # exact after normalisation
        # [levis, stadium, in, santa, clara] vs [santa, clara, california]: P 2/5, R 2/3 -> 1/2;
        # vs [levis, stadium]: P 2/5, R 1 -> 4/7; the max is 4/7
        "q2": "Levi's Stadium in Santa Clara",
        "q3": "silver",
        # q4 unanswered: scores 0 and counts in the total
    }
    out = squad_scores(preds, data)
    assert out["version"] == "v1.1" and out["total"] == 4
    assert out["exact_match"] == pytest.approx(100 * 1 / 4)
    assert out["f1"] == pytest.approx(100 * (1 + 4 / 7 + 0 + 0) / 4)
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data))
    assert squad_scores(preds, path) == out
    assert squad_scores(preds, str(path)) == out


def test_v20_by_hand():
    data = _dataset([
        ("a1", ["Paris"], False),
        ("a2", ["blue whale", "the blue whale"], False),
        ("n1", [], True),
        ("n2", [], True),
        ("n3", [], True),  # not predicted: left out of the totals, as in the official script
    ], version="v2.0")
    preds = {"a1": "Paris", "a2": "whale", "n1": "", "n2": "a cat"}
    out = squad_scores(preds, data)
    assert out["version"] == "v2.0" and out["total"] == 4
    # a2: "whale" vs "blue whale": P 1, R 1/2 -> 2/3
    assert out["exact_match"] == pytest.approx(100 * 2 / 4)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert out["HasAns_exact_match"] == pytest.approx(50.0)
    assert out["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert out["HasAns_total"] == 2 and out["NoAns_total"] == 2
    assert out["NoAns_exact_match"] == out["NoAns_f1"] == pytest.approx(50.0)


def test_version_detection_and_errors(tmp_path):
    data = _dataset([("q", [], True)])  # is_impossible without a version field -> v2.0
    assert squad_scores({"q": ""}, data)["exact_match"] == 100.0
    assert squad_scores({"q": ""}, _dataset([("q", ["x"])]), version="v2.0")["f1"] == 0.0
    with pytest.raises(DataError, match="q"):
        squad_scores({}, _dataset([("q", [])]))  # v1.1 question without an answer
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(DataError, match="bad.json:1"):
        squad_scores({}, bad)
    with pytest.raises(DataError, match="version"):
        squad_scores({}, data, version="v3")
