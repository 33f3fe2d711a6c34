"""`lmlab.generate` and its streaming form.

The prompt is run once through the model, filling a preallocated KV cache; each new token then
costs one position. Prompts of different lengths are left-padded, and the attention mask keeps the
pads invisible (the model counts positions over real tokens, so padding changes nothing).

Models that carry memory instead of a cache (Transformer-XL: they have `init_mems`) consume the
prompt in segments of `config.tgt_len`, each continuing the memory of the one before, then one token
per step with the memory. They have no padding support, so prompts must have equal lengths.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from lmlab.errors import GenerationError
from lmlab.generate import compiled
from lmlab.generate.sampling import apply_repetition_penalty, check_sampling_args, next_tokens
from lmlab.generate.speculative import DRAFT_TOKENS, check_draft, speculative_steps


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists of different lengths -> (ids, attention_mask), both (B, T_max), pads on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenerationError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def _prompt_tensors(input_ids, attention_mask, pad_id, device):
    if isinstance(input_ids, torch.Tensor):
        ids = input_ids if input_ids.dim() == 2 else input_ids[None]
        if ids.shape[1] == 0:
            raise GenerationError("every prompt needs at least one token")
        mask = attention_mask if attention_mask is None or attention_mask.dim() == 2 else attention_mask[None]
        return ids.to(device), None if mask is None else mask.to(device)
    if input_ids and isinstance(input_ids[0], int):
        input_ids = [input_ids]
    ids, mask = left_pad(input_ids, pad_id, device)
    return ids, (None if bool(mask.all()) else mask)


def _check_vocab(ids: torch.Tensor, vocab_size: int) -> None:
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise GenerationError(f"prompt token ids must be in [0, {vocab_size}), got "
                              f"[{int(ids.min())}, {int(ids.max())}]")


@torch.no_grad()
def stream(model, input_ids, max_new_tokens: int = 50, do_sample: bool = False, temperature: float = 1.0,
           top_k: int | None = None, top_p: float = 1.0, repetition_penalty: float = 1.0,
           eos_token_id: int | None = None, seed: int | None = 0, attention_mask=None,
           num_return_sequences: int = 1, stop_strings: Sequence[str] | None = None, tokenizer=None,
           pad_token_id: int | None = None, compile: bool = False, draft_model=None,
           draft_tokens: int = DRAFT_TOKENS) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), until max_new_tokens or all rows have stopped.

    Rows that stopped (end-of-text or a stop string) yield the pad id from then on.
    compile=True (GPT / GPT-2): fixed-shape decoding steps, on CUDA compiled and replayed as one CUDA
    graph per token (lmlab.generate.compiled); the same tokens, and the same code path uncompiled on
    CPU. Other models ignore it.
    draft_model (greedy only; GPT / GPT-2 with the same vocabulary, e.g. `quantized_draft(model)` on
    CPU): speculative decoding (lmlab.generate.speculative). The draft proposes `draft_tokens` tokens,
    the model scores them in one forward; the same tokens come out, sooner when the draft guesses well.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                        num_return_sequences)
    if not (hasattr(model, "new_cache") or _uses_mems(model)):
        raise GenerationError(f"{type(model).__name__} cannot generate: it is not a causal language model "
                              f"(gpt, gpt2, transfo-xl); BERT encoders and fine-tuned task models are not")
    if stop_strings is not None and not all(isinstance(s, str) and s for s in stop_strings):
        raise GenerationError(f"stop strings must be non-empty strings, got {list(stop_strings)!r}")
    if draft_model is not None:
        check_draft(model, draft_model, do_sample, compile)
    if stop_strings and tokenizer is None:
        raise GenerationError("stop_strings need the tokenizer to read the generated text")
    device = next(model.parameters()).device
    pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    ids, mask = _prompt_tensors(input_ids, attention_mask, pad, device)
    if num_return_sequences > 1:
        ids = ids.repeat_interleave(num_return_sequences, 0)
        mask = None if mask is None else mask.repeat_interleave(num_return_sequences, 0)
    B, T = ids.shape
    context = model.config.max_seq_len
    if T > context:
        raise GenerationError(f"prompt of {T} tokens is longer than the model's context ({context})")
    if T + max_new_tokens > context:
        raise GenerationError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                              f"model's context ({context}); ask for at most {context - T} new tokens")
    _check_vocab(ids, model.config.vocab_size)
    if _uses_mems(model) and mask is not None and not bool(mask.all()):
        raise GenerationError("this model has no padding support: prompts of different lengths (or an "
                              "attention_mask with zeros) cannot be batched; generate them one at a time")
    generator = None
    if do_sample:
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()  # fresh entropy: a different sample each call
        else:
            generator.manual_seed(seed)

    nets = [model] if draft_model is None else [model, draft_model]
    was_training = [net.training for net in nets]
    for net in nets:
        net.eval()
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)  # rows past eos / a stop string
    try:
        if draft_model is None:
            steps = _memory_steps if _uses_mems(model) else _cache_steps
            if compile and compiled.supports(model):
                steps = compiled.static_cache_steps
            logits, advance = steps(model, ids, mask, max_new_tokens)
        else:
            logits, advance = speculative_steps(model, draft_model, ids, mask, max_new_tokens, finished,
                                                draft_tokens)
        yield from _decode(logits, advance, ids, mask, finished, max_new_tokens, do_sample, temperature,
                           top_k, top_p, repetition_penalty, eos_token_id, generator, stop_strings,
                           tokenizer, pad)
    finally:
        for net, mode in zip(nets, was_training, strict=True):
            net.train(mode)


def _decode(logits, advance, ids, mask, finished, max_new_tokens, do_sample, temperature, top_k, top_p,
            repetition_penalty, eos_token_id, generator, stop_strings, tokenizer, pad):
    """The decoding rule over the model's logits; advance(token) feeds the chosen tokens back.
    `finished` (B,) starts all False and is updated in place as rows stop."""
    B = ids.shape[0]
    seen = None
    if repetition_penalty != 1.0:
        # Count, then compare: scattering booleans would let a pad (written False) overwrite a real
        # occurrence of the same id, and scatter_ leaves the order of duplicate writes undefined.
        real = (mask if mask is not None else torch.ones_like(ids)).long()
        seen = torch.zeros(logits.shape, dtype=torch.long, device=ids.device).scatter_add_(1, ids, real) > 0
    track_stop = eos_token_id is not None or bool(stop_strings)
    produced: list[list[int]] = [[] for _ in range(B)] if stop_strings else []
    for step in range(max_new_tokens):
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        token = next_tokens(logits, do_sample, temperature, top_k, top_p, generator)
        if track_stop:
            token = token.masked_fill(finished, pad)
        yield token
        if track_stop:
            if eos_token_id is not None:
                finished |= token == eos_token_id
            if stop_strings:
                finished |= _hit_stop_string(token, finished, produced, stop_strings, tokenizer)
            if bool(finished.all()):
                return
        if step == max_new_tokens - 1:
            return
        if seen is not None:
            seen.scatter_(1, token[:, None], True)
        logits = advance(token)


def _uses_mems(model) -> bool:
    return hasattr(model, "init_mems")


def _cache_steps(model, ids, mask, max_new_tokens):
    """Prompt through a preallocated KV cache: (last logits (B, V), step: token (B,) -> logits)."""
    B, T = ids.shape
    full_mask = None
    if mask is not None:
        full_mask = torch.cat([mask, mask.new_ones(B, max_new_tokens)], dim=1)
    cache = model.new_cache(B, T + max_new_tokens)
    # inference_mode (stricter than no_grad) skips autograd's view and version bookkeeping on every
    # op of every step. Only the model call runs in it: the cache is a normal tensor written in
    # place, and the logits leave as inputs of out-of-place ops, so what the loop yields is normal.
    with torch.inference_mode():
        logits = model(ids, attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1]

    def step(token):
        step_mask = None if full_mask is None else full_mask[:, :cache.length + 1]
        with torch.inference_mode():
            out = model(token[:, None], attention_mask=step_mask, cache=cache, logits_to_keep=1)
        return out.logits[:, -1]

    return logits, step


def _memory_steps(model, ids, mask, max_new_tokens):
    """Prompt in segments of tgt_len carrying the memory (Transformer-XL §3.2), then one token a step."""
    mems = model.init_mems(ids.shape[0])
    segment = model.config.tgt_len
    for start in range(0, ids.shape[1], segment):
        out = model(ids[:, start:start + segment], mems=mems, logits_to_keep=1)
        mems = out.mems
    state = {"mems": mems}

    def step(token):
        out = model(token[:, None], mems=state["mems"], logits_to_keep=1)
        state["mems"] = out.mems
        return out.logits[:, -1]

    return out.logits[:, -1], step


def _hit_stop_string(token, finished, produced, stop_strings, tokenizer) -> torch.Tensor:
    hit = torch.zeros_like(finished)
    for row, t in enumerate(token.tolist()):
        if finished[row]:
            continue
        produced[row].append(t)
        text = tokenizer.decode(produced[row])
        hit[row] = any(s in text for s in stop_strings)
    return hit


def generate(model, input_ids, max_new_tokens: int = 50, **kwargs) -> torch.Tensor:
    """Prompt + new tokens, (B·num_return_sequences, T + n_new); see `stream` for the options.

    With eos_token_id=None generation never stops early. Rows that stopped are filled with the pad id
    (eos_token_id unless pad_token_id is given).
    """
    pieces = [t[:, None] for t in stream(model, input_ids, max_new_tokens, **kwargs)]
    device = next(model.parameters()).device
    pad = kwargs.get("pad_token_id")
    if pad is None:
        pad = kwargs.get("eos_token_id") if kwargs.get("eos_token_id") is not None else 0
    ids, _ = _prompt_tensors(input_ids, kwargs.get("attention_mask"), pad, device)
    n = kwargs.get("num_return_sequences", 1)
    if n > 1:
        ids = ids.repeat_interleave(n, 0)
    return torch.cat([ids, *pieces], dim=1)
