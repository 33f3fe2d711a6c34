"""Task files whose labels or answers cannot mean what the user meant are refused with one line
naming file:line: non-finite numbers (NaN, inf, in JSON or spelled in TSV), labels mixing
numbers, words and booleans, one number spelled two ways; SQuAD questions without the answers
their version needs, contradictory or mistyped is_impossible, duplicate ids."""

import json
from functools import partial

import pytest

from checks import one_line_error
from lmlab.errors import DataError
from lmlab.tasks import classify, qa

refused = partial(one_line_error, DataError)  # one line, naming every needle


def jsonl(tmp_path, labels, name="t.jsonl") -> str:
    path = tmp_path / name
    # json.dumps writes float("nan") as NaN and float("inf") as Infinity, as pandas and others do
    lines = [json.dumps({"text": f"text {i}", "label": lab}) for i, lab in enumerate(labels)]
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def tsv(tmp_path, labels, name="t.tsv") -> str:
    path = tmp_path / name
    path.write_text("sentence\tlabel\n" + "".join(f"text {i}\t{lab}\n" for i, lab in enumerate(labels)))
    return str(path)


def read_and_label(path):
    examples = classify.read(path, "train", {"task": "classify"})
    return classify.label_set(examples, {})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), "NaN", "nan", "inf", "-Infinity"])
def test_a_non_finite_label_is_refused_in_jsonl(tmp_path, bad):
    path = jsonl(tmp_path, ["pos", "neg", bad, "pos"] if isinstance(bad, str) else [0, 1, bad, 1])
    refused(lambda: read_and_label(path), "t.jsonl:3", "not a finite number")


@pytest.mark.parametrize("bad", ["NaN", "nan", "inf", "-inf", "Infinity"])
def test_a_non_finite_label_is_refused_in_tsv(tmp_path, bad):
    path = tsv(tmp_path, ["1", "0", "1", bad])
    refused(lambda: read_and_label(path), "t.tsv:5", "not a finite number")


@pytest.mark.parametrize("labels, line, kinds", [
    ([0, 1, "pos", "neg"], 3, ("a word", "a number")),
    ([0, 1, 1, "1", "neg"], 5, ("a word", "a number")),  # 1 and "1" are the same class; "neg" is not
    (["pos", "neg", True], 3, ("a boolean", "a word")),
    ([True, False, 1], 3, ("a number", "a boolean")),
])
def test_labels_mixing_kinds_are_refused_in_jsonl(tmp_path, labels, line, kinds):
    path = jsonl(tmp_path, labels)
    refused(lambda: read_and_label(path), f"t.jsonl:{line}", *kinds)


def test_labels_mixing_numbers_and_words_are_refused_in_tsv(tmp_path):
    path = tsv(tmp_path, ["0", "1", "pos", "neg"])
    refused(lambda: read_and_label(path), "t.tsv:4", "a word", "a number")


def test_one_number_spelled_two_ways_is_refused(tmp_path):
    path = jsonl(tmp_path, [0, 1, 1.0, 0])
    refused(lambda: read_and_label(path), "t.jsonl:3", "'1.0'", "'1'", "t.jsonl:2")
    path = tsv(tmp_path, ["0", "1", "01", "0"])
    refused(lambda: read_and_label(path), "t.tsv:4", "'01'", "'1'")


def test_what_is_still_read(tmp_path):
    assert read_and_label(jsonl(tmp_path, [0, 1, 10, "1"])) == (("0", "1", "10"), False)
    assert read_and_label(jsonl(tmp_path, [True, False, True])) == (("false", "true"), False)
    assert read_and_label(tsv(tmp_path, ["pos", "neg", "neutral"])) == (("neg", "neutral", "pos"), False)
    # STS-B: scores spelled with any number of decimals are one regression target
    assert read_and_label(tsv(tmp_path, ["3.800", "5.000", "0", "3.8", "2"])) == ((), True)
    assert read_and_label(jsonl(tmp_path, [-1, 1, -1])) == (("-1", "1"), False)


def squad_file(tmp_path, qas, version="1.1", context="Paris is in France.") -> str:
    data = {"version": version, "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data, indent=1))
    return str(path)


def question(qid, answers, **extra) -> dict:
    return {"id": qid, "question": "Where?", "answers": answers, **extra}


GOOD = question("good", [{"text": "France", "answer_start": 12}])


@pytest.mark.parametrize("bad, version, message", [
    (question("q7", []), "1.1", "has no answer (SQuAD v1.1 needs one"),
    ({"id": "q7", "question": "Where?"}, "1.1", "has no answer (SQuAD v1.1 needs one"),
    (question("q7", [], is_impossible=False), "2.0", "has no answer and is_impossible is false"),
    (question("q7", [{"text": "Paris", "answer_start": 0}], is_impossible=True), "2.0",
     "is_impossible is true but it has an answer"),
    (question("q7", [], is_impossible="false"), "2.0", "is_impossible must be true or false"),
    (question("q7", {"text": "Paris", "answer_start": 0}), "1.1", "'answers' must be a list"),
    (question("good", [{"text": "Paris", "answer_start": 0}]), "1.1", "question id 'good' also at line"),
])
def test_squad_questions_that_cannot_be_trained_on_are_refused(tmp_path, bad, version, message):
    path = squad_file(tmp_path, [GOOD, bad], version)
    got = refused(lambda: qa.read(path, "train", {}), message)
    qid = bad["id"]
    lines = [i for i, line in enumerate(open(path).read().splitlines(), 1) if f'"id": "{qid}"' in line]
    assert f"squad.json:{lines[-1]}: question {qid}" in got


def test_squad_files_that_are_fine(tmp_path):
    v2 = squad_file(tmp_path, [GOOD, question("none", [], is_impossible=True)], "2.0")
    assert [ex.impossible for ex in qa.read(v2, "train", {})] == [False, True]
    v11 = squad_file(tmp_path, [GOOD, question("two", [{"text": "Paris", "answer_start": 0},
                                                       {"text": "Paris", "answer_start": 0}])])
    assert [len(ex.answers) for ex in qa.read(v11, "dev", {})] == [1, 2]
