"""Exact resume (DESIGN.md, Reliability): on CPU a run killed with SIGKILL and restarted with
`--out DIR --resume` alone logs bitwise the same losses, and ends with the same weights, as a run
never stopped.

Dropout is on, so the torch RNG state has to come back too. The killed run sleeps before every
step (a wrapper around the CLI) so that the test can kill it after a checkpoint, mid-run.
"""

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lmlab.cli import main

FLAGS = dict(steps=12, save_every=4, eval_every=4, set=["dropout=0.1"])
# Per family: the default (gpt2) and one that carries state across steps (ELMo's two LSTMs), whose
# state must come back from the checkpoint too.
FAMILY_FLAGS = {"gpt2": {}, "elmo": dict(model="elmo", tokenizer="word_chars", seq_len=8)}

SLOW_PRETRAIN = """
import sys, time
import lmlab.train.loop as loop
from lmlab.cli import main

lr_at = loop.lr_at

def slow_lr_at(*args, **kwargs):  # called once per optimizer step
    time.sleep(float(sys.argv[1]))
    return lr_at(*args, **kwargs)

loop.lr_at = slow_lr_at
sys.exit(main(sys.argv[2:]))
"""


def logged(run_dir) -> list[dict]:
    """metrics.jsonl without the wall-clock field, which no two runs share."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def last_logged_step(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    steps = [0]
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                steps.append(json.loads(line)["step"])
            except (ValueError, KeyError):
                break
    return max(steps)


def kill_after_checkpoint(cmd: list[str], run_dir, step: int, logged_past: int, stderr) -> int:
    """Start `cmd`, SIGKILL it once checkpoint `step` is committed and step `logged_past` logged."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
    manifest = run_dir / "checkpoints" / f"step-{step}" / "MANIFEST.json"
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if manifest.exists() and last_logged_step(run_dir) >= logged_past:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("family", ["gpt2", pytest.param("elmo", marks=pytest.mark.slow)])  # ~13 s each
def test_killed_and_resumed_run_is_bitwise_identical(tmp_path, tiny_args, capsys, family):
    flags = {**FLAGS, **FAMILY_FLAGS[family]}
    reference = tmp_path / "reference"
    assert main(tiny_args(reference, **flags)) == 0

    run = tmp_path / "killed"
    script = tmp_path / "slow_pretrain.py"
    script.write_text(SLOW_PRETRAIN)
    with open(tmp_path / "killed.stderr", "wb") as stderr:
        rc = kill_after_checkpoint([sys.executable, str(script), "0.3", *tiny_args(run, **flags)],
                                   run, step=4, logged_past=6, stderr=stderr)
    assert rc == -signal.SIGKILL, f"the run ended by itself (rc {rc}) before it could be killed: " \
                                  + (tmp_path / "killed.stderr").read_text()[-2000:]
    killed_at = last_logged_step(run)
    assert killed_at >= 6 and not (run / "model.safetensors").exists()

    capsys.readouterr()
    # Resumed as the README shows: the run's own settings (OUT/pretrain.json) fill in the rest.
    assert main(["pretrain", "--no-progress", "--out", str(run), "--resume", "--device", "cpu"]) == 0
    resumed_from = int(re.search(r"resumed from step (\d+)", capsys.readouterr().out).group(1))
    assert resumed_from in (4, 8) and resumed_from < killed_at  # lines logged after it were dropped

    assert logged(run) == logged(reference)  # float equality after a JSON round trip: bitwise
    assert [r["step"] for r in logged(run) if "loss" in r] == list(range(1, 13))
    carried = ["checkpoints/step-12/carried.safetensors"] if family == "elmo" else []
    for name in ("model.safetensors", "checkpoints/step-12/model.safetensors",
                 "checkpoints/step-12/optimizer.safetensors", *carried):
        want, got = load_file(str(reference / name)), load_file(str(run / name))
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name
