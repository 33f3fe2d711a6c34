"""Atomic checkpoints (DESIGN.md, Reliability): a process killed at any stage of a checkpoint write
leaves the previous checkpoint loadable, never a half-written one that gets picked, and the next
`--resume` continues from the right step to the same losses as an uninterrupted run.

The crash hook LMLAB_TEST_CRASH_AT=STAGE makes `save_checkpoint` call os._exit(137) at that stage
of *every* write, so step-4 is written by a first run of 4 steps, and the crashing run resumes
from it and dies while writing step-8. The schedule is constant, so the 4-step first run and the
12-step reference share their first steps.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.checkpoints.atomic import MANIFEST, read_manifest, write_manifest
from lmlab.cli import main
from lmlab.errors import CheckpointError
from lmlab.train.state import checkpoints, remove_stale, resume_point, rotate

FLAGS = dict(schedule="constant", save_every=4, eval_every=4, set=["dropout=0.1"])
TORN = ["weights", "optimizer", "state", "manifest"]  # the write is incomplete at these stages


def logged(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def names(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def same_weights(a, b) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_args):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(tiny_args(out, steps=12, **FLAGS)) == 0
    return out


@pytest.fixture(scope="module")
def first_four(tmp_path_factory, tiny_args):
    out = tmp_path_factory.mktemp("first") / "run"
    assert main(tiny_args(out, steps=4, **FLAGS)) == 0
    assert names(out) == ["step-4"]
    return out


@pytest.mark.parametrize("stage", [*TORN, "committed"])
def test_crash_while_writing_a_checkpoint(stage, tmp_path, first_four, reference, tiny_args, capsys):
    run = tmp_path / "run"
    shutil.copytree(first_four, run)
    crashed = subprocess.run([sys.executable, "-m", "lmlab", *tiny_args(run, steps=12, resume=True, **FLAGS)],
                             env={**os.environ, "LMLAB_TEST_CRASH_AT": stage}, capture_output=True,
                             text=True, timeout=300)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    step4, step8 = run / "checkpoints" / "step-4", run / "checkpoints" / "step-8"
    if stage == "committed":
        assert names(run) == ["step-4", "step-8"]
        assert resume_point(run)[0] == step8
        read_manifest(step8)
    else:
        left = names(run)
        assert "step-8" not in left and any(re.fullmatch(r"step-8\.tmp-\d+", n) for n in left), left
        assert resume_point(run)[0] == step4
        assert [step for step, _ in checkpoints(run)] == [4]  # the temp folder is not a checkpoint
    model, tokenizer = lmlab.load(step4)
    assert tokenizer is not None and model.config.dropout == 0.1

    capsys.readouterr()
    assert main(tiny_args(run, steps=12, resume=True, **FLAGS)) == 0
    resumed_from = 8 if stage == "committed" else 4
    assert f"resumed from step {resumed_from})" in capsys.readouterr().out
    assert not [n for n in names(run) if ".tmp-" in n]  # the stale temp folder went at the start
    # rotation keeps the newest two, plus the checkpoint this run resumed from
    assert names(run) == (["step-12", "step-8"] if stage == "committed" else ["step-12", "step-4", "step-8"])
    assert logged(run) == logged(reference)
    assert same_weights(run / "model.safetensors", reference / "model.safetensors")


def test_rotation_never_deletes_the_checkpoint_resumed_from(tmp_path, tiny_args, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, steps=12, save_every=4)) == 0
    assert names(run) == ["step-12", "step-8"]  # keep_checkpoints=2: step-4 rotated away
    # A newer checkpoint that is corrupt: resume skips it and goes back to step-8 ...
    weights = run / "checkpoints" / "step-12" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        read_manifest(run / "checkpoints" / "step-12")
    assert resume_point(run)[0] == run / "checkpoints" / "step-8"
    # ... and writing step-10 next to the corrupt step-12 must not delete step-8.
    capsys.readouterr()
    assert main(tiny_args(run, steps=16, save_every=2, resume=True)) == 0
    assert "resumed from step 8)" in capsys.readouterr().out
    assert names(run) == ["step-14", "step-16", "step-8"]
    for name in names(run):
        read_manifest(run / "checkpoints" / name)


def test_rotate_keeps_the_newest_and_the_protected(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8, 10):
        (root / f"step-{step}").mkdir(parents=True)
        (root / f"step-{step}" / MANIFEST).write_text('{"files": {}}')
    rotate(tmp_path, 2, protect=root / "step-4")
    assert [s for s, _ in checkpoints(tmp_path)] == [4, 8, 10]
    rotate(tmp_path, 2)
    assert [s for s, _ in checkpoints(tmp_path)] == [8, 10]


def test_remove_stale_clears_unfinished_writes_only(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step-4", "step-8.tmp-123", "step-9", "step-2.old-77"):
        (root / name).mkdir(parents=True)
        (root / name / "model.safetensors").write_bytes(b"x")
    (root / "step-4" / MANIFEST).write_text('{"files": {}}')
    remove_stale(tmp_path)
    assert names(tmp_path) == ["step-4"]


def test_a_checkpoint_with_the_old_optimizer_layout_is_refused_in_one_line(tmp_path, first_four, tiny_args,
                                                                            capsys):
    """Checkpoints written before the (in, out) weight layout hold (out, in) AdamW moments: refused."""
    out = tmp_path / "run"
    shutil.copytree(first_four, out)
    step = out / "checkpoints" / "step-4"
    state_file = step / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state.pop("optimizer_layout") == 2
    state_file.write_text(json.dumps(state))
    # Keep the manifest valid, so the refusal is about the layout and nothing else.
    (step / MANIFEST).unlink()
    write_manifest(step, [p.name for p in step.iterdir()])
    assert main(tiny_args(out, steps=8, resume=True, **FLAGS)) == 2
    err = capsys.readouterr().err
    assert "optimizer_layout 2" in err and "weights still load with lmlab.load" in err
    assert len([line for line in err.splitlines() if "optimizer_layout" in line]) == 1
