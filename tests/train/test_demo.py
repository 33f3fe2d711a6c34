"""`lmlab demo` (make demo) end to end, shrunk: the same steps on a generated corpus with a tiny
GPT-2, so it runs in seconds. A second demo replaces the first; any other run at --out is refused."""

import json

import pytest

import lmlab.demo as demo
from lmlab.cli import main


@pytest.fixture
def tiny_demo(monkeypatch, corpus):
    monkeypatch.setattr(demo, "DATA", str(corpus))
    monkeypatch.setattr(demo, "MODEL", {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64,
                                        "max_seq_len": 96, "dropout": 0.1})
    monkeypatch.setattr(demo, "TRAIN", {**demo.TRAIN, "batch_size": 8, "seq_len": 32, "warmup": 5})


def test_demo_trains_reports_and_replaces_an_earlier_demo(tmp_path, tiny_demo, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.001", "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 50  # the floor of the calibrated step count
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 1.0 and report["val_ppl"] < report["uniform_ppl"] / 4  # it learned
    assert len(report["samples"]) == len(demo.PROMPTS)
    for name in ("metrics.jsonl", "plots/loss.png", "model.safetensors", "pretrain.json",
                 "checkpoints/step-50"):
        assert (out / name).exists(), name
    assert "validation perplexity" in capsys.readouterr().out

    # An earlier demo is known by its pretrain.json or, from before that file, its report.json.
    for leftover in ("step-999", "step-998"):
        (out / "checkpoints" / leftover).mkdir()  # the replacing demo must not keep it
        assert main(["demo", "--out", str(out), "--minutes", "0.001", "--device", "cpu"]) == 0
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-25", "step-50"]
        (out / "pretrain.json").unlink()


def test_demo_refuses_to_run_over_another_run(tmp_path, tiny_demo, tiny_args, capsys):
    out = tmp_path / "other"
    assert main(tiny_args(out, steps=2)) == 0
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--minutes", "0.001", "--device", "cpu"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--minutes", "0"], "--minutes must be a positive number of minutes, got 0"),
    (["--minutes", "-1"], "--minutes must be a positive number of minutes, got -1"),
    (["--out", "FILE"], "exists and is not a directory; --out must be a run dir"),
])
def test_demo_refuses_a_bad_budget_or_out(tmp_path, tiny_demo, capsys, argv, expected):
    """--minutes 0 and -1 used to train 50 steps ("~-1 min"); a file as --out was a traceback."""
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    argv = [str(afile) if a == "FILE" else a for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "demo")]
    assert main(["demo", *out, *argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "demo").exists()
