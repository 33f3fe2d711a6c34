"""The non-finite guard (DESIGN.md, Finite weights): a NaN/inf loss or gradient skips the step and
is counted, K in a row stop the run, and a checkpoint with a non-finite tensor is never written."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.data.sampler import RandomWindowSampler
from lmlab.errors import CheckpointError
from lmlab.objectives.clm import clm_loss
from lmlab.train.config import TrainConfig
from lmlab.train.loop import TrainingError, train
from lmlab.train.optim import make_optimizer
from lmlab.train.state import checkpoints, save_checkpoint

VOCAB = 24


class InfGrad(torch.autograd.Function):
    """Identity forward (a finite loss), infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


class Faulty:
    """clm_loss, spoiled at the chosen (0-based) steps; records the weights every step starts from."""

    def __init__(self, model, bad_steps, spoil):
        self.model, self.bad_steps, self.spoil = model, set(bad_steps), spoil
        self.seen: list[list[torch.Tensor]] = []

    def __call__(self, net, batch):
        step = len(self.seen)  # one call per step: no gradient accumulation in these runs
        self.seen.append([p.detach().clone() for p in self.model.parameters()])
        loss = clm_loss(net, batch)
        return self.spoil(loss) if step in self.bad_steps else loss


SPOILERS = {
    "nan loss": lambda loss: loss * math.nan,
    "inf loss": lambda loss: loss * math.inf,
    "inf gradient": InfGrad.apply,
}


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def run(tmp_path, bad_steps, spoil=SPOILERS["nan loss"], **cfg_values):
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", vocab_size=VOCAB)
    tokens = np.random.default_rng(0).integers(0, VOCAB, 2000)
    batches = RandomWindowSampler(tokens, 16, 4, seed=0)
    cfg = TrainConfig(**{"steps": 6, "batch_size": 4, "seq_len": 16, "lr": 1e-3, "warmup": 0, "log_every": 1,
                         "save_every": 0, "progress": False, **cfg_values})
    objective = Faulty(model, bad_steps, spoil)
    result = train(model, None, cfg, tmp_path, batches, objective=objective)
    return result, objective


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", list(SPOILERS))
def test_one_bad_step_is_skipped_and_counted(tmp_path, kind):
    result, objective = run(tmp_path, bad_steps={3}, spoil=SPOILERS[kind])
    seen = objective.seen
    assert same(seen[3], seen[4]), "the bad step changed the weights"
    assert not same(seen[2], seen[3]) and not same(seen[4], seen[5]), "good steps must change the weights"
    assert result.skipped == 1
    logged = rows(tmp_path)
    assert [r["skipped"] for r in logged] == [0, 0, 0, 1, 1, 1]
    bad = logged[3]  # metrics.jsonl is JSON: a non-finite value is null, named in "non_finite"
    if kind == "inf gradient":
        assert math.isfinite(bad["loss"]) and bad["grad_norm"] is None
        assert set(bad["non_finite"]) == {"grad_norm"}
    else:
        assert bad["loss"] is None and bad["non_finite"]["loss"] == kind.split()[0]
    assert all(math.isfinite(r["loss"]) and "non_finite" not in r for i, r in enumerate(logged) if i != 3)
    # AdamW never saw the bad step: its step counter is one short, its moments finite
    optimizer = load_file(str(tmp_path / "checkpoints" / "step-6" / "optimizer.safetensors"))
    assert float(optimizer["state.0.step"]) == 5
    assert all(bool(torch.isfinite(t).all()) for t in optimizer.values())
    assert all(bool(torch.isfinite(t).all()) for t in load_file(str(tmp_path / "model.safetensors")).values())


def test_grad_clip_off_still_guards_infinite_gradients(tmp_path):
    result, objective = run(tmp_path, bad_steps={1}, spoil=SPOILERS["inf gradient"], grad_clip=0.0)
    assert result.skipped == 1 and same(objective.seen[1], objective.seen[2])


def test_bad_steps_apart_do_not_stop_the_run(tmp_path):
    result, _ = run(tmp_path, bad_steps={1, 3, 5}, max_bad_steps=2, steps=7)
    assert result.skipped == 3 and result.steps == 7


def test_k_bad_steps_in_a_row_stop_the_run_without_a_bad_checkpoint(tmp_path):
    with pytest.raises(TrainingError) as caught:
        run(tmp_path, bad_steps={2, 3, 4}, max_bad_steps=3, steps=10, save_every=1)
    message = str(caught.value)
    assert "\n" not in message
    assert "stopped at step 5" in message and "3 non-finite losses or gradients in a row" in message
    assert "--lr" in message
    written = checkpoints(tmp_path)
    assert [step for step, _ in written] == [3, 4]  # rotation keeps two; steps 3 and 4 were skipped ones
    for _, path in written:
        assert all(bool(torch.isfinite(t).all()) for t in load_file(str(path / "model.safetensors")).values())
    assert not (tmp_path / "model.safetensors").exists()  # the final model is written only by a finished run
    assert [r["skipped"] for r in rows(tmp_path)] == [0, 0, 1, 2]


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    model = lmlab.build("gpt2", "tiny", vocab_size=VOCAB)
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu")
    with torch.no_grad():
        model.blocks[1].mlp.c_fc.weight[0, 0] = math.inf
    with pytest.raises(CheckpointError, match="refusing to write checkpoint step-7: .*non-finite"):
        save_checkpoint(tmp_path, 7, model, None, optimizer, {"tokens": 0})
    with torch.no_grad():
        model.blocks[1].mlp.c_fc.weight[0, 0] = math.nan
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path, 7, model, None, optimizer, {"tokens": 0})
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_bad_run_between_log_steps_stops_at_the_next_one_with_every_bad_step_skipped(tmp_path):
    """The guard decides on the device; the loop reads its counts only at log, eval and save steps."""
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", vocab_size=VOCAB)
    objective = Faulty(model, {1, 2, 3}, SPOILERS["nan loss"])
    cfg = TrainConfig(steps=10, batch_size=4, seq_len=16, lr=1e-3, warmup=0, log_every=4, save_every=0,
                      progress=False, max_bad_steps=2)
    tokens = np.random.default_rng(0).integers(0, VOCAB, 2000)
    with pytest.raises(TrainingError, match="stopped at step 4: 3 non-finite losses or gradients in a row"):
        train(model, None, cfg, tmp_path, RandomWindowSampler(tokens, 16, 4, seed=0), objective=objective)
    seen = objective.seen
    assert len(seen) == 4 and not same(seen[0], seen[1])
    assert same(seen[1], seen[2]) and same(seen[2], seen[3])  # bad steps 1 and 2 left the weights alone
    assert same(seen[3], [p.detach() for p in model.parameters()])  # and so did bad step 3


@pytest.mark.parametrize("fused", [True, False])
def test_guard_skips_a_non_finite_step_with_either_kind_of_optimizer(fused):
    """Fused AdamW takes the verdict on the device (found_inf); any other optimizer gets it on the host."""
    from lmlab.train.distributed import Dist
    from lmlab.train.guard import NonFiniteGuard

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=fused, foreach=None if fused else False)
    guard = NonFiniteGuard(torch.device("cpu"), Dist())
    weight.grad = torch.full((3,), math.nan)
    guard.step(optimizer, torch.tensor(2.0), torch.tensor(math.nan))
    assert torch.equal(weight.detach(), torch.ones(3)) and weight.grad is None
    assert guard.counts() == (1, 1)
    state = optimizer.state.get(weight, {})  # AdamW never counted the step, its moments stay zero
    assert float(state.get("step", 0)) == 0 and not any(bool(state[k].any()) for k in state if k != "step")
    weight.grad = torch.ones(3)
    guard.step(optimizer, torch.tensor(math.inf), torch.tensor(1.0))  # a bad loss alone is enough
    assert guard.counts() == (2, 2)
    weight.grad = torch.ones(3)
    guard.step(optimizer, torch.tensor(2.0), torch.tensor(1.0))
    assert guard.counts() == (2, 0) and bool((weight < 1).all())
    assert float(optimizer.state[weight]["step"]) == 1
