"""Pretraining the character transformer with its auxiliary losses (lmlab.objectives.char_aux) through
`lmlab pretrain`: the extra classifiers train with the model, live in the training checkpoints only,
and a run resumed from a checkpoint mid-schedule logs bitwise the same losses as one never stopped."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.cli import main
from lmlab.train.recipes import CharAuxOptions

# tiny: 4 layers, so over 12 steps the intermediate losses stop after steps 1.5, 3 and 4.5 (l / 8).
FLAGS = dict(model="char-transformer", steps=12, save_every=4, keep_checkpoints=5, eval_every=4, seq_len=24,
             set=["dropout=0.1"])


def logged(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_args):
    out = tmp_path_factory.mktemp("char") / "reference"
    assert main(tiny_args(out, **FLAGS)) == 0
    return out


def test_heads_train_in_checkpoints_only(reference):
    model, _ = lmlab.load(reference)
    saved = load_file(str(reference / "model.safetensors"))
    assert set(saved) == set(model.state_dict())  # the final model dir: the plain network
    step = reference / "checkpoints" / "step-4"
    heads = load_file(str(step / "objective.safetensors"))
    assert sorted(heads) == sorted(f"{kind}.{name}" for kind in ("inter", "next2")
                                   for name in ("bias", "norm_bias", "norm_weight", "weight"))
    assert heads["inter.weight"].shape == (3, model.config.vocab_size, model.config.d_model)
    assert heads["next2.weight"].shape == (4, model.config.vocab_size, model.config.d_model)
    later = load_file(str(reference / "checkpoints" / "step-12" / "objective.safetensors"))
    # Trained: the top layer's next2 classifier moves all along, layer 1's stops after step 2.
    assert not torch.equal(heads["next2.weight"][3], later["next2.weight"][3])
    moments = load_file(str(step / "optimizer.safetensors"))
    n_model = len(list(model.parameters()))
    assert f"state.{n_model + len(heads) - 1}.exp_avg" in moments  # the heads come after the model
    assert set(load_file(str(step / "model.safetensors"))) == set(saved)


def test_resumed_mid_schedule_is_bitwise_identical(reference, tmp_path, capsys):
    run = tmp_path / "resumed"
    shutil.copytree(reference, run)
    for name in ("checkpoints/step-8", "checkpoints/step-12", "model.safetensors", "MANIFEST.json"):
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    capsys.readouterr()
    assert main(["pretrain", "--no-progress", "--out", str(run), "--resume", "--device", "cpu"]) == 0
    assert "resumed from step 4" in capsys.readouterr().out  # layer 3's loss still counts at step 4
    assert logged(run) == logged(reference)
    for name in ("model.safetensors", "checkpoints/step-12/objective.safetensors",
                 "checkpoints/step-12/optimizer.safetensors"):
        want, got = load_file(str(reference / name)), load_file(str(run / name))
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name


def test_resume_with_other_switches_is_one_line(reference, tmp_path, capsys):
    run = tmp_path / "other"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "checkpoints" / "step-12")
    capsys.readouterr()
    rc = main(["pretrain", "--no-progress", "--out", str(run), "--resume", "--device", "cpu",
               "--no-aux-intermediate"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "does not fit" in err, err


def test_switches_are_flags_and_config_keys(tmp_path, tiny_args, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("no_aux_targets: true\naux_target_weight: 0.25\n")
    out = tmp_path / "run"
    assert main([*tiny_args(out, model="char-transformer", steps=2, seq_len=16), "--no-aux-positions",
                 "--config", str(config)]) == 0
    settings = json.loads((out / "pretrain.json").read_text())
    assert (settings["aux_positions"], settings["aux_targets"], settings["aux_target_weight"]) == \
        (False, False, 0.25)
    assert "aux_intermediate" not in settings  # not given: the default (on)
    assert set(load_file(str(out / "checkpoints" / "step-2" / "objective.safetensors"))) == \
        {"inter.bias", "inter.norm_bias", "inter.norm_weight", "inter.weight"}
    capsys.readouterr()
    assert main([*tiny_args(tmp_path / "gpt2"), "--no-aux-targets"]) == 2
    assert "--aux-targets is not an option of gpt2 pretraining" in capsys.readouterr().err
    with pytest.raises(lmlab.errors.ConfigError, match="aux-target-weight"):
        CharAuxOptions(aux_target_weight=-1)
