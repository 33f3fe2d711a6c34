"""FSDP2 (`lmlab pretrain --fsdp`, docs/scaling.md): under `torchrun --nproc-per-node 2` (gloo on CPU)
sharded training logs the losses and gradient norms of DDP, writes checkpoints that `lmlab.load`
reads, and resumes from them to the same losses.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import lmlab
from lmlab.checkpoints.atomic import read_manifest

pytestmark = pytest.mark.slow

FLAGS = dict(steps=4, batch_size=4, micro_batch_size=1, warmup=1, save_every=2, eval_every=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str]) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "lmlab", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(want, got, strict=True):
        for key in ("loss", "val_loss", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_args):
    out = tmp_path_factory.mktemp("ddp") / "run"
    torchrun(tiny_args(out, **FLAGS))
    return out


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, tiny_args):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    stdout = torchrun(tiny_args(out, fsdp=True, **FLAGS))
    assert stdout.count("trained 4 steps") == 1  # the summary comes from rank 0 only
    return out


def test_fsdp_matches_ddp_and_saves_full_checkpoints(fsdp_run, ddp_run):
    assert_same_run(metrics(fsdp_run), metrics(ddp_run))
    assert sorted(p.name for p in (fsdp_run / "checkpoints").iterdir()) == ["step-2", "step-4"]
    for name in ("step-2", "step-4"):
        read_manifest(fsdp_run / "checkpoints" / name)
    fsdp_model, tok = lmlab.load(fsdp_run)  # a plain model dir, like a DDP run's
    ddp_model, _ = lmlab.load(ddp_run)
    assert tok is not None
    want, got = ddp_model.state_dict(), fsdp_model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4)


def test_fsdp_resumes_from_its_checkpoint(tmp_path, tiny_args, fsdp_run, ddp_run):
    out = tmp_path / "run"
    shutil.copytree(fsdp_run, out)
    shutil.rmtree(out / "checkpoints" / "step-4")  # as if killed after the step-2 checkpoint
    stdout = torchrun(tiny_args(out, fsdp=True, resume=True, **FLAGS))
    assert "resumed from step 2" in stdout
    assert_same_run(metrics(out), metrics(ddp_run))  # optimizer state and data position came back
