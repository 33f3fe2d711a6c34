"""`lmlab pretrain --out DIR --resume` continues a run with the settings it was started with
(DIR/pretrain.json); flags and --set fields given at the resume win over them."""

import json

from lmlab.cli import main
from lmlab.train.pretrain import SETTINGS_FILE

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


def test_a_fresh_run_does_not_read_old_settings(tmp_path, tiny_args):
    run = tmp_path / "run"
    (run).mkdir()
    (run / SETTINGS_FILE).write_text(json.dumps({"overrides": {"d_model": 32}}))
    assert main(tiny_args(run, steps=2)) == 0
    assert json.loads((run / "config.json").read_text())["d_model"] == 48  # the tiny preset's


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
