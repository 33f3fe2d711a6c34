"""Zero-shot task evaluation of a causal LM by conditioning (Radford et al. 2019, §3).

`lmlab evaluate DIR --task lambada|cloze|summarize|translate --data FILE` runs a plain language
model dir (gpt, gpt2, transfo-xl: any causal lmlab LM with its tokenizer; not a fine-tuned task
model) on a task it was never trained for:

* lambada (§3.3): accuracy and perplexity of a passage's final word (zeroshot_lambada.py);
* cloze (§3.2, Children's Book Test): the candidate whose filled-in text is most probable;
* summarize (§3.6): "TL;DR:" after the article, top-k 2 sampling, ROUGE (zeroshot_text.py);
* translate (§3.7): "english = french" example pairs, greedy decoding, BLEU.

What the tasks share (the model's usable context, splitting a text into a conditioning context
and a scored target, batched scoring, batched generation) is in scoring.py; file formats are read
in zeroshot_data.py; ROUGE and BLEU are in text_metrics.py.
"""

from __future__ import annotations

from pathlib import Path

from lmlab.checkpoints.io import load
from lmlab.data.prepare import check_vocab
from lmlab.errors import ConfigError, DataError, TokenizerError
from lmlab.eval import zeroshot_data as io
from lmlab.eval.scoring import check_causal_lm
from lmlab.eval.zeroshot_lambada import evaluate_cloze, evaluate_lambada
from lmlab.eval.zeroshot_text import evaluate_summarize, evaluate_translate

ZEROSHOT_TASKS = ("lambada", "cloze", "summarize", "translate")


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
