"""The training loop end to end at toy size: it learns, it logs, it leaves a model dir behind.

Anchors: a fresh model predicts uniformly (loss = ln V), a repetitive corpus is learnable, one
fixed batch can be memorised, and gradient accumulation is the same sum as one big batch.
"""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import lmlab
from lmlab.cli import main
from lmlab.errors import ConfigError
from lmlab.train.config import TrainConfig
from lmlab.train.loop import train
from lmlab.train.optim import make_optimizer, param_groups
from lmlab.train.schedule import lr_at, slanted_triangular

STEPS = 60


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_rows(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "loss" in r]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_args):
    """One 60-step run shared by the tests that only read what it wrote."""
    out = tmp_path_factory.mktemp("run") / "gpt2-tiny"
    assert main(tiny_args(out, steps=STEPS, warmup=5, eval_every=30, save_every=30)) == 0
    return out


# --- learning -------------------------------------------------------------------------------------
def test_loss_at_init_is_log_vocab(run):
    _, tokenizer = lmlab.load(run)
    first = train_rows(run)[0]
    assert first["step"] == 1
    assert abs(first["loss"] - math.log(tokenizer.vocab_size)) < 0.15


def test_training_drives_the_loss_down(run):
    rows = train_rows(run)
    assert len(rows) == STEPS
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, [round(r["loss"], 3) for r in rows]
    val = [r["val_loss"] for r in read_metrics(run) if "val_loss" in r]
    assert len(val) == 2 and val[1] < val[0]


class OneBatch:
    """A sampler that returns the same (x, y) batch every step."""

    def __init__(self, vocab_size: int, batch_size: int = 4, seq_len: int = 32):
        g = torch.Generator().manual_seed(0)
        windows = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=g)  # (B, T+1)
        self.x, self.y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.step += 1
        return self.x, self.y

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


@pytest.mark.parametrize("device, compile", [
    ("cpu", False),
    pytest.param("cuda", False, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
    pytest.param("cuda", True, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
])
def test_one_batch_is_memorised(tmp_path, device, compile):
    """On CUDA the loop also runs bf16 autocast and training_attention (cuDNN kernels on Hopper)."""
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", vocab_size=20, d_model=128, n_heads=2).to(device)
    cfg = TrainConfig(steps=100, batch_size=4, seq_len=32, lr=3e-3, warmup=10, weight_decay=0.0,
                      log_every=10, save_every=0, progress=False, compile=compile)
    result = train(model, None, cfg, tmp_path / "run", OneBatch(20))
    assert result.loss < 0.1
    assert result.skipped == 0 and result.tokens == 100 * 4 * 32


# --- schedules ------------------------------------------------------------------------------------
def test_warmup_is_linear_up_to_the_peak():
    lrs = [lr_at(s, 1e-3, 100, warmup=10) for s in range(10)]
    assert lrs == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert lr_at(10, 1e-3, 100, warmup=10) == pytest.approx(1e-3)  # the first decay step is the peak


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_ends_at_min_lr_ratio(schedule):
    lrs = [lr_at(s, 1e-3, 50, warmup=5, schedule=schedule, min_lr_ratio=0.1) for s in range(50)]
    assert lrs[-1] == pytest.approx(1e-4)
    after_warmup = lrs[5:]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:], strict=False))
    assert min(lrs) >= 1e-4 - 1e-12


def test_cosine_and_linear_midpoints():
    # 5 warmup + 11 decay steps: decay step 5 of 10 is halfway
    cos = lr_at(10, 1.0, 16, warmup=5, schedule="cosine", min_lr_ratio=0.0)
    lin = lr_at(10, 1.0, 16, warmup=5, schedule="linear", min_lr_ratio=0.0)
    assert cos == pytest.approx(0.5) and lin == pytest.approx(0.5)
    assert lr_at(7, 1.0, 16, warmup=5, schedule="cosine", min_lr_ratio=0.0) > \
        lr_at(7, 1.0, 16, warmup=5, schedule="linear", min_lr_ratio=0.0)  # cosine decays slowly at first


def test_constant_schedule_after_warmup():
    assert [lr_at(s, 2e-3, 20, warmup=2, schedule="constant") for s in range(20)] == \
        pytest.approx([1e-3, 2e-3] + [2e-3] * 18)


def test_slanted_triangular_rises_then_falls():
    lrs = [slanted_triangular(s, 0.01, 100) for s in range(101)]
    assert lrs[0] == pytest.approx(0.01 / 32) and lrs[10] == pytest.approx(0.01)
    assert lrs[100] == pytest.approx(0.01 / 32)
    assert np.argmax(lrs) == 10


def test_logged_lr_follows_the_schedule(run):
    for r in train_rows(run):
        assert r["lr"] == lr_at(r["step"] - 1, 3e-3, STEPS, 5, "cosine", 0.1)


# --- optimizer ------------------------------------------------------------------------------------
def test_param_groups_decay_matrices_only_and_count_tied_weights_once():
    model = lmlab.build("gpt2", "tiny")
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}  # named_parameters lists a tied tensor once
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(grouped) == len(set(grouped)) == len(names)
    assert model.lm_head.weight is model.wte.weight and id(model.wte.weight) in grouped
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "ln_f.weight" in no_decay_names and "blocks.0.attn.c_attn.bias" in no_decay_names
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu")
    total = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_args):
    runs = {}
    for micro in (8, 2):
        out = tmp_path / f"micro{micro}"
        assert main(tiny_args(out, steps=4, batch_size=8, micro_batch_size=micro)) == 0
        runs[micro] = train_rows(out)
    tokens = [s * 8 * 32 for s in range(1, 5)]
    assert [r["tokens"] for r in runs[2]] == [r["tokens"] for r in runs[8]] == tokens
    for one, accumulated in zip(runs[8], runs[2], strict=True):
        assert accumulated["loss"] == pytest.approx(one["loss"], abs=1e-5)
    final = {m: load_file(str(tmp_path / f"micro{m}" / "model.safetensors")) for m in (8, 2)}
    for name, tensor in final[8].items():
        torch.testing.assert_close(final[2][name], tensor, atol=1e-5, rtol=1e-4)


def test_batch_that_does_not_split_into_micro_batches_fails_before_training(tmp_path, tiny_args, capsys):
    assert main(tiny_args(tmp_path / "out", batch_size=6, micro_batch_size=4)) == 2
    assert "not a multiple of --micro-batch-size 4" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


# --- what a run leaves behind ---------------------------------------------------------------------
def test_every_logged_line_has_step_loss_lr_tokens(run):
    rows = read_metrics(run)
    assert all("step" in r for r in rows)
    train = [r for r in rows if "val_loss" not in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for r in train:
        assert {"loss", "lr", "tokens"} <= set(r)
        assert r["tokens"] == r["step"] * 4 * 32 and r["skipped"] == 0
    assert [r["step"] for r in rows if "val_loss" in r] == [30, 60]


def test_loss_plot_is_a_png(run):
    path = run / "plots" / "loss.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_run_dir_is_a_model_dir(run):
    model, tokenizer = lmlab.load(run)
    assert tokenizer is not None and tokenizer.decode(tokenizer.encode("the cat")) == "the cat"
    assert json.loads((run / "config.json").read_text())["family"] == "gpt2"
    assert model.config.vocab_size == tokenizer.vocab_size
    final = load_file(str(run / "model.safetensors"))
    last = load_file(str(run / "checkpoints" / f"step-{STEPS}" / "model.safetensors"))
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-30", "step-60"]


# --- configuration and input errors ---------------------------------------------------------------
def test_run_yaml_sets_options_and_flags_win(tmp_path, corpus, capsys):
    out = tmp_path / "from-yaml"
    path = tmp_path / "run.yaml"
    path.write_text(f"model: gpt2\npreset: tiny\ndata: {corpus}\ntokenizer: chars\nout: {out}\n"
                    "steps: 50\nbatch-size: 4\nseq_len: 32\nwarmup: 1\nlog_every: 1\nsave_every: 0\n"
                    "eval_batches: 1\ndevice: cpu\nno_progress: true\nset:\n  d_model: 32\n  n_heads: 2\n")
    assert main(["pretrain", "--config", str(path), "--steps", "3"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    assert [r["step"] for r in train_rows(out)] == [1, 2, 3]
    model, _ = lmlab.load(out)
    assert model.config.d_model == 32 and model.config.n_heads == 2


def test_unknown_key_in_run_yaml_is_a_one_line_error(tmp_path, corpus, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(f"data: {corpus}\nout: {tmp_path / 'out'}\nstepz: 3\n")
    assert main(["pretrain", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stepz" in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_bad_train_config_value_is_a_config_error():
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        TrainConfig(keep_checkpoints=1)
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="exponential")
    with pytest.raises(ConfigError, match="weight_decay must be >= 0, got -1"):
        TrainConfig(weight_decay=-1)
    for name, value in (("beta1", -0.1), ("beta2", 1.0)):
        with pytest.raises(ConfigError, match=rf"{name} must be in \[0, 1\), got {value}"):
            TrainConfig(**{name: value})


@pytest.mark.parametrize("text, expected", [
    ("", "holds no text"),
    ("ab\ncd\n", "fewer than seq_len + 1 = 33"),
])
def test_empty_or_too_short_corpus_fails_before_step_0(tmp_path, tiny_args, capsys, text, expected):
    path = tmp_path / "small.txt"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(tiny_args(out, data=str(path))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and expected in err, err
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
