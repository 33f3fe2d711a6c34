"""`--resume` never silently starts over or fails deep in torch: a run whose checkpoints are all
broken, a malformed trainer_state.json, or optimizer state that does not fit the model is a
one-line CheckpointError naming the file; a skipped broken checkpoint and a run without any
checkpoint are each told in one line."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmlab.checkpoints.atomic import MANIFEST, write_manifest
from lmlab.cli import main


def logged_steps(run_dir) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tiny_args):
    out = tmp_path_factory.mktemp("first") / "run"
    assert main(tiny_args(out, steps=4, save_every=2)) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    return out


@pytest.fixture
def run(tmp_path, two_checkpoints):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    return out


def recommit(step) -> None:
    """A valid manifest over the edited files, so what is refused is the edit itself."""
    (step / MANIFEST).unlink()
    write_manifest(step, [p.name for p in step.iterdir()])


@pytest.mark.parametrize("manifest", ["kept", "broken"])
def test_resume_with_only_broken_checkpoints_is_refused(run, tiny_args, capsys, manifest):
    shutil.rmtree(run / "checkpoints" / "step-2")
    step = run / "checkpoints" / "step-4"
    (step / "model.safetensors").write_bytes(os.urandom(1024))
    if manifest == "broken":
        (step / MANIFEST).write_text("{not json")
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(tiny_args(run, steps=5, resume=True)) == 2
    err = one_line(capsys.readouterr().err)
    assert "cannot resume from" in err and str(step) in err and "remove" in err, err
    assert ("unreadable manifest" if manifest == "broken" else "model.safetensors: size 1024 bytes") in err
    assert (run / "metrics.jsonl").read_text() == before  # nothing trained from step 0


def test_a_broken_newer_checkpoint_is_skipped_and_said(run, tiny_args, capsys):
    (run / "checkpoints" / "step-4" / "model.safetensors").write_bytes(os.urandom(1024))
    capsys.readouterr()
    assert main(tiny_args(run, steps=5, resume=True)) == 0
    out, err = capsys.readouterr()
    assert "resumed from step 2)" in out
    assert "skipped step-4" in one_line(err) and "model.safetensors" in err, err
    assert logged_steps(run) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("where", ["empty", "missing"])
def test_resume_without_a_checkpoint_starts_and_says_so(tmp_path, tiny_args, capsys, where):
    out = tmp_path / "run"
    if where == "empty":
        out.mkdir()
    assert main(tiny_args(out, steps=2, resume=True)) == 0
    assert "no checkpoint to resume from" in one_line(capsys.readouterr().err)
    assert logged_steps(out) == [1, 2]


@pytest.mark.parametrize("edit, expected", [
    (lambda s: {**s, "step": "x"}, "'step' must be a non-negative integer, got 'x'"),
    (lambda s: {k: v for k, v in s.items() if k != "tokens"}, "'tokens' must be a non-negative integer"),
    (lambda s: {**s, "step": 3}, "'step' is 3 in checkpoint step-4"),
    (lambda s: {k: v for k, v in s.items() if k != "rng"}, "'rng' must be an object"),
    (lambda s: {**s, "sampler": None}, "'sampler' must be an object"),
    (lambda s: {**s, "optimizer_layout": "2"}, "'optimizer_layout' must be an integer"),
    (lambda s: [s], "expected a JSON object, got list"),
    (None, "not a readable JSON file"),
])
def test_a_malformed_trainer_state_is_named_not_blamed_on_the_layout(run, tiny_args, capsys, edit, expected):
    step = run / "checkpoints" / "step-4"
    file = step / "trainer_state.json"
    file.write_text("{truncated" if edit is None else json.dumps(edit(json.loads(file.read_text()))))
    recommit(step)
    capsys.readouterr()
    assert main(tiny_args(run, steps=5, resume=True)) == 2
    err = one_line(capsys.readouterr().err)
    assert str(file) in err and expected in err and "predates" not in err, err


def test_optimizer_state_of_the_wrong_shape_is_refused(run, tiny_args, capsys):
    step = run / "checkpoints" / "step-4"
    tensors = load_file(str(step / "optimizer.safetensors"))
    tensors["state.0.exp_avg"] = torch.zeros(2)
    save_file(tensors, str(step / "optimizer.safetensors"))
    recommit(step)
    capsys.readouterr()
    assert main(tiny_args(run, steps=5, resume=True)) == 2
    err = one_line(capsys.readouterr().err)
    assert str(step / "optimizer.safetensors") in err and "state.0.exp_avg is (2,)" in err, err
