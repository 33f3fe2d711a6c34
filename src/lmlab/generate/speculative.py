"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): `generate(..., draft_model=d)`.

At batch 1 on a CPU a decoding step is bound by memory bandwidth: every token reads all the weights
(494 MB for gpt2-124m in fp32), and a forward over k + 1 tokens reads them once too. So a cheap draft
model proposes k tokens one by one, and the model scores all of them in one forward. The decoding
rule (greedy, repetition penalty, stop tokens) then runs on the model's own logits, token by token,
exactly as without a draft: while the chosen token is the one the draft proposed, the
logits for the next position are already computed; at the first token that differs, the cache is
cut back to the tokens chosen so far and a new round starts. The draft only decides how much work
is done ahead, never which tokens come out, up to float rounding: the model's logits for a position
come from a (k + 1)-token forward instead of a 1-token one (different matmul kernels, ~1e-6).
Sampling is refused: a sampled token rarely is the draft's guess, so nearly every round would be
thrown away. In a batch a round goes on while every row that has not stopped took the proposal.

`quantized_draft(model)` makes the usual draft on CPU: the same model with int8 linear layers
(lmlab.nn.quantized), sharing every other tensor with it. Any causal LM with a KV cache (declared
state `kv_cache`) can be the model or the draft. For greedy decoding it agrees with the
fp32 model on nearly every token, so most rounds keep all k proposals.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lmlab.errors import GenerationError
from lmlab.models.heads import TaskModel
from lmlab.models.registry import spec_of
from lmlab.nn.layers import Linear
from lmlab.nn.quantized import Int8Linear

DRAFT_TOKENS = 8  # proposals per round; gpt2-124m + int8 draft, 2 Xeon cores: 4 -> 1.3x, 8 -> 1.4-1.7x


def _has_kv_cache(model) -> bool:
    return not isinstance(model, TaskModel) and spec_of(model).state == "kv_cache"


def quantized_draft(model: nn.Module) -> nn.Module:
    """A copy of `model` whose linear layers (the output layer too) are int8: a draft for CPU decoding.

    Embeddings, layer norms and biases are shared with `model`, not copied (a tied output layer
    shares nothing: its int8 copy is new); the int8 weights are a snapshot, so make a new draft
    after changing the model's weights.
    """
    if not _has_kv_cache(model):
        raise GenerationError(f"quantized_draft takes a causal LM with a KV cache (gpt, gpt2), got "
                              f"{type(model).__name__}")
    weight = next(model.parameters())
    if weight.device.type != "cpu":
        raise GenerationError("quantized_draft runs on CPU (int8 kernels); on GPU pass a smaller model "
                              "with the same vocabulary as draft_model")
    if weight.dtype != torch.float32:
        raise GenerationError(f"quantized_draft needs a float32 model (its int8 kernels take float32 "
                              f"inputs), got {weight.dtype}")
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    draft = copy.deepcopy(model, memo=shared)  # the modules are copied, their tensors are not
    for module in list(draft.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Linear):
                setattr(module, name, Int8Linear(child.weight.t(), child.bias))  # Linear holds W as (in, out)
            elif isinstance(child, nn.Linear):  # the output layer
                setattr(module, name, Int8Linear(child.weight, child.bias))
    return draft.eval()


def check_draft(model, draft, do_sample: bool, compile: bool) -> None:
    if not (_has_kv_cache(model) and _has_kv_cache(draft)):
        raise GenerationError("draft_model needs a model and a draft with a KV cache (gpt, gpt2), "
                              f"got {type(model).__name__} and {type(draft).__name__}")
    if do_sample:
        raise GenerationError("draft_model speeds up greedy decoding only; use do_sample=False")
    if compile:
        raise GenerationError("draft_model and compile=True cannot be combined; choose one")
    devices = {next(net.parameters()).device for net in (model, draft)}
    if len(devices) > 1:
        raise GenerationError(f"draft_model and model must be on one device, got {sorted(map(str, devices))}")
    if draft.config.vocab_size != model.config.vocab_size:
        raise GenerationError(f"draft_model has vocab_size {draft.config.vocab_size}; the model has "
                              f"{model.config.vocab_size}: they must share the vocabulary")


def speculative_steps(model, draft, ids, mask, max_new_tokens, finished: torch.Tensor,
                      draft_tokens: int = DRAFT_TOKENS):
    """Prompt through the model and the draft: (last logits (B, V), step: token (B,) -> logits).

    `finished` (B,) is the decoding loop's own mask of stopped rows, read at every step: their
    tokens (pads from then on) need not match the proposals.
    """
    state = _Speculation(model, draft, ids, mask, max_new_tokens, finished, draft_tokens)
    return state.first_logits, state.advance


class _Speculation:
    def __init__(self, model, draft, ids, mask, max_new_tokens, finished, draft_tokens):
        if draft_tokens < 1:
            raise GenerationError(f"draft_tokens must be >= 1, got {draft_tokens}")
        B, T = ids.shape
        total = T + max_new_tokens
        if draft.config.max_seq_len < total:
            raise GenerationError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                                  f"draft model's context ({draft.config.max_seq_len})")
        self.model, self.draft, self.k, self.finished = model, draft, draft_tokens, finished
        self.last_fed = total - 2  # the last new token is never fed back, so no position beyond this
        self.mask = None if mask is None else torch.cat([mask, mask.new_ones(B, max_new_tokens)], dim=1)
        self.cache, self.draft_cache = model.init_state(B, total), draft.init_state(B, total)
        with torch.inference_mode():
            self.tokens = ids.new_zeros(B, total)  # every chosen token, prompt included
            self.tokens[:, :T] = ids
            self.first_logits = self._forward(model, self.cache, ids, keep=1)[:, -1]
            self._forward(draft, self.draft_cache, ids, keep=1)
        self.chosen = T  # positions whose tokens are final (all in the model's cache)
        self.proposed = ids.new_zeros(B, 0)  # the draft's tokens after the last fed one...
        self.scored = None  # ...and the model's logits after each of them (B, k + 1, V)
        self.used = 0  # proposals confirmed so far in this round

    def _forward(self, net, cache, x, keep=None):
        mask = None if self.mask is None else self.mask[:, :cache.length + x.shape[1]]
        return net(x, attention_mask=mask, state=cache, logits_to_keep=keep or x.shape[1]).logits

    def advance(self, token: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            self.tokens[:, self.chosen] = token
            self.chosen += 1
            if self.used < self.proposed.shape[1]:
                if bool(((token == self.proposed[:, self.used]) | self.finished).all()):
                    self.used += 1
                    return self.scored[:, self.used]
            return self._round()

    def _round(self) -> torch.Tensor:
        """Feed the newest chosen token and k draft proposals to the model in one forward."""
        start = self.chosen - 1  # position of the newest chosen token, not yet in the model's cache
        self.cache.truncate(start)  # drop the rejected proposals' keys and values
        self.draft_cache.truncate(start)
        k = min(self.k, self.last_fed - start)
        proposals = [self.tokens[:, start:start + 1]]
        pending = self.tokens[:, self.draft_cache.length:start + 1]  # 1 token, or 2 after a full round
        for _ in range(k):
            logits = self._forward(self.draft, self.draft_cache, pending, keep=1)[:, -1]
            pending = logits.argmax(-1, keepdim=True)
            proposals.append(pending)
        fed = torch.cat(proposals, dim=1)  # (B, 1 + k): the chosen token, then the proposals
        self.proposed = fed[:, 1:]
        self.scored = self._forward(self.model, self.cache, fed)
        self.used = 0
        return self.scored[:, 0]
