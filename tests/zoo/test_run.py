"""`lmlab zoo --run`: every family's own recipe under a shared budget, measured, resumable."""

import json
import time

import pytest
from tests.checks import one_line_error

from lmlab.errors import ConfigError
from lmlab.models import registry
from lmlab.zoo.report import CHARTS, TABLE, markdown, write_report
from lmlab.zoo.run import RESULTS, ZooRun, _steps_for, run_zoo, runnable


def _row(name, metric, value, accuracy=None):
    row = {"family": name, "paper": "X 2018", "corpus": "builtin:ptb", "parameters": 1234,
           "steps": 10, "train_tokens_per_s": 99.5, "wall_s": 3.0,
           "lm": {"metric": metric, "value": value, "split": "test"}}
    if accuracy is not None:
        row["transfer"] = {"task": "classify", "steps": 7, "dev_metrics": {"accuracy": accuracy, "loss": 0.6}}
    return row


def test_report_table_and_charts(tmp_path):
    results = {"settings": {"budget_minutes": 5.0},
               "families": {"a": _row("a", "ppl", 120.5, 0.71), "b": _row("b", "bpc", 1.42)}}
    write_report(results, tmp_path)
    table = (tmp_path / TABLE).read_text()
    assert ("| a | X 2018 | builtin:ptb | 1,234 | 10 | 100 | ppl 120.500 (test) | "
            "accuracy 0.710 (classify, 7 steps)") in table
    assert "| b |" in table and "bpc 1.420 (test) | - |" in table
    assert table == markdown(results)
    for chart in CHARTS:
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_steps_fill_the_time_left():
    now = time.perf_counter()
    assert _steps_for(now + 60.5, probe_wall=3.0, probe_steps=3) == 60
    assert _steps_for(now + 1.0, probe_wall=3.0, probe_steps=3) == 10  # a floor: a run worth measuring
    assert _steps_for(now - 5.0, probe_wall=3.0, probe_steps=3) == 10  # already late


def test_families_are_checked(register_family):
    assert "gpt2" in runnable() and runnable(("bert", "bert")) == ("bert",)
    with pytest.raises(ConfigError, match="unknown model family 'nope'"):
        runnable(("nope",))
    register_family("bare", object)
    register_family("untrainable", object, lineage=registry.Lineage("n", "p", "d", "m", "f", corpus=None,
                                                                     transfer=None))
    assert "bare" not in runnable() and "untrainable" not in runnable()
    with pytest.raises(ConfigError, match="untrainable declares no lineage"):
        runnable(("untrainable",))
    with pytest.raises(ConfigError, match="bare declares no lineage"):
        runnable(("bare",))
    assert "cvt" in runnable()  # no corpus, but a task it learns from the start


def test_a_report_dir_of_other_settings_is_refused(tmp_path):
    (tmp_path / RESULTS).write_text(json.dumps({"settings": {"budget_minutes": 9}, "families": {}}))
    with pytest.raises(ConfigError, match="made with other settings"):
        run_zoo(ZooRun(tmp_path, 1.0, ("gpt2",), progress=False))
    (tmp_path / RESULTS).write_text("{not json")
    one_line_error(ConfigError, lambda: run_zoo(ZooRun(tmp_path, 1.0, ("gpt2",), progress=False)),
                   "results.json", "not a zoo results file")


def test_bad_budget_is_one_line(capsys):
    from lmlab.cli import main

    assert main(["zoo", "--run", "--budget-minutes", "0"]) == 2
    assert "--budget-minutes must be > 0" in capsys.readouterr().err


@pytest.mark.slow
def test_zoo_run_trains_measures_and_resumes(tmp_path, one_thread_private_cache):
    run = ZooRun(tmp_path, 0.05, ("gpt2",), batch_size=4, eval_tokens=2000, progress=False)
    results = run_zoo(run)
    row = results["families"]["gpt2"]
    plan = json.loads((tmp_path / "gpt2" / "plan.json").read_text())
    assert row["steps"] == plan["pretrain_steps"] >= 10 and row["transfer"]["steps"] == plan["transfer_steps"]
    assert row["lm"]["metric"] == "ppl" and row["lm"]["split"] == "test"
    assert 1 < row["lm"]["value"] < 20000 and row["parameters"] > 0 and row["train_tokens_per_s"] > 0
    assert 0 <= row["transfer"]["dev_metrics"]["accuracy"] <= 1
    assert json.loads((tmp_path / RESULTS).read_text())["families"]["gpt2"]["lm"] == row["lm"]
    assert not (tmp_path / "gpt2" / "probe").exists()
    # A second run finds the family done: nothing is trained again, the same numbers come back.
    mtime = (tmp_path / "gpt2" / "lm" / "model.safetensors").stat().st_mtime_ns
    assert run_zoo(run) == results
    assert (tmp_path / "gpt2" / "lm" / "model.safetensors").stat().st_mtime_ns == mtime
