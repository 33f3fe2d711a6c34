"""What every downstream task shares besides the heads (lmlab.models.heads): choosing a reader, GPT's
input transformations (new special tokens, a grown embedding), GPT's auxiliary LM loss, padding and
the evaluation loop.

GPT §3.3 / Fig. 1: every task input becomes one token sequence `<start> ... <extract>` (pairs put
`<delim>` between the two texts) and a linear layer reads the last layer's state at `<extract>`.
The three tokens are new: their embedding rows start as N(0, 0.02), the paper's init. §3.2: the
fine-tuning loss is `L_cls + λ·L_LM` with λ = 0.5, where L_LM is the causal LM loss over the
task input itself. BERT (Devlin et al. 2018, §4.1) reads the pooled `[CLS]` state instead and
has no auxiliary loss.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from lmlab.errors import ConfigError
from lmlab.models.heads import TASK_READERS, TaskOutput, next_token_targets
from lmlab.models.registry import Family
from lmlab.nn.lm_loss import IGNORE_INDEX

TASK_TOKENS = ("<start>", "<delim>", "<extract>")  # GPT §3.3, Fig. 1


def default_reader(family: Family) -> str:
    """The first reader `family` declares that task heads implement; ConfigError if none."""
    for reader in family.readers:
        if reader in TASK_READERS:
            return reader
    raise ConfigError(f"{family.name} declares no reader a task head can use ({', '.join(TASK_READERS)}); "
                      f"it cannot be fine-tuned on a task")


def add_task_tokens(backbone: nn.Module, tokenizer) -> dict[str, int]:
    """Add <start>, <delim>, <extract> to the tokenizer and the embedding (GPT §3.3).

    Returns {"start_id", "delim_id", "extract_id"}. Tokens the tokenizer already has (a model
    fine-tuned before) keep their trained rows; new ones get N(0, 0.02) rows.
    """
    new = [t for t in TASK_TOKENS if tokenizer.token_to_id(t) is None]
    start, delim, extract = tokenizer.add_special_tokens(list(TASK_TOKENS))
    backbone.init_token_rows([tokenizer.token_to_id(t) for t in new],
                             max(tokenizer.vocab_size, backbone.config.vocab_size))
    return {"start_id": start, "delim_id": delim, "extract_id": extract}


WORD_TOKENIZERS = ("words", "fastai_words")  # the tokenizers whose vocabulary is a list of words


def add_target_words(backbone: nn.Module, tokenizer, texts: list[str], most: int, min_count: int = 2) -> int:
    """ULMFiT's target-domain vocabulary: add up to `most` words of `texts` seen at least `min_count`
    times that the (words) tokenizer lacks, most frequent first; the model grows its tied table and
    starts the new rows as its family does (ULMFiT: the mean embedding). Returns how many were added."""
    if not most:
        return 0
    if tokenizer.kind not in WORD_TOKENIZERS:
        raise ConfigError(f"--extend-vocab needs a words tokenizer ({', '.join(WORD_TOKENIZERS)}); this "
                          f"model's is {tokenizer.kind}")
    counts = Counter(w for text in texts for w in tokenizer.words(text) if tokenizer.token_to_id(w) is None)
    new = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count][:most]
    ids = tokenizer.add_words(new)
    backbone.init_token_rows(ids, max(tokenizer.vocab_size, backbone.config.vocab_size))
    return len(ids)


def lm_aux_loss(out: TaskOutput, batch: dict) -> torch.Tensor:
    """Mean causal-LM loss over the task input's real tokens (GPT §3.2, L_LM on the task data)."""
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    ids = ids.reshape(-1, ids.shape[-1])
    targets = next_token_targets(ids, None if mask is None else mask.reshape(ids.shape))
    return out.lm_nll.sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)


# ---------------------------------------------------------------- batching and evaluation


def pad_2d(rows: list[list[int]], value: int) -> torch.Tensor:
    """(B, T_max) LongTensor, right-padded with `value`."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def pad_3d(groups: list[list[list[int]]], value: int) -> torch.Tensor:
    """(B, N_max, T_max) LongTensor; missing sequences are all `value`."""
    n = max(len(g) for g in groups)
    width = max(len(r) for g in groups for r in g)
    out = torch.full((len(groups), n, width), value, dtype=torch.long)
    for i, g in enumerate(groups):
        for j, r in enumerate(g):
            out[i, j, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


@torch.no_grad()
def run_model(model: nn.Module, features: list, collate, batch_size: int):
    """Yield (output, batch) over `features` in order, in eval mode, without gradients."""
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(features), batch_size):
        batch = {k: v.to(device) for k, v in collate(features[start:start + batch_size]).items()}
        yield model(**batch), batch
