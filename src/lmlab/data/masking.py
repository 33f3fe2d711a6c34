"""BERT's masked-LM corruption (Devlin et al. 2018, §3.1 Task #1, Appendix A.1), as pure functions.

Of the positions that hold text (not [CLS], [SEP], [PAD] or [MASK]), 15% are chosen, at least one:
`max(1, round(0.15 * n))` positions drawn without replacement, as the released code does (a fixed
count per sequence, not a coin per token). Each chosen position is replaced by [MASK] 80% of the
time, by a random token 10% of the time (drawn uniformly from the vocabulary without its special
tokens), and kept 10% of the time; the model predicts the original token there. Labels are -100
everywhere else.

Every masking is a pure function of integers, so it never needs saving to resume exactly:
- dynamic masking (RoBERTa's improvement over the paper): row `index` of global batch `step`
  is masked by a generator keyed by (seed, step, index), so a sequence seen twice is masked anew;
- static masking (the paper's: its data is created once, each instance masked `dupe_factor`
  times): copy `dupe` of instance `instance` is masked by a generator keyed by (seed, instance,
  dupe), the same at every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lmlab.errors import ConfigError
from lmlab.nn.lm_loss import IGNORE_INDEX

IGNORE = IGNORE_INDEX  # labels of positions that are not predicted
MASK_PROB, MASK_TOKEN_PROB, RANDOM_TOKEN_PROB = 0.15, 0.8, 0.1  # §3.1: 15%, then 80/10/10
_DYNAMIC, _STATIC = 0, 1  # generator streams: dynamic and static masks never share a key


@dataclass(frozen=True)
class MaskingSpec:
    """The ids masking needs. `never_mask`: ids that are never chosen; `random_pool`: the ids a
    "random token" replacement is drawn from (every id but the special tokens)."""

    mask_id: int
    vocab_size: int
    never_mask: tuple[int, ...]
    special_ids: tuple[int, ...]
    prob: float = MASK_PROB
    random_pool: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not 0 < self.prob < 1:
            raise ConfigError(f"masking probability must be in (0, 1), got {self.prob!r}")
        pool = np.setdiff1d(np.arange(self.vocab_size, dtype=np.int64), np.asarray(self.special_ids))
        if pool.size == 0:
            raise ConfigError("the vocabulary holds only special tokens: nothing to draw random tokens from")
        object.__setattr__(self, "random_pool", pool)

    @classmethod
    def from_tokenizer(cls, tokenizer, prob: float = MASK_PROB) -> MaskingSpec:
        """From a tokenizer with BERT's [CLS] [SEP] [PAD] [MASK] (the WordPiece tokenizer)."""
        try:
            structural = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                          tokenizer.mask_token_id)
        except AttributeError:
            kind = getattr(tokenizer, "kind", tokenizer)
            raise ConfigError(f"masked LM pretraining needs a tokenizer with [CLS] [SEP] [PAD] [MASK] "
                              f"(--tokenizer wordpiece), got {kind!r}") from None
        named = {tokenizer.token_to_id(t) for t in tokenizer.special_tokens}
        specials = tuple(sorted(named | set(structural)))
        return cls(mask_id=tokenizer.mask_token_id, vocab_size=tokenizer.vocab_size,
                   never_mask=tuple(sorted(set(structural))), special_ids=specials, prob=prob)


def mask_tokens(ids: np.ndarray, spec: MaskingSpec,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted ids, labels) of one sequence `ids` (T,): labels hold the original id at the
    chosen positions and IGNORE elsewhere."""
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.full(ids.shape, IGNORE, dtype=np.int64)
    candidates = np.flatnonzero(~np.isin(ids, spec.never_mask))
    if candidates.size == 0:
        return ids.copy(), labels
    k = max(1, int(np.floor(spec.prob * candidates.size + 0.5)))
    chosen = np.sort(rng.choice(candidates, size=k, replace=False))
    u = rng.random(k)
    out = ids.copy()
    labels[chosen] = ids[chosen]
    out[chosen[u < MASK_TOKEN_PROB]] = spec.mask_id
    swap = chosen[(u >= MASK_TOKEN_PROB) & (u < MASK_TOKEN_PROB + RANDOM_TOKEN_PROB)]
    out[swap] = spec.random_pool[rng.integers(spec.random_pool.size, size=swap.size)]
    return out, labels


def _generator(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


def dynamic_mask(ids: np.ndarray, spec: MaskingSpec, seed: int, step: int, index: int):
    """Masking of row `index` of global batch `step`: a pure function of (seed, step, index)."""
    return mask_tokens(ids, spec, _generator(seed, _DYNAMIC, step, index))


def static_mask(ids: np.ndarray, spec: MaskingSpec, seed: int, instance: int, dupe: int):
    """Masking number `dupe` of instance `instance`: a pure function of (seed, instance, dupe)."""
    return mask_tokens(ids, spec, _generator(seed, _STATIC, instance, dupe))
