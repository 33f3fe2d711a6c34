"""Evaluation: perplexity under fixed and sliding windows, bits per character, baselines.

`span_f1` (conlleval chunk F1) and `squad_scores` (official SQuAD v1.1/v2.0 EM and F1) score the
BERT tagging and QA tasks.
"""

from lmlab.eval.perplexity import (
    bits_per_character,
    perplexity,
    scored_text_size,
    token_losses,
    unigram_perplexity,
)
from lmlab.eval.span_f1 import span_f1
from lmlab.eval.squad import squad_scores

__all__ = ["token_losses", "perplexity", "bits_per_character", "scored_text_size", "unigram_perplexity",
           "span_f1", "squad_scores"]
