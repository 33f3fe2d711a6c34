"""Perplexity and bits per character of a causal language model on one token stream.

For a stream x_0 .. x_{N-1}, every token after the first is scored once:

    nll_t = -ln p(x_t | context_t),  t = 1 .. N-1
    loss  = mean_t nll_t (nats),     ppl = exp(loss),     bits = sum_t nll_t / ln 2

What `context_t` is depends on the protocol (window W = number of input tokens per forward pass):

* fixed (stride None or == W): the inputs are cut into non-overlapping chunks x[kW : kW+W]; each
  chunk predicts the next W tokens, so x_t sees the tokens from the start of its chunk only
  (1 .. W of them). Cheap, and what a training loss on contiguous chunks measures.
* sliding (stride S < W): windows of W inputs start at 0, S, 2S, ...; the first window scores all
  its W targets, every later window only its last S, so each token is scored in the window where it
  has the most context among those that reach it (W-S+1 .. W tokens; exactly W for S = 1). The
  last window is moved left to end at the final token, so it is a full W wide and scores only the
  tokens no earlier window reached. This is the usual strided evaluation (e.g. GPT-2 §3.1 tables).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from lmlab.errors import ConfigError, DataError

LN2 = math.log(2.0)


def windows(n_targets: int, window: int, stride: int | None) -> list[tuple[int, int, int]]:
    """(start, length, n_scored) per forward pass; a window scores its last n_scored targets.

    Window inputs are x[start : start+length], its targets x[start+1 : start+length+1].
    """
    if stride is None or stride == window:
        return [(s, min(window, n_targets - s), min(window, n_targets - s))
                for s in range(0, n_targets, window)]
    if n_targets <= window:
        return [(0, n_targets, n_targets)]
    out, scored_to = [(0, window, window)], window  # targets 1..scored_to are done
    start = stride
    while scored_to < n_targets:
        # Right-align the last window so it keeps the full W of context.
        start = min(start, n_targets - window)
        end = start + window
        out.append((start, window, end - scored_to))
        scored_to, start = end, start + stride
    return out


def _check(model, ids: torch.Tensor, window: int, stride: int | None, batch_size: int) -> None:
    if ids.dim() != 1:
        raise DataError(f"expected a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    if ids.numel() < 2:
        raise DataError(f"need at least 2 tokens to score one, got {ids.numel()}")
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be a positive integer, got {window!r}")
    if stride is not None and not (isinstance(stride, int) and 1 <= stride <= window):
        raise ConfigError(f"stride must be an integer in [1, window={window}], got {stride!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    max_len, vocab = model.config.max_seq_len, model.config.vocab_size
    if window > max_len:
        raise ConfigError(f"window {window} is longer than the model's context (max_seq_len={max_len})")
    if int(ids.max()) >= vocab or int(ids.min()) < 0:
        bad = int(ids.max()) if int(ids.max()) >= vocab else int(ids.min())
        raise DataError(f"token id {bad} is outside the model's vocabulary [0, {vocab})")


def model_device(model) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model with neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def token_losses(model, ids: torch.Tensor, window: int, stride: int | None = None,
                 batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """Per-token NLL in nats, shape (len(ids) - 1,): entry t-1 is -ln p(ids[t] | context).

    See the module docstring for the fixed and sliding protocols. Windows of equal length are
    batched `batch_size` at a time; the model runs in eval mode under no_grad and its train/eval
    mode is restored afterwards. `progress` shows a bar over the windows (stderr).
    """
    ids = torch.as_tensor(ids).long()
    _check(model, ids, window, stride, batch_size)
    plan = windows(ids.numel() - 1, window, stride)
    device = model_device(model)
    ids = ids.to(device)
    was_training = model.training
    model.eval()
    pieces = []
    bar = tqdm(total=len(plan), desc="evaluate", unit="window", disable=not progress)
    try:
        with torch.no_grad():
            i = 0
            while i < len(plan):
                # Consecutive windows of one length form a batch (only the last may differ).
                j = i + 1
                while j < len(plan) and j - i < batch_size and plan[j][1] == plan[i][1]:
                    j += 1
                pieces.append(_score_batch(model, ids, plan[i:j]))
                bar.update(j - i)
                i = j
    finally:
        bar.close()
        model.train(was_training)
    return torch.cat(pieces)


def _score_batch(model, ids: torch.Tensor, batch: list[tuple[int, int, int]]):
    length = batch[0][1]
    starts = torch.tensor([b[0] for b in batch], device=ids.device)
    n_scored = torch.tensor([b[2] for b in batch], device=ids.device)
    index = starts[:, None] + torch.arange(length, device=ids.device)  # (B, L)
    inputs, targets = ids[index], ids[index + 1]
    keep = max(b[2] for b in batch)  # from the plan, not the tensor: no device sync
    # The model scores its targets itself (lmlab's LMs chunk by chunk, never holding (B, L, V)
    # logits), only for the tail a sliding window scores.
    nll = model(inputs, logits_to_keep=keep if keep < length else 0, targets=targets[:, -keep:]).nll
    nll = nll.to(torch.promote_types(nll.dtype, torch.float32))  # half precision loses ~3 digits
    # Row b scores its last n_scored[b] positions; boolean indexing keeps row-major (stream) order.
    mask = torch.arange(keep, device=ids.device)[None] >= keep - n_scored[:, None]
    return nll[mask]


def perplexity(model, ids: torch.Tensor, window: int, stride: int | None = None, batch_size: int = 8,
               tokenizer=None, per_char: bool = False, progress: bool = False) -> dict:
    """{"loss": mean nats, "ppl": exp(loss), "tokens": count scored, "protocol", "window", "stride"}.

    With a character tokenizer (`kind == "chars"`, one token = one character) "bpc" = loss / ln 2
    is added. With `per_char=True` (needs `tokenizer`) the total bits are also divided by the
    characters and UTF-8 bytes of the scored text: "bits_per_character", "bits_per_byte".
    """
    losses = token_losses(model, ids, window, stride, batch_size, progress).double()
    total = float(losses.sum())
    loss = total / losses.numel()
    sliding = stride is not None and stride != window
    out = {"loss": loss, "ppl": math.exp(loss), "tokens": int(losses.numel()),
           "protocol": "sliding" if sliding else "fixed", "window": window,
           "stride": stride if sliding else window}
    if tokenizer is not None and getattr(tokenizer, "kind", None) == "chars":
        out["bpc"] = loss / LN2
    if per_char:
        if tokenizer is None:
            raise ConfigError("per_char=True needs the tokenizer to decode the scored text")
        chars, n_bytes = scored_text_size(tokenizer, ids)
        out["characters"] = chars
        out["bits_per_character"] = bits_per_character(total, chars)
        out["bits_per_byte"] = bits_per_character(total, n_bytes)
    return out


def bits_per_character(total_nats: float, n_characters: int) -> float:
    """bpc = total_nats / ln 2 / n_characters (pass a byte count for bits per byte)."""
    if n_characters <= 0:
        raise DataError(f"cannot compute bits per character over {n_characters} characters")
    return total_nats / LN2 / n_characters


def scored_text_size(tokenizer, ids) -> tuple[int, int]:
    """(characters, UTF-8 bytes) of the text of ids[1:], the tokens a perplexity run scores.

    Each end-of-document token counts as one character and one byte, as the newline it stands
    for, not as its spelling (e.g. 13 characters of "<|endoftext|>"). The text of ids[1:] is
    measured as text(ids) - text(ids[:1]) so no token is decoded out of its byte context.
    """
    ids = torch.as_tensor(ids).tolist()
    eos = getattr(tokenizer, "eos_token_id", None)

    def size(part: list[int]) -> tuple[int, int]:
        n_eos = sum(1 for i in part if i == eos) if eos is not None else 0
        text = tokenizer.decode([i for i in part if i != eos])
        return len(text) + n_eos, len(text.encode("utf-8")) + n_eos

    (c_all, b_all), (c_first, b_first) = size(ids), size(ids[:1])
    return c_all - c_first, b_all - b_first


def unigram_perplexity(train_ids, eval_ids, vocab_size: int) -> float:
    """Perplexity of an add-one smoothed unigram model fitted on `train_ids`, on all `eval_ids`.

    p(v) = (count_train(v) + 1) / (N_train + V);  ppl = exp(-mean_{x in eval} ln p(x)).
    A context-free baseline: a language model that does not beat it has learned nothing.
    """
    train = np.asarray(train_ids, dtype=np.int64).reshape(-1)
    evals = np.asarray(eval_ids, dtype=np.int64).reshape(-1)
    if evals.size == 0:
        raise DataError("unigram perplexity needs at least one evaluation token")
    for name, arr in (("train", train), ("eval", evals)):
        if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
            raise DataError(f"{name} token ids must lie in [0, {vocab_size})")
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    log_p = np.log(counts + 1.0) - math.log(train.size + vocab_size)
    return float(math.exp(-log_p[evals].mean()))
