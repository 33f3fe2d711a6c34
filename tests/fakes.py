"""Small stand-ins for lmlab models in tests: what a causal LM returns under the forward contract.

(tests/ is on sys.path: pytest puts the folder of the top conftest.py there.)
"""

from dataclasses import dataclass

import torch
from torch import nn


def lm_output(logits, logits_to_keep: int = 0, targets=None, state=None):
    """What an lmlab causal LM returns for `logits` (B, T, V) under the forward contract: the kept
    positions' logits, or with `targets` their per-token NLL (B, T) instead (-100: 0)."""
    from lmlab.models.output import CausalLMOutput

    kept = logits[:, -logits_to_keep:] if logits_to_keep else logits
    if targets is None:
        return CausalLMOutput(logits=kept, state=state)
    nll = torch.nn.functional.cross_entropy(kept.flatten(0, 1).double(), targets.flatten(), reduction="none")
    return CausalLMOutput(nll=nll.view(targets.shape), state=state)


@dataclass(frozen=True)
class LSTMConfig:
    vocab_size: int = 32
    d_model: int = 24
    max_seq_len: int = 2 ** 31 - 1


class LSTMLM(nn.Module):
    """A recurrent LM that is no family of lmlab (declare it with the register_family fixture, state "rnn"):
    state [h, c], each (B, 2, D), batch first."""

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = c = config
        self.embed, self.head = nn.Embedding(c.vocab_size, c.d_model), nn.Linear(c.d_model, c.vocab_size)
        self.lstm = nn.LSTM(c.d_model, c.d_model, 2, batch_first=True)

    def init_state(self, batch_size, max_len=None, device=None):
        zeros = torch.zeros(batch_size, 2, self.config.d_model, device=device, dtype=self.head.weight.dtype)
        return [zeros, zeros.clone()]

    def forward(self, input_ids, attention_mask=None, state=None, logits_to_keep=0):
        hc = None if state is None else tuple(s.transpose(0, 1).contiguous() for s in state)  # (2, B, D)
        h, (hn, cn) = self.lstm(self.embed(input_ids), hc)  # (B, T, D)
        kept = h[:, -logits_to_keep:] if logits_to_keep else h
        from lmlab.models.output import CausalLMOutput

        return CausalLMOutput(logits=self.head(kept), state=[hn.transpose(0, 1), cn.transpose(0, 1)])
