"""The one output type every lmlab model returns (fields a family does not produce stay None)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    logits: torch.Tensor | None = None  # LM / MLM / task logits, (B, T, V) for language models
    hidden: torch.Tensor | None = None  # last layer, (B, T, D)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # every layer, when asked for
    cache: object | None = None  # decoders: the KV cache, advanced past this call's tokens
    mems: list[torch.Tensor] | None = None  # Transformer-XL memory
    pooled: torch.Tensor | None = None  # BERT pooler output, (B, D)
    nsp_logits: torch.Tensor | None = None  # BERT pretraining
    start_logits: torch.Tensor | None = None  # span QA
    end_logits: torch.Tensor | None = None
    lm_logits: torch.Tensor | None = None  # task models: the backbone's LM logits (GPT's auxiliary loss)
    nll: torch.Tensor | None = None  # (B, T) per-token NLL in nats, when forward got targets
    loss: torch.Tensor | None = None  # scalar mean NLL over the scored targets (GPT/GPT-2 with targets)
