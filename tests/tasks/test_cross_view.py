"""`lmlab finetune --task tag --cvt` (lmlab.tasks.cross_view, cross_view_setup) on a synthetic tagging
task: bad input as one-line errors, the alternating stream and its state, a run end to end (the saved
model is the weight average that was evaluated), bitwise resume, several tag sets, and CVT on a
pretrained ELMo."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.cli import main
from lmlab.tasks.cross_view import CrossViewBatches
from lmlab.tasks.finetune import EpochBatches
from lmlab.tokenizers.word_chars import WordCharTokenizer

LEXICON = {"DT": ["the", "a"], "JJ": ["big", "red", "small"], "NN": ["cat", "dog", "mat", "house", "car"],
           "VB": ["sat", "ran", "saw"], "IN": ["on", "to", "with"]}


def sentence(rng: random.Random) -> list[tuple[str, str, str]]:
    """(word, POS, chunk) of a sentence: NP VP (PP NP)."""
    def np_():
        words = [("DT", "B-NP")] + [("JJ", "I-NP")] * rng.randint(0, 1) + [("NN", "I-NP")]
        return [(rng.choice(LEXICON[pos]), pos, chunk) for pos, chunk in words]

    out = np_() + [(rng.choice(LEXICON["VB"]), "VB", "B-VP")]
    if rng.random() < 0.7:
        out += [(rng.choice(LEXICON["IN"]), "IN", "B-PP")] + np_()
    return out


def write_conll(path, n: int, seed: int, columns=(0, 1)) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        lines += [" ".join(tok[c] for c in columns) for tok in sentence(rng)] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def write_text(path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = [" ".join(w for w, _, _ in sentence(rng)) + "\n" for _ in range(n)]
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cvt")
    return {"train": write_conll(d / "train.conll", 40, 0), "dev": write_conll(d / "dev.conll", 12, 1),
            "chunk_train": write_conll(d / "chunk_train.conll", 30, 2, (0, 2)),
            "chunk_dev": write_conll(d / "chunk_dev.conll", 10, 3, (0, 2)),
            "text": write_text(d / "unlabeled.txt", 200, 4), "dir": d}


def args(files, out, *extra, unlabeled=True) -> list[str]:
    base = ["finetune", "none", "--task", "tag", "--cvt", "--cvt-preset", "tiny", "--train", files["train"],
            "--dev", files["dev"], "--out", str(out), "--batch-size", "8", "--lr", "3e-3", "--log-every", "1",
            "--device", "cpu", "--no-progress", "--ema-decay", "0.9"]
    return base + (["--unlabeled", files["text"]] if unlabeled else []) + list(extra)


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- bad input


def test_bad_input_is_one_line_naming_the_place(files, tmp_path, capsys):
    d = files["dir"]
    bad = d / "bad.conll"
    bad.write_text("the DT\ncat NN\nsat VB extra\n", encoding="utf-8")
    err = one_line_error(capsys, args({**files, "train": str(bad)}, tmp_path / "a", "--steps", "2"))
    assert f"{bad}:3: expected 2 columns (as on line 1), got 3" in err
    changed = d / "changed.conll"
    changed.write_text("the DT\ncat NN\n\nthe DT\ndog XX\n", encoding="utf-8")
    err = one_line_error(capsys, args({**files, "dev": str(changed)}, tmp_path / "b", "--steps", "2"))
    assert f"{changed}:4: label(s) not in the training data: 'XX' (1x)" in err
    empty = d / "empty.txt"
    empty.write_text("\n  \n\n", encoding="utf-8")
    err = one_line_error(capsys, args({**files, "text": str(empty)}, tmp_path / "c", "--steps", "2"))
    assert f"{empty}: no unlabeled sentences" in err
    err = one_line_error(capsys, args(files, tmp_path / "d", "--steps", "2", "--cvt-preset", "huge"))
    assert "--cvt-preset 'huge' does not exist" in err
    err = one_line_error(capsys, [*args(files, tmp_path / "e", "--steps", "2"), "--task", "classify"])
    assert "--cvt trains taggers" in err


def test_a_model_without_per_direction_states_is_refused(files, tmp_path, capsys, tiny_model_dir):
    gpt = tiny_model_dir("gpt2", WordCharTokenizer.train(["the cat"]))
    argv = args(files, tmp_path / "g", "--steps", "2")
    argv[1] = str(gpt)
    assert "declare no per-direction states" in one_line_error(capsys, argv)


# ---------------------------------------------------------------- the stream


def test_the_stream_alternates_and_resumes_where_it_was():
    def source(n, seed, offset):
        return EpochBatches(list(range(offset, offset + n)), 2, seed, lambda xs: {"x": torch.tensor(xs)})

    def stream():
        return CrossViewBatches([source(6, 0, 0), source(4, 1, 100)], source(10, 2, 1000))

    first = stream()
    it = iter(first)
    drawn = [next(it)["x"] for _ in range(9)]
    kinds = [int(x[0]) // 100 for x in drawn]  # 0: tag set 0, 1: tag set 1, 10: unlabeled
    assert kinds == [0, 10, 1, 10, 0, 10, 1, 10, 0]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps
    expected = [next(it)["x"] for _ in range(7)]
    again = stream()
    again.load_state_dict(state)
    it = iter(again)
    assert all(torch.equal(next(it)["x"], x) for x in expected)
    with pytest.raises(ValueError, match="other tag sets"):
        CrossViewBatches([source(6, 0, 0)], None).load_state_dict(state)


# ---------------------------------------------------------------- runs


def logged(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def test_a_run_learns_and_saves_the_weight_average(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(files, out, "--steps", "120", "--eval-every", "60", "--save-every", "60",
                     "--lr", "1e-2")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["reader"] == "directions" and report["family"] == "cvt" and report["steps"] == 120
    assert report["cross_view"]["n_unlabeled"] == 200 and report["cross_view"]["encoder_kind"] == "tagger"
    assert report["dev_metrics"]["accuracy"] > 0.9, report["dev_metrics"]
    rows = [r for r in logged(out) if "loss" in r]
    labeled, unlabeled = rows[0::2], rows[1::2]  # odd steps read unlabeled text: a KL, far below the CE
    assert labeled[0]["loss"] > 5 and unlabeled[0]["loss"] < 0.5
    # the saved model is the weight average the last evaluation read, and it scores the same again
    average = load_file(str(out / "checkpoints" / "step-120" / "objective.safetensors"))
    model, _ = lmlab.load(out)
    for i, p in enumerate(model.parameters()):
        assert torch.equal(p, average[f"w{i}"])
    capsys.readouterr()
    assert main(["evaluate", str(out), "--task", "tag", "--data", files["dev"], "--batch-size", "64"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == {k: v for k, v in report["dev_metrics"].items()}


def test_resume_is_bitwise(files, tmp_path):
    whole = tmp_path / "whole"
    assert main(args(files, whole, "--steps", "8", "--save-every", "4", "--eval-every", "4")) == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-8")  # as if killed after the step-4 checkpoint
    for name in ("model.safetensors", "MANIFEST.json", "report.json"):
        (resumed / name).unlink()
    assert main(args(files, resumed, "--steps", "8", "--save-every", "4", "--eval-every", "4",
                     "--resume")) == 0
    assert logged(resumed) == logged(whole)
    for name in ("model.safetensors", "checkpoints/step-8/objective.safetensors",
                 "checkpoints/step-8/model.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_two_tag_sets_share_the_encoder(files, tmp_path):
    out = tmp_path / "multi"
    also = f"{files['chunk_train']},{files['chunk_dev']}"
    assert main(args(files, out, "--steps", "8", "--also-task", also)) == 0
    report = json.loads((out / "report.json").read_text())
    metrics = report["dev_metrics"]
    assert report["cross_view"]["tag_sets"] == ["main", "chunk_train"]
    assert {"accuracy", "chunk_train_accuracy", "chunk_train_f1", "chunk_train_loss"} <= set(metrics)
    model, _ = lmlab.load(out)
    assert model.backbone.config.n_labels == (5, 4)  # DT JJ NN VB IN, then B-NP I-NP B-VP B-PP


def test_cvt_on_a_pretrained_elmo(files, tmp_path, tiny_model_dir):
    text = (files["dir"] / "unlabeled.txt").read_text()
    elmo = tiny_model_dir("elmo", WordCharTokenizer.train([text]))
    out = tmp_path / "elmo"
    argv = args(files, out, "--steps", "6", "--dropout", "0.0")
    argv[1] = str(elmo)
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["family"] == "elmo" and report["cross_view"]["encoder_kind"] == "bilm"
    model, _ = lmlab.load(out)
    assert model.spec.reader == "directions" and len(model.head.tasks) == 1
