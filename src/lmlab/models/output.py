"""What lmlab models return: a small base and one output type per kind of model.

Every model returns a `ModelOutput` or a subclass of it. Fields a call did not ask for stay None.
Given `targets`, a language model scores them itself and returns the per-token negative
log-likelihood `nll` (B, T) in nats (0 where the target is -100); objectives reduce it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError
from lmlab.nn.lm_loss import output_nll


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


def decoder_output(x: torch.Tensor, states: list[torch.Tensor] | None, state, logits_to_keep: int,
                   targets: torch.Tensor | None, lm_head: torch.nn.Linear,
                   head_weight: torch.Tensor) -> CausalLMOutput:
    """The top of a transformer decoder, from its last layer x (B, T, D): logits of the last
    `logits_to_keep` positions (0 = all), or, given targets, their nll through `head_weight` (the
    output matrix as the loss wants it, e.g. a tied embedding); `states` = every layer's input when
    hidden states were asked for."""
    kept = x[:, -logits_to_keep:] if logits_to_keep else x
    out = CausalLMOutput(hidden=x, state=state, hidden_states=tuple(states) if states is not None else None)
    if targets is None:
        out.logits = lm_head(kept)  # (B, T or logits_to_keep, V)
    elif targets.shape != kept.shape[:2]:
        raise LmlabError(f"targets have shape {tuple(targets.shape)}; expected {tuple(kept.shape[:2])}, "
                         f"one next token per scored position")
    else:
        out.nll = output_nll(kept, head_weight, targets)  # (B, T)
    return out


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


@dataclass
class Seq2SeqOutput(ModelOutput):
    """kind `seq2seq` (CoVe): an encoder over the source and a decoder over the target.

    `hidden` / `hidden_states` are the encoder's (the features: (B, S, D) each, the top one last);
    `logits` (B, T, V) or `nll` (B, T) are the decoder's, given decoder input.
    """

    nll: torch.Tensor | None = None  # (B, T) of the targets, when forward got them
    state: object | None = None  # the decoding state after this call (the encoded source, decoder LSTM)
    mask: torch.Tensor | None = None  # (B, S) bool: real source words
    decoder_hidden: torch.Tensor | None = None  # (B, T, D) the decoder's output states
    attention: torch.Tensor | None = None  # (B, T, S) attention weights over the source


@dataclass
class TaggerOutput(ModelOutput):
    """kind `tagger` (CVT): label scores per token from the primary prediction module (`logits`,
    (B, T, labels)) and, when asked for, from the auxiliary modules on restricted views (`views`,
    name -> (B, T, labels)). Given `targets` (B, T) label ids (-100 = not scored), `nll` is the
    primary module's per-token cross-entropy and `view_nll` each view's (0 where not scored).
    `tasks` holds every tag set's scores (name -> logits, "primary" included) when asked for."""

    views: dict[str, torch.Tensor] | None = None
    nll: torch.Tensor | None = None  # (B, T)
    view_nll: dict[str, torch.Tensor] | None = None
    tasks: list[dict[str, torch.Tensor]] | None = None
    mask: torch.Tensor | None = None  # (B, T) bool: the positions that are words (scored)


# kind -> the output type a model of that kind returns (tests check every family against it).
OUTPUTS = {"causal_lm": CausalLMOutput, "masked_lm": MaskedLMOutput, "bilm": BiLMOutput,
           "seq2seq": Seq2SeqOutput, "tagger": TaggerOutput}
