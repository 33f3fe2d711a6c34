"""Signals and faults in the loop (issue 16 class 8).

- SIGTERM (what schedulers send before preemption) and SIGINT finish the step, write a checkpoint of
  it and exit with one line (143 / 130); `--resume` then continues to the same losses, bitwise, as a
  run never stopped. The signal is real and asynchronous: the hook LMLAB_TEST_STALL=0:3 only holds
  the run at the end of step 3 until it arrives, so the test knows where it stops.
- A full disk while a checkpoint is written: one line naming it, its temp folder removed, the
  previous checkpoint kept (and resumable).
- A stalled torchrun rank: the others stop after --collective-timeout seconds with one line.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lmlab.cli import main

FLAGS = dict(steps=8, schedule="constant", set=["dropout=0.1"])  # dropout: the RNG state must resume too


def losses(run) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_args):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(tiny_args(out, **FLAGS)) == 0
    return losses(out)


def stop_at_step_3(run, tiny_args, signum, extra=()) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMLAB_TEST_STALL": "0:3"}
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", *tiny_args(run, **FLAGS), *extra], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or len(losses(run)) < 2:  # step 2 logged: 3 is running
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_the_step_and_resume_is_exact(tmp_path, tiny_args, reference, signum, code):
    run = tmp_path / "run"
    done = stop_at_step_3(run, tiny_args, signum)
    name = signal.Signals(signum).name
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stderr.strip() == (f"lmlab pretrain: stopped by {name} after step 3: checkpoint "
                                   f"{run / 'checkpoints' / 'step-3'} written; run the same command with "
                                   f"--resume to continue")
    assert sorted(os.listdir(run / "checkpoints")) == ["step-3"]
    assert main(tiny_args(run, resume=True, **FLAGS)) == 0
    assert losses(run) == reference  # bitwise: nothing lost, nothing done twice


def test_finetune_stops_the_same_way(tiny_model_dir, tmp_path):
    from lmlab.tokenizers.wordpiece import WordPieceTokenizer

    model = tiny_model_dir("bert", WordPieceTokenizer.train(["the cat sat on the mat"] * 3, vocab_size=40))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": t.split()[1]}) + "\n"
                            for t in ["the cat sat", "the mat sat", "a cat sat", "a mat sat"]))
    out = tmp_path / "ft"
    argv = [sys.executable, "-m", "lmlab", "finetune", str(model), "--task", "classify", "--train", str(data),
            "--dev", str(data), "--out", str(out), "--steps", "6", "--batch-size", "2", "--device", "cpu",
            "--no-progress"]
    done = subprocess.run(argv, env={**os.environ, "LMLAB_TEST_SIGNAL_AT": "2"}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 143 and "stopped by SIGTERM after step 2" in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1
    assert (out / "checkpoints" / "step-2" / "MANIFEST.json").exists()
    again = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and (out / "report.json").exists(), again.stderr[-2000:]


@pytest.mark.parametrize("writer", ["lmlab.train.state", "lmlab.checkpoints.io"])  # optimizer, weights
def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(tmp_path, tiny_args, reference,
                                                                            monkeypatch, capsys, writer):
    import importlib

    module = importlib.import_module(writer)
    real, calls = module.save_file, []

    def full_on_the_second_checkpoint(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # step-8's optimizer (its model written already) or its weights
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(module, "save_file", full_on_the_second_checkpoint)
    run = tmp_path / "run"
    assert main(tiny_args(run, save_every=4, **FLAGS)) == 2
    err = capsys.readouterr().err.strip()
    step4, step8 = run / "checkpoints" / "step-4", run / "checkpoints" / "step-8"
    assert err == (f"lmlab pretrain: error: {step8}: cannot write (No space left on device); {step4} is kept")
    assert sorted(os.listdir(run / "checkpoints")) == ["step-4"]  # the temp folder is gone
    monkeypatch.setattr(module, "save_file", real)  # space again: the run resumes from step-4
    assert main(tiny_args(run, save_every=4, resume=True, **FLAGS)) == 0
    assert losses(run) == reference


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_stalled_rank_stops_the_others_after_the_collective_timeout(tmp_path, tiny_args):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "-m", "lmlab",
           *tiny_args(run, steps=6, batch_size=4, save_every=2, collective_timeout=3)]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LMLAB_TEST_STALL": "1:3"})  # rank 1 hangs after step 3
    assert done.returncode != 0 and time.monotonic() - t0 < 120
    mine = [line for line in done.stderr.splitlines() if line.startswith("lmlab pretrain: error: rank 0:")]
    assert len(mine) == 1 and "a collective with the other processes failed" in mine[0], done.stderr[-3000:]
    assert "stalled past 3 s (--collective-timeout) or died; resume with --resume" in mine[0]
    assert 'lmlab/train' not in done.stderr  # no traceback from lmlab's code on any rank
    assert main(tiny_args(run, steps=6, batch_size=4, save_every=2, resume=True)) == 0  # from step-2
