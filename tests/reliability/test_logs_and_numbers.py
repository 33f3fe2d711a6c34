"""Logs and numbers (issue 16 class 9a).

- One bad line in the middle of metrics.jsonl made a resume delete every later row: now only a torn
  last line (a crash cut it) is dropped, and the resume says so; a bad line in the middle stays as
  it is and readers skip it.
- No JSON that lmlab writes holds bare NaN or Infinity (not JSON: jq, JavaScript and strict parsers
  refuse it): a non-finite number is written as null, and the object's "non_finite" field keeps what
  it was, e.g. {"loss": null, ..., "non_finite": {"loss": "nan"}}.
"""

import json
import math

import pytest

from lmlab.cli import main


def strict(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as strict JSON parsers do."""
    def refuse(name):
        raise ValueError(f"bare {name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def rows(run) -> list:
    return [strict(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_args):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(tiny_args(out, steps=8, save_every=4, eval_every=4, schedule="constant")) == 0
    return [r for r in rows(out)]


@pytest.fixture(scope="module")
def first_four(tmp_path_factory, tiny_args):
    out = tmp_path_factory.mktemp("first") / "run"
    assert main(tiny_args(out, steps=4, save_every=4, eval_every=4, schedule="constant")) == 0
    return out


BAD_LINES = {
    "not JSON": b"{\"step\": 3, \"loss\": 2.5",  # a line cut short, then the log went on
    "invalid UTF-8": b"{\"step\": 3, \"note\": \"\xff\xfe\"}",
    "nested 100000 deep": b"[" * 100_000 + b"]" * 100_000,
    "not an object": b"[1, 2, 3]",
}


@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_a_bad_line_in_the_middle_keeps_every_later_row(kind, tmp_path, first_four, reference, tiny_args,
                                                        capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(first_four, run)
    lines = (run / "metrics.jsonl").read_bytes().splitlines()
    lines.insert(2, BAD_LINES[kind])
    torn = b'{"step": 5, "loss": 2.'  # the run was killed while writing a row after its checkpoint
    (run / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n" + torn)
    assert main(tiny_args(run, steps=8, save_every=4, eval_every=4, schedule="constant", resume=True)) == 0
    err = capsys.readouterr().err
    assert f"lmlab: {run / 'metrics.jsonl'}: dropped its last line, cut by a crash (22 bytes)" in err
    assert "1 line(s) are not JSON rows; kept as they are, readers skip them" in err
    after = (run / "metrics.jsonl").read_bytes().splitlines()
    assert after[2] == BAD_LINES[kind]  # kept as it was
    good = [json.loads(line) for i, line in enumerate(after) if i != 2]
    strip = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in good]
    assert strip == [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in reference]


def test_non_finite_numbers_are_null_with_a_note(tmp_path):
    from lmlab.checkpoints.atomic import finite_json
    from lmlab.train.metrics import MetricsLog

    value = {"step": 3, "loss": math.nan, "grad_norm": math.inf, "dev": {"f1": -math.inf, "acc": 0.5},
             "curve": [1.0, math.nan]}
    assert strict(finite_json(value)) == {
        "step": 3, "loss": None, "grad_norm": None, "dev": {"f1": None, "acc": 0.5}, "curve": [1.0, None],
        "non_finite": {"loss": "nan", "grad_norm": "inf", "dev.f1": "-inf", "curve[1]": "nan"}}
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "loss": math.nan})
    assert rows(tmp_path) == [{"step": 1, "loss": None, "non_finite": {"loss": "nan"}}]
    assert log.read() == rows(tmp_path)


def test_evaluate_prints_json_even_when_a_number_is_infinite(tmp_path, monkeypatch, capsys):
    """The printed result of `lmlab evaluate` is JSON; a perplexity that overflowed is null + note."""
    import lmlab.eval.cli

    monkeypatch.setattr(lmlab.eval.cli, "evaluate_command",
                        lambda *a, **k: {"loss": 800.0, "ppl": math.inf, "tokens": 10})
    assert main(["evaluate", str(tmp_path), "--data", "x.txt", "--device", "cpu"]) == 0
    assert strict(capsys.readouterr().out) == {"loss": 800.0, "ppl": None, "tokens": 10,
                                               "non_finite": {"ppl": "inf"}}


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--set", "dropout=NaN")])
def test_non_finite_settings_are_refused_before_they_reach_a_json_file(tmp_path, tiny_args, capsys, flag,
                                                                       value):
    args = tiny_args(tmp_path / "run", steps=2)
    assert main([*args, flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("must be a number" in err or "dropout" in err), err
    assert not (tmp_path / "run" / "pretrain.json").exists()
