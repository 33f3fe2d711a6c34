"""The decoding-state protocol fits a recurrent model: a small LSTM LM defined here (not a family of
lmlab) is generated from, evaluated with the memory protocol and trained with carried state by
lmlab's own code, unchanged. It only declares itself (kind causal_lm, state rnn) and keeps the
forward contract."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import lmlab
from lmlab.data.sampler import ContiguousStreams
from lmlab.errors import LmlabError
from lmlab.eval.memory import memory_perplexity, memory_token_losses
from lmlab.models.output import CausalLMOutput
from lmlab.nn.layers import parameter_groups
from lmlab.objectives.clm_state import CarriedStateCLM
from lmlab.train.config import TrainConfig
from lmlab.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")


@dataclass(frozen=True)
class LSTMConfig:
    vocab_size: int = 32
    d_model: int = 24
    n_layers: int = 2
    max_seq_len: int = 2 ** 31 - 1  # a recurrent model has no context limit


class LSTMLM(nn.Module):
    """Embedding, a stacked nn.LSTM, a linear output layer. State: [h, c], each (B, layers, D)."""

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.lstm = nn.LSTM(c.d_model, c.d_model, c.n_layers, batch_first=True)
        self.head = nn.Linear(c.d_model, c.vocab_size)

    def init_state(self, batch_size, max_len=None, device=None):
        zeros = torch.zeros(batch_size, self.config.n_layers, self.config.d_model, device=device)
        return [zeros, zeros.clone()]

    def layer_groups(self):
        return parameter_groups(self.embed, self.lstm, self.head)

    def forward(self, input_ids, attention_mask=None, state=None, logits_to_keep=0, targets=None):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise LmlabError("this LSTM has no padding support")
        hc = None if state is None else tuple(s.transpose(0, 1).contiguous() for s in state)  # (L, B, D)
        h, (hn, cn) = self.lstm(self.embed(input_ids), hc)  # (B, T, D)
        kept = h[:, -logits_to_keep:] if logits_to_keep else h
        out = CausalLMOutput(hidden=h, state=[hn.transpose(0, 1), cn.transpose(0, 1)])
        if targets is None:
            out.logits = self.head(kept)
        else:
            nll = F.cross_entropy(self.head(kept).flatten(0, 1), targets.flatten(), reduction="none")
            out.nll = nll.view(targets.shape)  # cross_entropy gives 0 at -100
        return out


@pytest.fixture
def lstm(register_family):
    register_family("test-lstm", LSTMLM, config=LSTMConfig, state="rnn")
    torch.manual_seed(0)
    model = LSTMLM(LSTMConfig())
    model.family = "test-lstm"
    return model


def test_generation_carries_the_state(lstm):
    prompt = [3, 1, 4, 1, 5]
    got = lmlab.generate(lstm, [prompt], max_new_tokens=8)[0].tolist()
    ids = list(prompt)  # greedy by recomputing the whole sequence each step
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(lstm(torch.tensor([ids])).logits[0, -1].argmax()))
    assert got == ids
    sampled = lmlab.generate(lstm, [prompt, prompt], max_new_tokens=6, do_sample=True, seed=3)
    assert sampled.shape == (2, 11)


def test_memory_protocol_scores_every_token_with_its_whole_history(lstm):
    ids = torch.randint(0, 32, (101,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = F.cross_entropy(lstm(ids[None, :-1]).logits[0], ids[1:], reduction="none")
        two = [F.cross_entropy(lstm(part[None, :-1]).logits[0], part[1:], reduction="none")
               for part in (ids[:51], ids[50:])]
    torch.testing.assert_close(memory_token_losses(lstm, ids, segment=7), whole, rtol=1e-5, atol=1e-5)
    # Two streams side by side: each continues its own state, the first starts the second half over.
    torch.testing.assert_close(memory_token_losses(lstm, ids, streams=2, segment=9), torch.cat(two),
                               rtol=1e-5, atol=1e-5)
    result = memory_perplexity(lstm, ids)
    assert result["protocol"] == "memory" and result["tgt_len"] == 128 and "mem_len" not in result


def test_training_carries_the_state_and_resumes_exactly(lstm, tmp_path):
    tokens = np.random.default_rng(0).integers(0, 32, size=4 * 60 + 1)
    cfg = TrainConfig(steps=12, batch_size=4, seq_len=8, lr=3e-3, warmup=0, schedule="constant", log_every=1,
                      eval_every=0, save_every=6, device="cpu", progress=False)
    streams = ContiguousStreams(tokens, 8, 4)
    result = train(lstm, None, cfg, tmp_path / "run", streams, objective=CarriedStateCLM())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] and result.steps == 12
    state = load_file(str(tmp_path / "run" / "checkpoints" / "step-12" / "carried.safetensors"))
    assert sorted(state) == ["state.0", "state.1"] and state["state.0"].shape == (4, 2, 24)

    # A run stopped at step 6 and resumed logs the same losses as the uninterrupted one (a constant
    # rate: the 6-step run would otherwise decay its own schedule).
    torch.manual_seed(0)
    fresh = LSTMLM(LSTMConfig())
    fresh.family = "test-lstm"
    part = dataclasses.replace(cfg, steps=6)
    for config, resume in ((part, False), (cfg, True)):
        train(fresh, None, config, tmp_path / "resumed", ContiguousStreams(tokens, 8, 4),
              objective=CarriedStateCLM(), resume=resume)
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == losses
