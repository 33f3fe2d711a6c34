"""Data parallelism (DESIGN.md, Training): `torchrun --nproc-per-node 2` (gloo on CPU) trains the
same model as one process with the same global batch, and only rank 0 writes.

Each rank gets half of every global batch and accumulates over two micro-batches, so the DDP
gradient all-reduce, `no_sync` and the cross-rank loss/eval reductions are all on the path. The
character transformer's auxiliary losses add classifiers outside DDP, whose gradients the loop
averages itself.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lmlab.checkpoints.atomic import read_manifest
from lmlab.cli import main

pytestmark = pytest.mark.slow

FLAGS = dict(steps=4, batch_size=4, warmup=1, save_every=2, eval_every=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family,flags", [("gpt2", {}), ("char-transformer", {"seq_len": 16})])
def test_two_processes_match_one(tmp_path, tiny_args, family, flags):
    flags = {**FLAGS, "model": family, **flags}
    single = tmp_path / "single"
    assert main(tiny_args(single, **flags)) == 0

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "lmlab", *tiny_args(ddp, micro_batch_size=1, **flags)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("trained 4 steps") == 1  # the summary comes from rank 0 only

    one, two = read_metrics(single), read_metrics(ddp)
    assert [(r["step"], sorted(r)) for r in two] == [(r["step"], sorted(r)) for r in one]  # no line twice
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)
        if "lr" in a:
            assert (b["lr"], b["tokens"]) == (a["lr"], a["tokens"])

    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["step-2", "step-4"]
    for name in ("step-2", "step-4"):
        read_manifest(ddp / "checkpoints" / name)
    read_manifest(ddp)
    files = ["model.safetensors"]
    if family == "char-transformer":  # the objective's own classifiers
        files.append("checkpoints/step-4/objective.safetensors")
    for name in files:
        want, got = load_file(str(single / name)), load_file(str(ddp / name))
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-3)
