"""Turning next-token logits into a token: repetition penalty, temperature, top-k, top-p.

Every function works on a whole batch of logits (B, V) with tensor ops: no Python per token.
`DecodeRule` is the whole per-step rule of `lmlab.generate` for rows that share one generator
(penalty, filters, sampling, stopping at end-of-text or a stop string): `generate` runs it over its
batch, and the server (lmlab.serve) runs one per request inside a batch that requests join and leave.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


class DecodeRule:
    """The decoding rule of `lmlab.generate` for B rows that share one random generator.

    `pick(logits)` chooses the next token of every row from its next-token logits (B, V): repetition
    penalty over the prompt and the tokens chosen so far, then greedy or temperature / top-k / top-p
    sampling; a row that has stopped gets `pad`. `observe(tokens)` records the chosen tokens and says
    whether every row has stopped (end-of-text, or its new text holds a stop string).
    `finished` (B,), False at the start, is updated in place (speculative decoding reads it).
    """

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor | None, do_sample: bool, temperature: float,
                 top_k: int | None, top_p: float, repetition_penalty: float, eos_token_id: int | None,
                 generator: torch.Generator | None, stop_strings: Sequence[str] | None = None,
                 tokenizer=None, pad: int = 0, finished: torch.Tensor | None = None):
        self.ids, self.mask = ids, mask  # the prompt (B, T): the penalty counts its tokens as seen
        self.do_sample, self.temperature, self.top_k, self.top_p = do_sample, temperature, top_k, top_p
        self.penalty, self.eos, self.generator = repetition_penalty, eos_token_id, generator
        self.stop_strings, self.tokenizer, self.pad = stop_strings, tokenizer, pad
        B = ids.shape[0]
        self.finished = torch.zeros(B, dtype=torch.bool, device=ids.device) if finished is None else finished
        self.seen: torch.Tensor | None = None  # (B, V) once the first logits give V
        self.track_stop = eos_token_id is not None or bool(stop_strings)
        self.produced: list[list[int]] = [[] for _ in range(B)] if stop_strings else []

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits -> (B,) tokens."""
        if self.penalty != 1.0:
            if self.seen is None:
                # Count, then compare: scattering booleans would let a pad (written False) overwrite a
                # real occurrence of the same id, and scatter_ leaves the order of duplicate writes undefined.
                real = (self.mask if self.mask is not None else torch.ones_like(self.ids)).long()
                counts = torch.zeros(logits.shape, dtype=torch.long, device=self.ids.device)
                self.seen = counts.scatter_add_(1, self.ids, real) > 0
            logits = apply_repetition_penalty(logits, self.seen, self.penalty)
        token = next_tokens(logits, self.do_sample, self.temperature, self.top_k, self.top_p, self.generator)
        if self.track_stop:
            token = token.masked_fill(self.finished, self.pad)
        return token

    def observe(self, token: torch.Tensor) -> bool:
        """Record the tokens `pick` chose; True when every row has stopped."""
        if self.track_stop:
            if self.eos is not None:
                self.finished |= token == self.eos
            if self.stop_strings:
                self.finished |= self._hit_stop_string(token)
            if bool(self.finished.all()):
                return True
        if self.seen is not None:
            self.seen.scatter_(1, token[:, None], True)
        return False

    def _hit_stop_string(self, token: torch.Tensor) -> torch.Tensor:
        hit = torch.zeros_like(self.finished)
        for row, t in enumerate(token.tolist()):
            if self.finished[row]:
                continue
            self.produced[row].append(t)
            text = self.tokenizer.decode(self.produced[row])
            hit[row] = any(s in text for s in self.stop_strings)
        return hit
