"""Causal language modelling: predict token t+1 from tokens <= t (GPT §3.1, eq. 1)."""

from __future__ import annotations

import torch

from lmlab.nn.lm_loss import IGNORE_INDEX


def clm_loss(model, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of next-token prediction; batch = (inputs, targets), both (B, T).

    Targets of -100 are not scored. The model scores the targets itself (`nll` per token; GPT/GPT-2:
    chunked, never holding the (B, T, V) logits; Transformer-XL: its adaptive softmax's NLL path),
    through forward so that DDP, FSDP and torch.compile wrappers see the call.
    """
    x, y = batch
    nll = model(x, targets=y).nll
    return nll.sum() / (y != IGNORE_INDEX).sum().clamp(min=1)
