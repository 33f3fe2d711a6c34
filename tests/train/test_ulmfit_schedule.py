"""ULMFiT's fine-tuning schedule as options of the one training loop (Howard & Ruder 2018, §3.2-3.3):
slanted triangular rates (eq. 3) restarted at every unfreezing stage, discriminative rates (÷2.6 per
group, top highest) and gradual unfreezing (top group first, one more per epoch); AWD-LSTM's
variable-length BPTT streams and AR/TAR; resuming in the middle of an unfreezing stage."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import lmlab
from lmlab.data.sampler import VariableBPTTStreams
from lmlab.models.output import CausalLMOutput
from lmlab.objectives.awd import AWDObjective, ar_tar
from lmlab.objectives.clm_state import CarriedStateCLM
from lmlab.train.config import TrainConfig
from lmlab.train.loop import train
from lmlab.train.schedule import lr_at, slanted_triangular


def paper_stlr(t: int, T: int, lr: float, cut_frac: float = 0.1, ratio: float = 32) -> float:
    """Eq. 3 of the paper, literally."""
    cut = math.floor(T * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return lr * (1 + p * (ratio - 1)) / ratio


@pytest.mark.parametrize("T", [10, 100, 250, 1000])
def test_stlr_equals_the_papers_formula_at_every_step(T):
    got = [lr_at(t, 0.01, T, warmup=100, schedule="stlr") for t in range(T)]
    assert got == pytest.approx([paper_stlr(t, T, 0.01) for t in range(T)], rel=1e-12)
    assert got[0] == pytest.approx(0.01 / 32) and max(got) == pytest.approx(0.01)
    assert got.index(max(got)) == math.floor(T * 0.1)


def test_where_the_papers_cut_is_not_whole_the_fall_still_ends_at_lr_over_ratio():
    T = 25  # cut = 2, the paper's fall would span 18 of the 23 steps after it and go negative
    assert paper_stlr(24, T, 1.0) < 0
    ours = [slanted_triangular(t, 1.0, T) for t in range(T + 1)]
    assert min(ours) == pytest.approx(1 / 32) and ours[-1] == pytest.approx(1 / 32)
    assert ours[:3] == pytest.approx([paper_stlr(t, T, 1.0) for t in range(3)])


def test_stlr_restarts_at_every_unfreezing_stage():
    # 4 groups, a stage every 10 steps: three 10-step triangles, then one over the last 20 steps.
    got = [lr_at(t, 0.01, 50, schedule="stlr", unfreeze_every=10, n_groups=4) for t in range(50)]
    want = [paper_stlr(t - s, n, 0.01) for s, n in ((0, 10), (10, 10), (20, 10), (30, 20))
            for t in range(s, s + n)]
    assert got == pytest.approx(want, rel=1e-12)


def tiny_lm():
    torch.manual_seed(0)
    return lmlab.build("ulmfit", "tiny", dropout=0.0)


def run(model, tmp_path, steps, resume=False, **options):
    tokens = np.random.default_rng(0).integers(0, 256, size=4 * 80)
    cfg = TrainConfig(steps=steps, batch_size=4, seq_len=8, lr=1e-2, schedule="stlr", warmup=0,
                      discriminative=2.6, unfreeze_every=3, log_every=1, eval_every=0, save_every=3,
                      device="cpu", progress=False, **options)
    return train(model, None, cfg, tmp_path, VariableBPTTStreams(tokens, 8, 4, seed=1),
                 objective=AWDObjective(), resume=resume)


def test_each_epoch_trains_one_more_group_from_the_top_at_its_rates(tmp_path, monkeypatch):
    seen = []  # per step: (which layer groups train, each parameter group's lr)
    original = torch.optim.AdamW.step
    model = tiny_lm()
    groups = model.layer_groups()  # output layer (embedding + decoder bias), 3 LSTM layers

    def spy(self, *args, **kwargs):
        seen.append(([all(p.requires_grad for p in g) for g in groups], [g["lr"] for g in self.param_groups]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    run(model, tmp_path, steps=18)
    trained = [seen[3 * epoch][0] for epoch in range(6)]  # an "epoch" is unfreeze_every = 3 steps
    assert trained == [[False, False, False, True],
                       [False, False, True, True],
                       [False, True, True, True],
                       [True, True, True, True],
                       [True, True, True, True],
                       [True, True, True, True]]
    for step, (_, lrs) in enumerate(seen):
        base = lr_at(step, 1e-2, 18, schedule="stlr", unfreeze_every=3, n_groups=4)
        # (decay, no-decay) pair per layer group, bottom to top: lr / 2.6^k, k = 0 at the top
        assert lrs == pytest.approx([base * 2.6 ** -k for k in (3, 3, 2, 2, 1, 1, 0, 0)])


def test_resuming_in_the_middle_of_an_unfreezing_stage_is_exact(tmp_path):
    def losses(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    whole = tiny_lm()
    run(whole, tmp_path / "whole", steps=18)
    part = tiny_lm()
    run(part, tmp_path / "part", steps=7)  # stops inside the third stage (steps 6-8), state carried
    run(part, tmp_path / "part", steps=18, resume=True)
    assert losses(tmp_path / "part") == losses(tmp_path / "whole")
    for a, b in zip(part.parameters(), whole.parameters(), strict=True):
        assert torch.equal(a, b)


def test_variable_bptt_streams_continue_each_other_and_resume():
    tokens = np.arange(3 * 400)
    s = VariableBPTTStreams(tokens, 20, 3, seed=5)
    lengths = s.lengths(0)
    assert lengths.sum() == s.stream_len - 1 and len(set(lengths.tolist())) > 3
    assert abs(float(np.median(lengths)) - 20) <= 3
    batches, resets = [], []
    for _ in range(len(lengths) + 2):
        batches.append(next(s))
        resets.append(s.reset_state)
    assert [i for i, r in enumerate(resets) if r] == [0, len(lengths)]  # the state resets at each epoch
    for (x0, y0), (x1, _) in zip(batches, batches[1:len(lengths)], strict=False):
        assert torch.equal(x1[:, 0], y0[:, -1])  # row b of batch k+1 starts where batch k ended
        assert torch.equal(y0, x0 + 1)
    assert torch.equal(batches[0][0][:, 0], torch.tensor([0, 400, 800]))
    fresh = VariableBPTTStreams(tokens, 20, 3, seed=5)
    fresh.load_state_dict(s.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(next(fresh), s.batch(s.step), strict=True))


def test_variable_bptt_lengths_follow_merity_s_distribution():
    """seq_len w.p. 0.95 else seq_len/2, then N(that, 5) truncated to an integer, at least 5: checked on
    ~20k draws (the tolerances are > 4 standard errors)."""
    s = VariableBPTTStreams(np.arange(1_400_002), 70, 1, seed=1)
    lengths = s.lengths(0)[:-1].astype(float)  # the last one takes what is left
    assert lengths.min() >= 5 and len(lengths) > 19_000
    short, long = lengths[lengths < 52.5], lengths[lengths >= 52.5]  # the two modes, 7 sd apart
    assert abs(len(short) / len(lengths) - 0.05) < 0.007
    assert abs(long.mean() - 69.5) < 0.15 and abs(short.mean() - 34.5) < 0.6  # int() truncates: -0.5
    assert abs(long.std() - 5) < 0.15 and abs(short.std() - 5) < 0.6
    assert VariableBPTTStreams(np.arange(400), 6, 1).lengths(0)[:-1].min() == 5  # 6/2 = 3 -> the floor


def test_ar_and_tar_are_the_means_of_the_paper():
    h = torch.tensor([[[1.0, 2.0], [3.0, 5.0], [0.0, 1.0]]])
    dropped = torch.tensor([[[0.0, 4.0], [6.0, 0.0], [0.0, 2.0]]])
    out = CausalLMOutput(hidden=h, hidden_dropped=dropped)
    ar = (0 + 16 + 36 + 0 + 0 + 4) / 6
    tar = ((2 ** 2 + 3 ** 2) + (3 ** 2 + 4 ** 2)) / 4
    assert float(ar_tar(out, 2.0, 1.0)) == pytest.approx(2 * ar + tar)
    model = tiny_lm().train()
    x = torch.randint(0, 256, (2, 6))
    torch.manual_seed(3)
    plain = CarriedStateCLM()(model, (x, x), slice(0, 2))
    torch.manual_seed(3)
    awd = AWDObjective(0.0, 0.0)(model, (x, x), slice(0, 2))
    assert float(awd.detach()) == pytest.approx(float(plain.detach()))


def test_pretrain_command_trains_ulmfit_with_its_recipe(tmp_path, tiny_args):
    from lmlab.cli import main

    assert main(tiny_args(tmp_path / "run", model="ulmfit", tokenizer="words", seq_len=12, steps=6,
                          ar_alpha=1.0, tar_beta=0.5, save_every=3)) == 0
    settings = json.loads((tmp_path / "run" / "pretrain.json").read_text())
    assert settings["ar_alpha"] == 1.0 and settings["seq_len"] == 12
    model, tok = lmlab.load(tmp_path / "run")
    assert lmlab.models.registry.family_of(model) == "ulmfit" and tok.kind == "words"
    assert dataclasses.asdict(model.config)["n_layers"] == 3
