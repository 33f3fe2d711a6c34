"""LAMBADA (GPT-2 §3.3) and the Children's Book Test cloze (GPT-2 §3.2): scoring words in context.

LAMBADA. Each passage's last whitespace-separated word is the target; the text before it is the
context (see zeroshot.split_target for how the boundary is tokenized). The word may be several
tokens t_1..t_n:

    correct   greedy decoding from the context reproduces t_1..t_n (argmax at every position,
              each conditioned on the true earlier tokens, which greedy decoding then produced)
    accuracy  mean of correct over passages
    ppl       exp(sum of -ln p(t_i | ...) over all target tokens / number of target tokens)
    word_ppl  exp(sum of the same / number of passages): per word, comparable across tokenizers

Stop-word filter (`stop_word_filter=True`, GPT-2 §3.3: "adding a stop-word filter as an
approximation to further restrict the model"): the model often continues the sentence instead of
ending it, with a function word. At the target's first position only, greedy decoding may not
choose a token whose text, stripped of whitespace and lowercased, is in STOP_WORDS (" the", "The",
" and", ...); later positions and every log-probability (so ppl) are unfiltered. A target that is
itself a stop word is then never predicted, as in the paper's approximation. It needs tokens that
can hold a whole word (words, byte-level BPE): with characters it would forbid the letters "a"
and "i", so it is refused there.

Cloze. Each candidate fills every XXXXX of the question; the score of a candidate is the
log-probability of the question from the first XXXXX to its end given the context and the
question before it (GPT-2 §3.2: "compute the probability of each choice and the rest of the
sentence conditioned on this choice"); the best-scoring candidate is the prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lmlab.errors import ConfigError, DataError
from lmlab.eval.scoring import score_targets, split_target
from lmlab.eval.zeroshot_data import BLANK, Cloze, Passage

# English function words: articles, pronouns, auxiliaries, prepositions, conjunctions, particles.
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves 's 're 've 'll 'd 'm n't
""".split())


def stop_word_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bool: True for the ids whose text (stripped, lowercased) is a stop word."""
    if getattr(tokenizer, "kind", None) == "chars":
        raise ConfigError("the stop-word filter needs word or subword tokens; a character tokenizer "
                          "would forbid the letters 'a' and 'i'")
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        mask[i] = tokenizer.decode([i]).strip().lower() in STOP_WORDS
    return mask


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else float("inf")  # a model sure of a wrong word: ppl inf


def evaluate_lambada(model, tokenizer, passages: Sequence[Passage], stop_word_filter: bool = False,
                     batch_size: int = 8, progress: bool = False) -> dict:
    """{"examples", "accuracy", "ppl", "word_ppl", "target_tokens", "stop_word_filter",
    "unknown_targets"} (the last: targets holding the tokenizer's <unk>, scored as they are)."""
    pairs = []
    for p in passages:
        context, target = split_target(tokenizer, p.text, p.word_start)
        if not context or not target:
            raise DataError(f"{p.where}: the passage gives no tokens {'before' if not context else 'for'} "
                            f"its final word")
        pairs.append((context, target))
    mask = stop_word_mask(tokenizer, model.config.vocab_size) if stop_word_filter else None
    scores = score_targets(model, pairs, batch_size, first_mask=mask, progress=progress)
    total = -sum(float(s.logprobs.sum()) for s in scores)
    n_tokens = sum(len(t) for _, t in pairs)
    unk = getattr(tokenizer, "unk_token_id", None)
    return {"examples": len(pairs),
            "accuracy": sum(s.greedy for s in scores) / len(scores),
            "ppl": _exp(total / n_tokens),
            "word_ppl": _exp(total / len(pairs)),
            "target_tokens": n_tokens,
            "stop_word_filter": bool(stop_word_filter),
            "unknown_targets": sum(unk in t for _, t in pairs) if unk is not None else 0}


def filled(item: Cloze, candidate: str) -> tuple[str, int]:
    """(context + question with every XXXXX replaced by `candidate`, index where scoring starts)."""
    prefix = item.context + " "
    return prefix + item.question.replace(BLANK, candidate), len(prefix) + item.question.index(BLANK)


def evaluate_cloze(model, tokenizer, items: Sequence[Cloze], batch_size: int = 8,
                   progress: bool = False) -> dict:
    """{"examples", "accuracy", "candidates" (mean per example)}."""
    pairs = []
    for item in items:
        for candidate in item.candidates:
            text, start = filled(item, candidate)
            context, target = split_target(tokenizer, text, start)
            if not context or not target:
                raise DataError(f"{item.where}: candidate {candidate!r} gives no tokens to score")
            pairs.append((context, target))
    scores = score_targets(model, pairs, batch_size, progress=progress)
    best: dict[int, tuple[float, str]] = {}
    i = 0
    for k, item in enumerate(items):
        for candidate in item.candidates:
            logp = float(scores[i].logprobs.sum())
            if k not in best or logp > best[k][0]:  # ties: the first candidate listed
                best[k] = (logp, candidate)
            i += 1
    correct = sum(best[k][1] == item.answer for k, item in enumerate(items))
    return {"examples": len(items), "accuracy": correct / len(items),
            "candidates": len(pairs) / len(items)}
