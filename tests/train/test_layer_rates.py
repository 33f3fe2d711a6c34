"""Per-group learning rates: `lr_scale` on every parameter group, discriminative rates over
`model.layer_groups()` and gradual unfreezing (ULMFiT §3.2), as options of the one training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmlab
from lmlab.data.sampler import RandomWindowSampler
from lmlab.errors import ConfigError
from lmlab.train.config import TrainConfig
from lmlab.train.loop import train
from lmlab.train.optim import param_groups, trainable_groups


def tiny():
    torch.manual_seed(0)
    return lmlab.build("gpt2", "tiny", n_layers=3, dropout=0.0)


def test_without_discriminative_rates_two_groups_share_one_scale():
    groups = param_groups(tiny(), 0.1)
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def test_discriminative_rates_fall_by_the_factor_per_group_down_from_the_top():
    model = tiny()
    layers = model.layer_groups()  # embeddings, 3 blocks, final LayerNorm
    groups = param_groups(model, 0.1, discriminative=2.6)
    assert len(groups) == 2 * len(layers) == 10
    scales = [g["lr_scale"] for g in groups[::2]]
    assert scales == pytest.approx([2.6 ** -4, 2.6 ** -3, 2.6 ** -2, 2.6 ** -1, 1.0])
    for layer, decay, no_decay in zip(layers, groups[::2], groups[1::2], strict=True):
        assert {id(p) for p in layer} == {id(p) for p in decay["params"] + no_decay["params"]}


def test_unfreezing_lists_the_groups_that_train_at_each_step():
    # 4 groups, one more every 3 steps, top first: steps 0-2 train 1 group, 3-5 two, ...
    assert [trainable_groups(s, 4, 3) for s in range(14)] == [1] * 3 + [2] * 3 + [3] * 3 + [4] * 5
    assert trainable_groups(0, 4, 0) == 4  # off


def run(tmp_path, **options):
    model = tiny()
    before = [[p.detach().clone() for p in g] for g in model.layer_groups()]
    tokens = np.random.default_rng(0).integers(0, 256, size=2000)
    cfg = TrainConfig(steps=4, batch_size=4, seq_len=16, lr=1e-2, warmup=0, schedule="constant",
                      log_every=1, eval_every=0, save_every=0, device="cpu", progress=False, **options)
    train(model, None, cfg, tmp_path, RandomWindowSampler(tokens, 16, 4, seed=0))
    changed = [any(not torch.equal(p, q) for p, q in zip(g, old, strict=True))
               for g, old in zip(model.layer_groups(), before, strict=True)]
    return model, changed


def test_gradual_unfreezing_moves_only_the_unfrozen_groups(tmp_path):
    _, changed = run(tmp_path / "a", unfreeze_every=2)  # 4 steps: the top two of five groups train
    assert changed == [False, False, False, True, True]
    _, changed = run(tmp_path / "b")
    assert all(changed)


def test_the_loop_sets_each_group_lr_times_its_scale(tmp_path, monkeypatch):
    seen = []
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append([g["lr"] for g in self.param_groups])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    run(tmp_path, discriminative=2.0)
    assert seen[0] == pytest.approx([1e-2 * 2.0 ** -k for k in (4, 4, 3, 3, 2, 2, 1, 1, 0, 0)])


def test_bad_values_are_refused():
    with pytest.raises(ConfigError, match="discriminative"):
        TrainConfig(discriminative=0)
    with pytest.raises(ConfigError, match="unfreeze_every"):
        TrainConfig(unfreeze_every=-1)
