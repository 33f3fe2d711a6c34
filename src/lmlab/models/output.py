"""What lmlab models return: a small base and one output type per kind of model.

Every model returns a `ModelOutput` or a subclass of it. Fields a call did not ask for stay None.
Given `targets`, a language model scores them itself and returns the per-token negative
log-likelihood `nll` (B, T) in nats (0 where the target is -100); objectives reduce it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    logits: torch.Tensor | None = None  # (B, T, V) for language models; task heads: their scores
    hidden: torch.Tensor | None = None  # the last layer, (B, T, D)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # every layer, when asked for


@dataclass
class CausalLMOutput(ModelOutput):
    """kind `causal_lm`: next-token logits (or `nll` of given targets) and the decoding state."""

    nll: torch.Tensor | None = None  # (B, T) when forward got targets (then logits stay None)
    state: object | None = None  # KV cache, memory or recurrent state after this call
    hidden_dropped: torch.Tensor | None = None  # AWD-LSTM: `hidden` after the output dropout (AR reads it)


@dataclass
class MaskedLMOutput(ModelOutput):
    """kind `masked_lm` (BERT): MLM logits, the pooled [CLS] state and the NSP logits."""

    pooled: torch.Tensor | None = None  # (B, D)
    nsp_logits: torch.Tensor | None = None  # (B, 2)
    nll: torch.Tensor | None = None  # (B, T) MLM loss at the labelled positions, 0 elsewhere


@dataclass
class BiLMOutput(ModelOutput):
    """kind `bilm` (ELMo): a forward and a backward language model over the same tokens.

    `logits` / `nll` belong to the forward LM (token t+1 given tokens <= t), `logits_backward` /
    `nll_backward` to the backward LM (token t-1 given tokens >= t). `hidden_states` are the
    features: layer 0 the token representation duplicated, [x; x], layer k the two directions'
    layer k side by side, [fwd_k; bwd_k], each (B, T, 2·D); `hidden` is the last of them.
    """

    logits_backward: torch.Tensor | None = None  # (B, T, V)
    nll: torch.Tensor | None = None  # (B, T) forward LM, when forward got targets
    nll_backward: torch.Tensor | None = None  # (B, T) backward LM, when forward got backward_targets
    mask: torch.Tensor | None = None  # (B, T) bool: real tokens (False at padding)
    state: object | None = None  # [forward LM state, backward LM state] after this call


# kind -> the output type a model of that kind returns (tests check every family against it).
OUTPUTS = {"causal_lm": CausalLMOutput, "masked_lm": MaskedLMOutput, "bilm": BiLMOutput}
