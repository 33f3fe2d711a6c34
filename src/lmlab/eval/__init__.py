"""Evaluation: perplexity under fixed and sliding windows, bits per character, baselines.

`lmlab.eval.span_f1` and `lmlab.eval.squad_scores` (BERT tasks) come with the task code.
"""

from lmlab.eval.perplexity import (
    bits_per_character,
    perplexity,
    scored_text_size,
    token_losses,
    unigram_perplexity,
)

__all__ = ["token_losses", "perplexity", "bits_per_character", "scored_text_size", "unigram_perplexity"]
