"""ELMo pretraining (Peters et al. 2018 §3.1; bilm-tf's training): forward streams and reversed-corpus
streams, both LSTM states carried from step to step, the mean of the two losses; `lmlab pretrain
--model elmo` trains with falling loss, and a stopped and resumed run logs bitwise the same losses
(the LSTM states are in the checkpoint)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.cli import main
from lmlab.data.sampler import BidirectionalStreams
from lmlab.objectives.bilm import BiLMObjective
from lmlab.train.config import TrainConfig
from lmlab.train.loop import train
from lmlab.train.pretrain import pretrain

V, B, T = 40, 4, 6
SENTENCES = ["the cat sat on the mat", "a dog ran to the big red house", "my small blue car is fast",
             "we sail home today", "it rained all night long"]


def rows(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]


@pytest.fixture(scope="module")
def patterned(tmp_path_factory):
    """Sentences drawn from a handful: structure a tiny biLM learns within a few dozen steps."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("elmo-data") / "patterned.txt"
    path.write_text("".join(SENTENCES[i] + "\n" for i in rng.integers(0, len(SENTENCES), 400)))
    return path


def tiny_elmo(**fields):
    torch.manual_seed(0)
    model = lmlab.build("elmo", "tiny", vocab_size=V, **fields)
    with torch.no_grad():  # wider LSTM weights, so that the carried states change the losses visibly
        for p in [*model.forward_lm.parameters(), *model.backward_lm.parameters()]:
            p.mul_(4)
    return model


@torch.no_grad()
def manual_losses(model, streams, steps: int, micro: int) -> list[float]:
    """The loss the loop should log at each step, by hand: micro-batch i of every step continues the
    forward and backward states rows i*micro:(i+1)*micro left at the step before; none at an epoch start."""
    model.eval()
    states: dict[int, object] = {}
    out = []
    for k in range(steps):
        x, y, xb, yb = streams.batch(k)
        if k % streams.steps_per_epoch == 0:
            states = {}
        total = 0.0
        for i in range(0, len(x), micro):
            r = slice(i, i + micro)
            o = model(x[r], state=states.get(i), targets=y[r], backward_ids=xb[r], backward_targets=yb[r])
            states[i] = o.state
            total += 0.5 * (float(o.nll.mean()) + float(o.nll_backward.mean())) / (len(x) // micro)
        out.append(total)
    return out


def test_logged_losses_are_the_hand_computed_bilm_losses_with_carried_states(tmp_path, micro=2):
    """Two micro-batches per step: each keeps the states of its own rows."""
    tokens = np.random.default_rng(0).integers(0, V, size=B * (3 * T + 1), dtype=np.int64)
    streams = BidirectionalStreams(tokens, T, B)
    assert streams.steps_per_epoch == 3  # 7 steps: the streams start over at steps 3 and 6
    model = tiny_elmo(dropout=0.0)
    cfg = TrainConfig(steps=7, batch_size=B, micro_batch_size=micro, seq_len=T, lr=1e-30, warmup=0,
                      schedule="constant", log_every=1, eval_every=0, save_every=0, device="cpu",
                      progress=False)
    objective = BiLMObjective()
    train(model, None, cfg, tmp_path / "run", streams, objective=objective)
    logged = [r["loss"] for r in rows(tmp_path / "run")]
    want = manual_losses(model, BidirectionalStreams(tokens, T, B), 7, micro)
    assert logged == pytest.approx(want, abs=1e-5)
    with torch.no_grad():
        fresh = [0.5 * sum(float(n.mean()) for n in (o.nll, o.nll_backward)) for o in
                 (model(x, targets=y, backward_ids=xb, backward_targets=yb)
                  for x, y, xb, yb in (streams.batch(k) for k in range(7)))]
    assert abs(want[1] - fresh[1]) > 1e-3  # step 1 continues step 0's states
    assert want[3] == pytest.approx(fresh[3], abs=1e-6)  # reset at the epoch start
    # Both directions' states of every layer, rows first, go into the checkpoint.
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-7" / "carried.safetensors"))
    assert sorted(saved) == [f"state.{d}.{k}.{i}" for d in range(2) for k in range(2) for i in range(2)]
    assert saved["state.1.0.0"].shape == (B, model.config.d_model)
    assert saved["state.1.0.1"].shape == (B, model.config.d_lstm)


@pytest.mark.slow  # ~5 s: 60 steps
def test_pretrain_trains_with_falling_loss_and_spells_the_vocabulary(tmp_path, tiny_args, patterned):
    out = tmp_path / "run"
    assert main(tiny_args(out, model="elmo", data=str(patterned), tokenizer="word_chars", seq_len=10,
                          steps=60, lr=1e-2, warmup=4, eval_every=30, batch_size=8)) == 0
    losses = [r["loss"] for r in rows(out) if "loss" in r]
    val = [r["val_loss"] for r in rows(out) if "val_loss" in r]
    # From ~ln V (3.4) to well below the 2.2 nats of guessing among the sentences' words.
    assert losses[0] > 3.0 and losses[-1] < 2.0 and val[-1] < min(val[0], 2.0), (losses, val)
    model, tok = lmlab.load(out)
    assert tok.kind == "word_chars" and model.config.vocab_size == tok.vocab_size
    assert torch.equal(model.word_chars, torch.from_numpy(tok.char_table()))  # set before step 0
    feats = lmlab.embed(model, tok, ["the cat sat"])
    assert feats[0].shape == (3, 3, 2 * model.config.d_model)


def test_stopped_after_a_checkpoint_and_resumed_gives_bitwise_the_same_losses(tmp_path, tiny_args, patterned):
    flags = dict(model="elmo", data=str(patterned), tokenizer="word_chars", seq_len=8, steps=12, save_every=4,
                 eval_every=4, schedule="constant", micro_batch_size=2, set=["dropout=0.1"])
    reference = tmp_path / "reference"
    assert main(tiny_args(reference, **flags)) == 0
    run = tmp_path / "run"
    assert main(tiny_args(run, **{**flags, "steps": 4})) == 0  # the first run stops after step 4
    assert main(tiny_args(run, resume=True, **flags)) == 0  # and the second resumes from step-4
    assert rows(run) == rows(reference)  # JSON floats: bitwise
    for name in ("model.safetensors", "checkpoints/step-12/carried.safetensors",
                 "checkpoints/step-12/optimizer.safetensors"):
        want, got = load_file(str(reference / name)), load_file(str(run / name))
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name
    carried = load_file(str(run / "checkpoints" / "step-4" / "carried.safetensors"))
    assert len(carried) == 8 and carried["state.0.0.0"].shape == (4, 16)  # 2 directions x 2 layers x (h, c)


def test_sampled_softmax_option_trains(tmp_path, patterned):
    result = pretrain("elmo", "tiny", str(patterned), str(tmp_path / "s"), tokenizer="word_chars",
                      recipe_options={"sampled_softmax": 8}, steps=3, batch_size=4, seq_len=6, lr=3e-3,
                      warmup=0, log_every=1, eval_every=0, eval_batches=1, save_every=0, device="cpu",
                      progress=False)
    assert np.isfinite(result.loss) and np.isfinite(result.val_loss)
    settings = json.loads((tmp_path / "s" / "pretrain.json").read_text())
    assert settings["sampled_softmax"] == 8
