"""Zero-shot task evaluation of a causal LM by conditioning (Radford et al. 2019, §3).

`lmlab evaluate DIR --task lambada|cloze|summarize|translate --data FILE` runs a plain language
model dir (gpt, gpt2, transfo-xl: any causal lmlab LM with its tokenizer; not a fine-tuned task
model) on a task it was never trained for:

* lambada (§3.3): accuracy and perplexity of a passage's final word (zeroshot_lambada.py);
* cloze (§3.2, Children's Book Test): the candidate whose filled-in text is most probable;
* summarize (§3.6): "TL;DR:" after the article, top-k 2 sampling, ROUGE (zeroshot_text.py);
* translate (§3.7): "english = french" example pairs, greedy decoding, BLEU.

This file holds what the tasks share: the model's usable context, how a text is split into a
conditioning context and a scored target, batched scoring of targets, batched generation. File
formats are read in zeroshot_data.py; ROUGE and BLEU are in text_metrics.py.

Long inputs never fail: a conditioning context longer than the model's context keeps its last
tokens (the tail, nearest the target); a target longer than the context is scored in chunks of
half a context, each seeing the tokens just before it; a generation prompt keeps its last
`context - max_new_tokens` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lmlab.errors import ConfigError, DataError, TokenizerError
from lmlab.eval.perplexity import _accepts, _device

ZEROSHOT_TASKS = ("lambada", "cloze", "summarize", "translate")


def context_length(model) -> int:
    """Tokens the model can condition on: config.max_seq_len, and for a model with memory
    (Transformer-XL, no hard limit) the span it was trained to attend over, tgt_len + mem_len."""
    config = model.config
    context = int(config.max_seq_len)
    if hasattr(config, "tgt_len") and hasattr(config, "mem_len"):
        context = min(context, int(config.tgt_len) + int(config.mem_len))
    return context


def check_causal_lm(model, where: str, purpose: str = "zero-shot scoring") -> None:
    """ConfigError unless `model` is a plain causal LM (not a fine-tuned TaskModel, not BERT)."""
    if hasattr(model, "spec") and hasattr(model, "backbone"):
        name = model.spec.name
        raise ConfigError(f"{where} is a fine-tuned {name} model; {purpose} needs the plain language model "
                          f"it was fine-tuned from (its own metrics: --task {name})")
    if getattr(model, "family", None) == "bert":
        raise ConfigError(f"{where} is a BERT encoder; {purpose} needs a causal language model "
                          f"(gpt, gpt2, transfo-xl)")


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
    device = _device(model)
    keep_ok = _accepts(model, "logits_to_keep")
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
            logits = model(inputs, logits_to_keep=keep).logits if keep_ok else model(inputs).logits[:, -keep:]
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
    from lmlab.generate.loop import generate

    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    context = context_length(model)
    new = min(max_new_tokens, context - 1)
    prompts = [list(p)[-(context - new):] for p in prompts]
    if any(not p for p in prompts):
        raise DataError("a generation prompt gives no tokens")
    eos = tokenizer.eos_token_id if getattr(tokenizer, "kind", None) != "words" else None
    per_call = 1 if hasattr(model, "init_mems") else batch_size
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


def zeroshot_command(model_dir: str | Path, task: str, data: str, *, device: str = "cpu",
                     batch_size: int = 8, max_examples: int | None = None, stop_word_filter: bool = False,
                     max_new_tokens: int | None = None, top_k: int = 2, seed: int = 0, shots: int = 5,
                     context_file: str | None = None, references: str | None = None,
                     progress: bool = True) -> dict:
    """Metrics of the causal LM in `model_dir` on zero-shot `task` over `data`; a JSON-able dict.

    max_new_tokens defaults to 100 (summarize, GPT-2 §3.6) and 64 (translate). translate takes
    its `shots` example pairs from `context_file` when given, else from the first pairs of `data`
    (which are then not scored); `references` is the target side as a file aligned with `data`.
    """
    from lmlab.checkpoints.io import load
    from lmlab.data.prepare import check_vocab
    from lmlab.eval import zeroshot_data as io
    from lmlab.eval.zeroshot_lambada import evaluate_cloze, evaluate_lambada
    from lmlab.eval.zeroshot_text import evaluate_summarize, evaluate_translate

    if task not in ZEROSHOT_TASKS:
        raise ConfigError(f"unknown zero-shot task {task!r}; expected one of {', '.join(ZEROSHOT_TASKS)}")
    if max_examples is not None and max_examples < 1:
        raise ConfigError(f"--max-examples must be >= 1, got {max_examples}")
    if shots < 0:
        raise ConfigError(f"--shots must be >= 0, got {shots}")
    model, tokenizer = load(model_dir, device=device)
    check_causal_lm(model, str(model_dir))
    if tokenizer is None:
        raise TokenizerError(f"{model_dir} has no tokenizer.json; zero-shot tasks read and write text")
    check_vocab(tokenizer.vocab_size, model.config.vocab_size)
    options = dict(batch_size=batch_size, progress=progress)
    if task == "lambada":
        items = io.read_lambada(data)[:max_examples]
        result = evaluate_lambada(model, tokenizer, items, stop_word_filter=stop_word_filter, **options)
    elif task == "cloze":
        result = evaluate_cloze(model, tokenizer, io.read_cloze(data)[:max_examples], **options)
    elif task == "summarize":
        result = evaluate_summarize(model, tokenizer, io.read_summaries(data)[:max_examples],
                                    max_new_tokens=max_new_tokens or 100, top_k=top_k, seed=seed, **options)
    else:
        pairs = io.read_pairs(data, references)
        examples = io.read_pairs(context_file)[:shots] if context_file else pairs[:shots]
        scored = pairs if context_file else pairs[shots:]
        if not scored:
            raise DataError(f"{data}: all {len(pairs)} pairs are used as context (--shots {shots}); "
                            f"none is left to translate")
        result = evaluate_translate(model, tokenizer, scored[:max_examples], examples,
                                    max_new_tokens=max_new_tokens or 64, **options)
    return {"model_dir": str(model_dir), "task": task, "data": str(data), **result}
