"""Turning next-token logits into a token: repetition penalty, temperature, top-k, top-p.

Every function works on a whole batch of logits (B, V) with tensor ops: no Python per token.
"""

from __future__ import annotations

import math

import torch

from lmlab.errors import GenerationError


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float,
                        repetition_penalty: float, num_return_sequences: int) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not 0 < temperature < math.inf:
        raise GenerationError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise GenerationError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise GenerationError(f"top_p must be in (0, 1], got {top_p!r}")
    if not repetition_penalty > 0:
        raise GenerationError(f"repetition_penalty must be > 0, got {repetition_penalty!r}")
    if not isinstance(num_return_sequences, int) or num_return_sequences < 1:
        raise GenerationError(f"num_return_sequences must be an integer >= 1, got {num_return_sequences!r}")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL (Keskar et al. 2019, §4.1): divide positive logits of seen tokens by the penalty,
    multiply negative ones, so a seen token always becomes less likely."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of tokens whose probability
    reaches p; the most likely token is always kept."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    # Drop a token when the tokens before it already reach p.
    drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None,
                top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) float logits -> (B,) token ids."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logits = apply_top_k(logits, top_k or 0)
    logits = apply_top_p(logits, top_p)
    probs = logits.softmax(-1)
    try:
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    except RuntimeError:  # checked here, not before every token: a check would sync each step
        if bool(torch.isfinite(probs).all()):
            raise
        raise GenerationError("the model gave non-finite logits (NaN or inf): its weights are "
                              "probably broken") from None
