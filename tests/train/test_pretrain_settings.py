"""`lmlab pretrain --out DIR --resume` continues a run with the settings it was started with
(DIR/pretrain.json); flags and --set fields given at the resume win over them. A new run (no
--resume) never starts over an earlier one."""

import json

import pytest

from lmlab.cli import main
from lmlab.train.pretrain import SETTINGS_FILE, default_seq_len

RESUME = ["pretrain", "--no-progress", "--resume", "--device", "cpu"]


def steps_logged(run_dir) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def test_resume_reads_the_run_settings_and_given_flags_win(tmp_path, tiny_args, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, steps=4, seq_len=24, set=["d_model=32", "n_layers=1"])) == 0
    saved = json.loads((run / SETTINGS_FILE).read_text())
    assert saved["overrides"] == {"d_model": 32, "n_layers": 1}
    assert (saved["steps"], saved["seq_len"], saved["tokenizer"], saved["lr"]) == (4, 24, "chars", 3e-3)
    assert not {"out", "resume", "device", "compile", "progress"} & saved.keys()

    capsys.readouterr()
    # Without the saved settings this would build the preset's d_model 48 / 2 layers (a shape
    # mismatch) and read another corpus with the default tokenizer.
    assert main([*RESUME, "--out", str(run), "--steps", "6", "--set", "dropout=0.0"]) == 0
    assert "resumed from step 4" in capsys.readouterr().out
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]
    config = json.loads((run / "config.json").read_text())
    assert (config["d_model"], config["n_layers"], config["dropout"]) == (32, 1, 0.0)
    saved = json.loads((run / SETTINGS_FILE).read_text())
    assert saved["steps"] == 6 and saved["overrides"] == {"d_model": 32, "n_layers": 1, "dropout": 0.0}


def test_a_new_run_over_an_old_one_is_refused_and_nothing_is_deleted(tmp_path, tiny_args, capsys):
    """Without the refusal the old run's step-8 checkpoint would outlive the new run's step-4 (rotation
    keeps the highest steps) and be what a later --resume picks up."""
    run = tmp_path / "run"
    assert main(tiny_args(run, steps=8, save_every=4)) == 0
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    capsys.readouterr()
    assert main(tiny_args(run, steps=4, set=["d_model=32"])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a run" in err and "--resume" in err, err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


def test_a_tokenizer_of_another_kind_in_the_run_dir_is_refused(tmp_path, tiny_args, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, steps=2)) == 0  # chars
    capsys.readouterr()
    assert main(tiny_args(run, steps=4, resume=True, tokenizer="words")) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a chars tokenizer, not the words one" in err and len(err.splitlines()) == 1, err


def test_a_broken_settings_file_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for text, expected in [("{not json", "not a readable JSON file"),
                           ("[1, 2]", "expected a JSON object"),
                           ('{"stpes": 5}', "unknown setting(s) stpes"),
                           ('{"overrides": [1]}', "'overrides' must be an object")]:
        (run / SETTINGS_FILE).write_text(text)
        assert main([*RESUME, "--out", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and SETTINGS_FILE in err and expected in err, err


def test_default_seq_len_fits_the_model():
    assert default_seq_len("gpt2", "tiny", {}) == 128
    assert default_seq_len("gpt2", "gpt2-124m", {}) == 128
    assert default_seq_len("bert", "tiny", {}) == 64  # its context: 128 would be refused
    assert default_seq_len("gpt2", "tiny", {"max_seq_len": 32}) == 32
    assert default_seq_len("transfo-xl", "tiny", {}) == 16  # the preset's segment length tgt_len
    assert default_seq_len("transfo-xl", "tiny", {"tgt_len": 24}) == 24


def test_bert_tiny_pretrains_without_seq_len(tmp_path, tiny_args):
    run = tmp_path / "bert"
    assert main(tiny_args(run, model="bert", tokenizer="wordpiece", vocab_size=64, steps=2, batch_size=4,
                          seq_len=None)) == 0
    assert json.loads((run / SETTINGS_FILE).read_text())["seq_len"] == 64


@pytest.mark.parametrize("resume", [False, True])
def test_an_out_that_is_a_file_is_a_one_line_error(tmp_path, tiny_args, capsys, resume):
    path = tmp_path / "afile.txt"
    path.write_text("keep me")
    assert main(tiny_args(path, resume=resume)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lmlab pretrain: error: {path} exists and is not a directory; --out must be a run dir"
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("flags, expected", [
    (dict(tokenizer="byte_bpe", vocab_size=0), "--vocab-size must be an integer >= 257"),
    (dict(model="bert", tokenizer="wordpiece", vocab_size=64, masking="static", dupe_factor=0),
     "--dupe-factor must be an integer >= 1, got 0"),
    (dict(weight_decay=-1), "weight_decay must be >= 0"),
])
def test_zero_or_negative_flags_are_refused_not_replaced(tmp_path, tiny_args, capsys, flags, expected):
    """--vocab-size 0 used to train 8192 ids and --dupe-factor 0 to make 10 maskings."""
    out = tmp_path / "run"
    assert main(tiny_args(out, **flags)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (out / "metrics.jsonl").exists()
