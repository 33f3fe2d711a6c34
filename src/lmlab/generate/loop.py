"""`lmlab.generate` and its streaming form, for every causal LM through one decoding-state protocol:

    state = model.init_state(batch_size, max_len, device)   # KV cache, memory or LSTM state
    out = model(ids, state=state)                            # out.logits, out.state (passed on)

The prompt goes through the model once, filling the state (a preallocated KV cache for decoders:
each new token then costs one position); then one token per step. Prompts of different lengths
are left-padded, and the attention mask keeps the pads invisible (the model counts positions over
real tokens, so padding changes nothing); a model without padding support says so.

A model with Transformer-XL memory (declared state `memory`) consumes the prompt in segments of
`config.tgt_len`, each continuing the memory of the one before, as it was trained to read text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from lmlab.errors import GenerationError
from lmlab.generate import compiled
from lmlab.generate.sampling import DecodeRule, check_sampling_args
from lmlab.generate.speculative import DRAFT_TOKENS, check_draft, speculative_steps
from lmlab.models.heads import TaskModel
from lmlab.models.registry import FAMILIES, spec_of


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
    compile=True (models with a KV cache in GPT's layout): fixed-shape decoding steps, on CUDA compiled
    and replayed as one CUDA graph per token (lmlab.generate.compiled); the same tokens, and the same
    code path uncompiled on CPU. Other models ignore it.
    draft_model (greedy only; KV-cache models with the same vocabulary, e.g. `quantized_draft(model)`
    on CPU): speculative decoding (lmlab.generate.speculative). The draft proposes `draft_tokens`
    tokens, the model scores them in one forward; the same tokens come out, sooner when the draft
    guesses well.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                        num_return_sequences)
    check_generator(model)
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
    state_kind = spec_of(model).state
    if state_kind == "memory" and mask is not None and not bool(mask.all()):
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
            fixed_shape = compile and state_kind == "kv_cache" and compiled.supports(model)
            steps = compiled.static_cache_steps if fixed_shape else state_steps
            logits, advance = steps(model, ids, mask, max_new_tokens)
        else:
            logits, advance = speculative_steps(model, draft_model, ids, mask, max_new_tokens, finished,
                                                draft_tokens)
        rule = DecodeRule(ids, mask, do_sample, temperature, top_k, top_p, repetition_penalty, eos_token_id,
                          generator, stop_strings, tokenizer, pad, finished)
        yield from _decode(logits, advance, rule, max_new_tokens)
    finally:
        for net, mode in zip(nets, was_training, strict=True):
            net.train(mode)


def _decode(logits, advance, rule: DecodeRule, max_new_tokens):
    """The decoding rule over the model's logits; advance(token) feeds the chosen tokens back."""
    for step in range(max_new_tokens):
        token = rule.pick(logits)
        yield token
        if rule.observe(token) or step == max_new_tokens - 1:
            return
        logits = advance(token)


def check_generator(model) -> None:
    """GenerationError unless `model` is a causal LM (not BERT, not a fine-tuned task model)."""
    causal = ", ".join(name for name, f in FAMILIES.items() if f.kind == "causal_lm")
    if isinstance(model, TaskModel) or spec_of(model).kind != "causal_lm":
        raise GenerationError(f"{type(model).__name__} cannot generate: it is not a causal language model "
                              f"({causal}); BERT encoders and fine-tuned task models are not")


def state_steps(model, ids, mask, max_new_tokens):
    """The prompt through the model's decoding state, then one token per step:
    (last logits (B, V), step: token (B,) -> logits (B, V))."""
    B, T = ids.shape
    full_mask = None
    if mask is not None:
        full_mask = torch.cat([mask, mask.new_ones(B, max_new_tokens)], dim=1)
    state = model.init_state(B, T + max_new_tokens, ids.device)
    # Transformer-XL reads text in segments of tgt_len carrying its memory (§3.2); other models
    # take the whole prompt at once.
    chunk = model.config.tgt_len if spec_of(model).state == "memory" else T
    seen = 0

    def run(x):
        nonlocal state, seen
        seen += x.shape[1]
        step_mask = None if full_mask is None else full_mask[:, :seen]
        # inference_mode (stricter than no_grad) skips autograd's view and version bookkeeping on
        # every op of every step. Only the model call runs in it: a KV cache is a normal tensor
        # written in place, and the logits leave as inputs of out-of-place ops.
        with torch.inference_mode():
            out = model(x, attention_mask=step_mask, state=state, logits_to_keep=1)
        state = out.state
        return out.logits[:, -1]

    for start in range(0, T, chunk):
        logits = run(ids[:, start:start + chunk])
    return logits, lambda token: run(token[:, None])


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
