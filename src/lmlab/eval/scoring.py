"""Scoring given targets and generating continuations with any causal LM: what the zero-shot tasks
(lmlab.eval.zeroshot), `lmlab inspect` and other evaluations share.

Long inputs never fail: a conditioning context longer than the model's context keeps its last
tokens (the tail, nearest the target); a target longer than the context is scored in chunks of
half a context, each seeing the tokens just before it; a generation prompt keeps its last
`context - max_new_tokens` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lmlab.errors import ConfigError, DataError
from lmlab.eval.perplexity import model_device
from lmlab.generate.loop import generate
from lmlab.models.heads import TaskModel
from lmlab.models.registry import FAMILIES, spec_of


def context_length(model) -> int:
    """Tokens the model can condition on: config.max_seq_len, and for a model with memory
    (Transformer-XL, no hard limit) the span it was trained to attend over, tgt_len + mem_len."""
    config = model.config
    context = int(config.max_seq_len)
    if spec_of(model).state == "memory":
        context = min(context, int(config.tgt_len) + int(config.mem_len))
    return context


def causal_families() -> str:
    return ", ".join(name for name, f in FAMILIES.items() if f.kind == "causal_lm")


def check_causal_lm(model, where: str, purpose: str = "zero-shot scoring") -> None:
    """ConfigError unless `model` is a plain causal LM (not a fine-tuned TaskModel, not BERT)."""
    if isinstance(model, TaskModel):
        name = model.spec.name
        raise ConfigError(f"{where} is a fine-tuned {name} model; {purpose} needs the plain language model "
                          f"it was fine-tuned from (its own metrics: --task {name})")
    spec = spec_of(model)
    if spec.kind != "causal_lm":
        raise ConfigError(f"{where} is a {spec.name} model ({spec.kind}); {purpose} needs a causal language "
                          f"model ({causal_families()})")


def split_target(tokenizer, text: str, start: int) -> tuple[list[int], list[int]]:
    """(context ids, target ids) of `text`, whose target begins at character `start`.

    The target's ids are the tail of encode(text), so they are spelled as the model reads them in
    context (a byte-level BPE puts the space before a word into the word's token: " word"). The
    context is text[:start] when its ids are a prefix of the whole text's ids (words, characters),
    else text up to the whitespace before the target (byte-level BPE); when neither is a prefix
    (a merge across the boundary), the two halves are encoded apart at that whitespace.
    """
    full = tokenizer.encode(text)
    gap = len(text[:start].rstrip())
    for cut in (start, gap):
        context = tokenizer.encode(text[:cut])
        if len(context) < len(full) and full[:len(context)] == context:
            return context, full[len(context):]
    return tokenizer.encode(text[:gap]), tokenizer.encode(text[gap:])


@dataclass
class TargetScore:
    logprobs: torch.Tensor  # (n,) float64: ln p(target_i | context, target_<i)
    greedy: bool  # greedy decoding from the context reproduces every target token


def _rows(pairs: Sequence[tuple[list[int], list[int]]], context: int) -> list[tuple]:
    """(item, start, inputs, n_scored, targets) per forward row; a row's last n_scored input
    positions predict `targets`. A target that fits the context is one row; a longer one is cut
    into chunks of context // 2, each row holding the context tokens just before its chunk."""
    rows = []
    for item, (ctx, tgt) in enumerate(pairs):
        if not ctx or not tgt:
            raise DataError(f"example {item}: scoring needs at least one context and one target token")
        full = list(ctx) + list(tgt)
        step = len(tgt) if len(tgt) <= context else max(1, context // 2)
        for a in range(len(ctx), len(full), step):
            b = min(a + step, len(full))
            lo = max(0, b - 1 - context)  # the last `context` inputs before position b - 1
            rows.append((item, a - len(ctx), full[lo:b - 1], b - a, full[a:b]))
    return rows


@torch.no_grad()
def score_targets(model, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 8,
                  first_mask: torch.Tensor | None = None, progress: bool = False) -> list[TargetScore]:
    """Log-probability and greedy correctness of each (context ids, target ids) pair.

    Rows are sorted by length and right-padded into batches (a causal model never looks right, so
    the pads change nothing). `first_mask` (V,) bool marks tokens greedy decoding may not choose at
    a target's first position (the LAMBADA stop-word filter); log-probabilities are unaffected.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    rows = _rows(pairs, context_length(model))
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][2]))
    device = model_device(model)
    pieces: dict[int, list] = {i: [] for i in range(len(pairs))}
    was_training = model.training
    model.eval()
    try:
        for s in tqdm(range(0, len(order), batch_size), desc="score", unit="batch", disable=not progress):
            batch = [rows[r] for r in order[s:s + batch_size]]
            width = max(len(r[2]) for r in batch)
            inputs = torch.zeros(len(batch), width, dtype=torch.long)
            for b, row in enumerate(batch):
                inputs[b, :len(row[2])] = torch.tensor(row[2])
            keep = max(width - (len(r[2]) - r[3]) for r in batch)  # from the first scored position on
            inputs = inputs.to(device)
            logits = model(inputs, logits_to_keep=keep).logits
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            logp = logits.log_softmax(-1)  # (B, keep, V)
            for b, (item, start, ids, n, tgt) in enumerate(batch):
                lo = len(ids) - n - (width - keep)
                lp = logp[b, lo:lo + n]  # (n, V)
                target = torch.tensor(tgt, device=lp.device)
                choice = lp
                if start == 0 and first_mask is not None:
                    choice = lp.clone()
                    choice[0, first_mask.to(lp.device)] = float("-inf")
                ok = bool((choice.argmax(-1) == target).all())
                pieces[item].append((start, lp.gather(1, target[:, None])[:, 0].double().cpu(), ok))
    finally:
        model.train(was_training)
    out = []
    for item in range(len(pairs)):
        chunks = sorted(pieces[item], key=lambda c: c[0])
        out.append(TargetScore(torch.cat([c[1] for c in chunks]), all(c[2] for c in chunks)))
    return out


def generate_texts(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, *,
                   do_sample: bool = False, top_k: int | None = None, seed: int = 0,
                   stop_at_newline: bool = False, batch_size: int = 8, progress: bool = False) -> list[str]:
    """The decoded continuation of each prompt (prompt text not included).

    At most context - 1 new tokens; a prompt keeps its last context - new tokens. Generation stops
    at the tokenizer's end-of-text token (not for word tokenizers, whose eos is a newline) and,
    with stop_at_newline, once a newline appears. Prompts run `batch_size` at a time, left-padded
    (models with memory, which have no padding, one at a time); batch i samples with seed + i.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    context = context_length(model)
    new = min(max_new_tokens, context - 1)
    prompts = [list(p)[-(context - new):] for p in prompts]
    if any(not p for p in prompts):
        raise DataError("a generation prompt gives no tokens")
    eos = tokenizer.eos_token_id if tokenizer.kind != "words" else None
    per_call = 1 if spec_of(model).state == "memory" else batch_size  # memory: no padding
    texts = []
    for i in tqdm(range(0, len(prompts), per_call), desc="generate", unit="batch", disable=not progress):
        batch = prompts[i:i + per_call]
        ids = generate(model, batch, max_new_tokens=new, do_sample=do_sample, top_k=top_k, seed=seed + i,
                       eos_token_id=eos, stop_strings=["\n"] if stop_at_newline else None,
                       tokenizer=tokenizer if stop_at_newline else None)
        width = max(len(p) for p in batch)
        for row in ids[:, width:].tolist():
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            texts.append(tokenizer.decode(row))
    return texts
