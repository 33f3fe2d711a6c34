"""Transformer-XL training with memory (Dai et al. 2019, §3.2): contiguous streams, memory carried
from step to step (per micro-batch rows, reset when the streams start over), memory in the
checkpoint, exact resume."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.cli import main
from lmlab.data.sampler import ContiguousStreams
from lmlab.errors import CheckpointError
from lmlab.objectives.clm_state import CarriedStateCLM
from lmlab.train.config import TrainConfig
from lmlab.train.loop import train
from lmlab.train.state import load_carried

V, B, T = 50, 4, 8


def tiny_txl(**overrides):
    torch.manual_seed(0)
    # A wide init: with the default N(0, 0.02) every loss is ~ln V and the memory hardly shows.
    return lmlab.build("transfo-xl", "tiny", vocab_size=V, tgt_len=T, init_std=0.3, **overrides)


def train_rows(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


@torch.no_grad()
def manual_losses(model, streams: ContiguousStreams, steps: int, micro: int) -> list[float]:
    """The loss the loop should log at each step, computed by hand: micro-batch i of every step
    continues the memory rows i*micro:(i+1)*micro left at the step before; none at an epoch start."""
    mems: dict[int, list] = {}
    out = []
    for k in range(steps):
        x, y = streams.batch(k)
        if k % streams.steps_per_epoch == 0:
            mems = {}
        total = torch.zeros(())
        for i in range(0, len(x), micro):
            nll, mems[i] = model.nll(x[i:i + micro], y[i:i + micro], mems.get(i))
            total += nll.float().mean() / (len(x) // micro)
        out.append(float(total))
    return out


@pytest.mark.parametrize("micro", [B, 2, 1])
def test_loss_at_every_step_is_the_hand_computed_loss_with_carried_memory(tmp_path, micro):
    tokens = np.random.default_rng(0).integers(0, V, size=B * (3 * T + 1), dtype=np.int64)
    streams = ContiguousStreams(tokens, T, B)
    assert streams.steps_per_epoch == 3  # 8 steps: the streams start over at steps 3 and 6
    model = tiny_txl()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # lr so small that no weight moves: the logged losses then depend on the memory alone.
    cfg = TrainConfig(steps=8, batch_size=B, micro_batch_size=micro, seq_len=T, lr=1e-30, warmup=0,
                      schedule="constant", log_every=1, eval_every=0, save_every=0, device="cpu",
                      progress=False)
    objective = CarriedStateCLM()
    train(model, None, cfg, tmp_path / "run", streams, objective=objective)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-20, rtol=0)

    logged = [r["loss"] for r in train_rows(tmp_path / "run")]
    want = manual_losses(model, ContiguousStreams(tokens, T, B), 8, micro)
    assert logged == pytest.approx(want, abs=1e-6)
    with_memory = want if micro == B else manual_losses(model, ContiguousStreams(tokens, T, B), 8, B)
    with torch.no_grad():
        memoryless = [float(model.nll(*streams.batch(k))[0].mean()) for k in range(8)]
    assert with_memory[0] == pytest.approx(memoryless[0])  # step 0: nothing to remember yet
    assert abs(with_memory[1] - memoryless[1]) > 1e-3  # step 1 sees step 0's segment through the memory
    assert with_memory[3] == pytest.approx(memoryless[3])  # reset at the epoch start

    # The memory the objective holds now is the rows' last mem_len layer inputs, in row order.
    state = objective.state_dict()
    assert sorted(state) == [f"state.{i}" for i in range(model.config.n_layers)]
    assert state["state.0"].shape == (B, model.config.mem_len, model.config.d_model)
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-8" / "carried.safetensors"))
    assert all(torch.equal(saved[k], state[k]) for k in state)


def test_objective_state_round_trips_over_a_different_micro_batch_split():
    model = tiny_txl().eval()
    x = torch.randint(0, V, (B, T))
    a = CarriedStateCLM()
    for rows in (slice(0, 2), slice(2, 4)):
        a(model, (x[rows], x[rows]), rows)
    b = CarriedStateCLM()
    b.load_state_dict(a.state_dict())
    whole = CarriedStateCLM()
    whole.load_state_dict(a.state_dict())
    with torch.no_grad():
        parts = [b(model, (x[r], x[r]), r) for r in (slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 4))]
        one = whole(model, (x, x), slice(0, B))
    torch.testing.assert_close(torch.stack(parts).mean(), one, atol=1e-6, rtol=0)
    assert b._restored is None  # dropped once every saved row moved on
    b.reset()
    assert b.state_dict() == {}


def test_checkpoint_without_carried_state_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="carried.safetensors"):
        load_carried(tmp_path)


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory):
    # ~1.4k characters: 4 streams of ~350, so the 32-token segments wrap around within 12 steps.
    path = tmp_path_factory.mktemp("short") / "short.txt"
    words = "the cat sat on a mat and dog ran to big red house".split()
    rng = np.random.default_rng(1)
    path.write_text("".join(" ".join(rng.choice(words, size=6)) + "\n" for _ in range(60)))
    return path


def test_stopped_after_a_checkpoint_and_resumed_gives_bitwise_the_same_losses(tmp_path, tiny_args, corpus,
                                                                               short_corpus):
    flags = dict(model="transfo-xl", data=str(short_corpus), valid=str(corpus), steps=12, save_every=4,
                 eval_every=4, schedule="constant", micro_batch_size=2, set=["dropout=0.1", "mem_len=48"])
    reference = tmp_path / "reference"
    assert main(tiny_args(reference, **flags)) == 0
    run = tmp_path / "run"
    assert main(tiny_args(run, **{**flags, "steps": 4})) == 0  # the first run stops after step 4
    assert main(tiny_args(run, resume=True, **flags)) == 0  # and the second resumes from step-4

    assert train_rows(run) == train_rows(reference)  # JSON floats: bitwise
    state = json.loads((run / "checkpoints" / "step-12" / "trainer_state.json").read_text())
    assert state["sampler"]["step"] == 12
    for name in ("model.safetensors", "checkpoints/step-12/carried.safetensors",
                 "checkpoints/step-12/optimizer.safetensors"):
        want, got = load_file(str(reference / name)), load_file(str(run / name))
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name
    mems = load_file(str(run / "checkpoints" / "step-12" / "carried.safetensors"))
    assert mems["state.0"].shape == (4, 48, 32)  # (global rows, mem_len, d_model)


def test_seq_len_is_the_segment_length(tmp_path, tiny_args, capsys):
    assert main(tiny_args(tmp_path / "bad", model="transfo-xl", steps=1, set=["tgt_len=16"])) == 2
    assert "tgt_len" in capsys.readouterr().err
    assert main(tiny_args(tmp_path / "ok", model="transfo-xl", steps=1, seq_len=16)) == 0
    model, _ = lmlab.load(tmp_path / "ok")
    assert model.config.tgt_len == 16


@pytest.mark.slow
def test_two_processes_hold_their_own_rows_and_match_one(tmp_path, tiny_args, corpus, short_corpus):
    """torchrun x 2 (gloo): each rank keeps the memory of its 2 rows (one micro-batch row each);
    the checkpoint gathers all 4 rows, and one process resumes from it."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    flags = dict(model="transfo-xl", data=str(short_corpus), valid=str(corpus), steps=6, save_every=3,
                 eval_every=3, schedule="constant")
    single = tmp_path / "single"
    assert main(tiny_args(single, **flags)) == 0
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(port), "-m", "lmlab",
           *tiny_args(ddp, micro_batch_size=1, **{**flags, "steps": 3})]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    want = load_file(str(single / "checkpoints" / "step-3" / "carried.safetensors"))
    got = load_file(str(ddp / "checkpoints" / "step-3" / "carried.safetensors"))
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=1e-4)

    assert main(tiny_args(ddp, resume=True, **flags)) == 0  # one process continues the 2-rank run
    for a, b in zip(train_rows(single), train_rows(ddp), strict=True):
        assert a["step"] == b["step"]
        for key in ("loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
