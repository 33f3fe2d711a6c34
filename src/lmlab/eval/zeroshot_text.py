"""Summarization (GPT-2 §3.6) and translation (GPT-2 §3.7) by prompting a causal LM.

Summarize. "We induce summarization behavior by adding the text TL;DR: after the article and
generating 100 tokens with Top-k random sampling with k = 2 ... We use the first 3 generated
sentences in these 100 tokens as the summary." The prompt is `article + "\\nTL;DR:"`; sentences
end at . ! or ? followed by whitespace, or at a line break. Scores: mean ROUGE-1/2/L F1 against
the reference summary (text_metrics.py; fractions in [0, 1]).

Translate. "We condition the language model on a context of example pairs of the format english
sentence = french sentence and then after a final prompt of english sentence = we sample from
the model with greedy decoding and use the first generated sentence as the translation." The
prompt is one `source = target` line per example pair, then `source =`; decoding is greedy and
stops at the first newline. Score: sacrebleu corpus BLEU (0-100).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmlab.eval.scoring import generate_texts
from lmlab.eval.text_metrics import bleu, rouge_scores
from lmlab.eval.zeroshot_data import Pair, Summary

TLDR = "\nTL;DR:"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
N_SAMPLES = 3  # predictions shown in the result next to their references


def first_sentences(text: str, n: int = 3) -> str:
    """The first n sentences of `text`, joined by single spaces."""
    pieces = [p.strip() for p in _SENTENCE_END.split(text)]
    return " ".join([p for p in pieces if p][:n])


def evaluate_summarize(model, tokenizer, items: Sequence[Summary], max_new_tokens: int = 100,
                       top_k: int = 2, seed: int = 0, sentences: int = 3, batch_size: int = 8,
                       progress: bool = False) -> dict:
    """{"examples", "rouge1", "rouge2", "rougeL", "max_new_tokens", "top_k", "samples"}."""
    prompts = [tokenizer.encode(item.article + TLDR) for item in items]
    texts = generate_texts(model, tokenizer, prompts, max_new_tokens, do_sample=True, top_k=top_k,
                           seed=seed, batch_size=batch_size, progress=progress)
    predictions = [first_sentences(t, sentences) for t in texts]
    references = [item.summary for item in items]
    return {"examples": len(items), **rouge_scores(predictions, references),
            "max_new_tokens": max_new_tokens, "top_k": top_k,
            "samples": [{"prediction": p, "reference": r}
                        for p, r in zip(predictions[:N_SAMPLES], references, strict=False)]}


def translation_prompt(examples: Sequence[Pair], source: str) -> str:
    """'src = tgt' lines of the example pairs, then 'source ='."""
    return "".join(f"{p.source} = {p.target}\n" for p in examples) + f"{source} ="


def evaluate_translate(model, tokenizer, pairs: Sequence[Pair], examples: Sequence[Pair],
                       max_new_tokens: int = 64, batch_size: int = 8, progress: bool = False) -> dict:
    """{"examples", "bleu", "shots", "samples"}: greedy translations of `pairs` given `examples`."""
    prompts = [tokenizer.encode(translation_prompt(examples, p.source)) for p in pairs]
    texts = generate_texts(model, tokenizer, prompts, max_new_tokens, stop_at_newline=True,
                           batch_size=batch_size, progress=progress)
    hypotheses = [t.split("\n")[0].strip() for t in texts]
    references = [p.target for p in pairs]
    return {"examples": len(pairs), "bleu": bleu(hypotheses, references), "shots": len(examples),
            "samples": [{"source": p.source, "prediction": h, "reference": p.target}
                        for p, h in zip(pairs[:N_SAMPLES], hypotheses, strict=False)]}
