"""Causal language modelling: predict token t+1 from tokens <= t (GPT §3.1, eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clm_loss(model, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of next-token prediction; batch = (inputs, targets), both (B, T)."""
    x, y = batch
    logits = model(x).logits  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
