"""`lmlab evaluate DIR --data SOURCE`: perplexity of a saved model on a corpus split, as a dict.

`lmlab.cli` calls `evaluate_command` (or, with --task, the task or zero-shot evaluation) and prints
the dict as JSON. `EvalOptions` are the command's options: its flags and --config keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.errors import ConfigError, DataError, TokenizerError
from lmlab.eval.detokenize import DETOKENIZERS, detokenizer, original_words
from lmlab.eval.memory import EVAL_PRESETS, check_protocol, default_window, evaluate_stream, resolve_settings
from lmlab.eval.scoring import check_causal_lm
from lmlab.models.heads import TaskModel
from lmlab.models.registry import spec_of
from lmlab.options import option

PROTOCOLS = ("fixed", "sliding", "memory")
SPLITS = ("train", "valid", "test", "all")


@dataclass(frozen=True)
class EvalOptions:
    """`lmlab evaluate`: perplexity of a model dir on a corpus; with --task, the metrics of a fine-tuned
    model on a task file, or of a plain causal LM on a GPT-2 zero-shot task. Prints JSON."""

    model_dir: str = option(help="an lmlab model dir", positional=True)
    data: str = option("builtin:ptb", "builtin:NAME, .txt, folder, JSONL or a token shard (.bin)")
    split: str = option("valid", "the split of --data to score", choices=SPLITS)
    protocol: str = option("fixed", "fixed: non-overlapping windows; sliding: windows advanced by --stride; "
                                    "memory (models that carry memory or a recurrent state): consecutive "
                                    "segments carrying it, every token once", choices=PROTOCOLS)
    window: int | None = option(None, "window length (default: the model's context)")
    stride: int | None = option(None, "sliding stride (default: window/2)")
    batch_size: int = option(8, "windows per forward (memory protocol: parallel streams)")
    max_tokens: int | None = option(None, "evaluate only the first N tokens")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    task: str | None = option(None, "score a fine-tuned model on --data (JSONL / GLUE TSV / builtin:NAME, "
                                    "whose --split train or valid part is used); or, with a plain causal LM, "
                                    "a GPT-2 zero-shot task (--data FILE)")
    detokenizer: str = option("none", "perplexity: undo PTB / WikiText tokenization before a byte-level "
                                      "tokenizer (GPT-2 §3.1); adds word_ppl", choices=tuple(DETOKENIZERS))
    text_column: str | None = option(None, "task: JSONL field / TSV header of the text")
    text_b_column: str | None = option(None, "task: the second text of a pair")
    label_column: str | None = option(None, "task: the label (tag: a column index, default -1 = last)")
    truncate: bool = option(False, "task: cut texts longer than the model's limit longest-first")
    word_column: int | None = option(None, "tag: column index of the word (default 0)")
    null_threshold: float | None = option(None, "qa v2.0: answer \"\" when null score - best span score "
                                                "exceeds this (default: the value fine-tuned with)")
    stop_word_filter: bool = option(False, "lambada: greedy prediction may not start with a stop word "
                                           "(GPT-2 §3.3)")
    max_examples: int | None = option(None, "zero-shot: score only the first N examples")
    max_new_tokens: int | None = option(None, "summarize / translate: tokens to generate (default 100 / 64)")
    top_k: int = option(2, "summarize: top-k sampling (GPT-2's)")
    seed: int = option(0, "summarize: sampling seed")
    shots: int = option(5, "translate: example pairs in the prompt, the first ones of --data (then not "
                           "scored) or of --context-file")
    context_file: str | None = option(None, "translate: TSV of example pairs for the prompt")
    references: str | None = option(None, "translate: target sentences aligned with --data (one per line); "
                                          "without it --data is a TSV source<TAB>target")
    tgt_len: int | None = option(None, "memory models: segment length (default: the model's)")
    mem_len: int | None = option(None, "transfo-xl: positions of memory per layer (default: the model's; "
                                       "0 = none)")
    clamp_len: int | None = option(None, "transfo-xl: distances beyond it share one embedding (0 = no clamp)")
    same_length: bool | None = option(None, "transfo-xl: every query sees exactly --mem-len keys "
                                            "(default: the model's)")
    eval_preset: str | None = option(None, "transfo-xl: the paper's evaluation settings for that model; "
                                           "flags given win", choices=tuple(sorted(EVAL_PRESETS)))
    beam_size: int = option(1, "translation models (cove; --data parallel text): BLEU of beam search with "
                               "this many hypotheses (1 = greedy), length-normalised")


def _check_args(protocol: str, split: str, stride, window, batch_size, max_tokens) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if window is not None and window < 1:
        raise ConfigError(f"--window must be >= 1, got {window}")
    if stride is not None and stride < 1:
        raise ConfigError(f"--stride must be >= 1, got {stride}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 2:
        raise ConfigError(f"--max-tokens must be >= 2 (one token is scored from another), got {max_tokens}")


def _token_stream(model, tokenizer, model_dir: str, data: str, split: str) -> torch.Tensor:
    """The ids to score: a token shard (.bin) as is, any text source tokenized (and cached).

    split "all" reads every document of a local source (no held-out tail is cut off).
    """
    from lmlab.data.prepare import check_vocab, prepare_tokens
    from lmlab.data.shards import open_shard

    vocab = model.config.vocab_size
    if str(data).endswith(".bin"):
        shard = open_shard(data)
        if shard.vocab_size > vocab:
            raise DataError(f"{data}: shard vocab size {shard.vocab_size} is larger than the model's {vocab}")
        return torch.from_numpy(shard.tokens.astype("int64"))
    if tokenizer is None:
        raise TokenizerError(f"{model_dir} has no tokenizer.json, so text data {data} cannot be tokenized; "
                             "pass a token shard (.bin) instead")
    check_vocab(tokenizer.vocab_size, vocab)
    if split == "all":
        from lmlab.data.corpora import is_builtin

        if is_builtin(data):
            raise ConfigError(f"split 'all' is for local data; {data} has its own splits")
        # A local source given as its own validation source: its valid split is every document.
        shard = prepare_tokens(data, tokenizer, valid=data, splits=("valid",))["valid"]
    else:
        shard = prepare_tokens(data, tokenizer, splits=(split,))[split]
    return torch.from_numpy(shard.tokens.astype("int64"))


def _detokenized_stream(tokenizer, model_dir: str, data: str, split: str, name: str):
    """(ids, words of the original text): the documents of `split`, detokenized, then tokenized
    (not cached: the cache holds the text as written)."""
    from lmlab.data.corpora import is_builtin, read_corpus
    from lmlab.data.prepare import encode_documents

    if str(data).endswith(".bin"):
        raise ConfigError(f"--detokenizer {name} works on text; {data} is a token shard")
    if tokenizer is None:
        raise TokenizerError(f"{model_dir} has no tokenizer.json, so text data {data} cannot be tokenized")
    if getattr(tokenizer, "kind", None) == "words":
        raise ConfigError(f"--detokenizer {name} is for byte-level (or character) tokenizers; a word "
                          f"vocabulary needs the text tokenized as it was trained on")
    if split == "all":
        if is_builtin(data):
            raise ConfigError(f"split 'all' is for local data; {data} has its own splits")
        docs = read_corpus(data, "valid", valid=data)
    else:
        docs = read_corpus(data, split)
    words = sum(original_words(d) for d in docs)
    fn = detokenizer(name)
    ids = encode_documents([fn(d) for d in docs], tokenizer, progress=True, desc=f"tokenize {split}")
    return torch.from_numpy(ids.astype("int64")), words


def evaluate_command(model_dir: str, data: str, split: str = "valid", protocol: str = "fixed",
                     stride: int | None = None, window: int | None = None, batch_size: int = 8,
                     device: str = "auto", max_tokens: int | None = None, detokenize: str = "none",
                     tgt_len: int | None = None, mem_len: int | None = None, clamp_len: int | None = None,
                     same_length: bool | None = None, eval_preset: str | None = None, beam_size: int = 1,
                     max_examples: int | None = None) -> dict:
    """Perplexity of the model in `model_dir` on `split` of `data`; returns a JSON-able dict.

    `data` is `builtin:NAME`, a .txt file, a folder of .txt files, a .jsonl file, or a token
    shard (.bin, scored as is). window defaults to the model's max_seq_len; "sliding" uses
    stride (default window // 2). Keys: model_dir, data, split, loss, ppl, tokens, protocol,
    window, stride, and with a tokenizer characters, bits_per_character and bits_per_byte of
    the scored text, plus bpc (= loss / ln 2) for a character tokenizer.

    A model with a MIDI tokenizer is scored on the pieces of a music source (builtin:NAME or a folder of
    .mid files): NLL per event (lmlab.eval.music), keys nll_per_event (= loss), events (= tokens),
    pieces, window.

    `detokenize` (none, ptb, wikitext; GPT-2 §3.1) rewrites each document with the invertible
    detokenizer of lmlab.eval.detokenize before tokenizing; the result then adds "detokenizer",
    "words" (whitespace words + line ends of the original text) and, without max_tokens,
    "word_ppl" = exp(total nats / words), the per-word perplexity the benchmarks publish.

    Models with memory (transfo-xl) also take protocol "memory" (lmlab.eval.memory: consecutive
    segments of tgt_len with mem_len of memory; batch_size = parallel streams) and the eval-only
    settings tgt_len, mem_len, clamp_len, same_length, or a named `eval_preset` of the paper's
    (flags win over the preset, the preset over the model's config). Their fixed / sliding windows
    (default window tgt_len + mem_len) start from an empty memory each. The result then adds the
    settings used.
    """
    from lmlab.checkpoints.io import load

    _check_args(protocol, split, stride, window, batch_size, max_tokens)
    if detokenize not in DETOKENIZERS:
        raise ConfigError(f"unknown detokenizer {detokenize!r}; expected one of {', '.join(DETOKENIZERS)}")
    model, tokenizer = load(model_dir, device=device)
    if not isinstance(model, TaskModel) and spec_of(model).kind == "seq2seq":
        from lmlab.eval.translation import evaluate_translation

        return evaluate_translation(model, tokenizer, model_dir, data, "test" if split == "all" else split,
                                    batch_size, beam_size, max_examples=max_examples)
    check_causal_lm(model, str(model_dir), "perplexity evaluation")
    if tokenizer is not None and tokenizer.kind == "midi":  # music: NLL per event, piece by piece
        from lmlab.eval.music import music_evaluate

        return music_evaluate(model, tokenizer, model_dir, data, split, window, stride, batch_size,
                              max_tokens)
    check_protocol(model, protocol, window, stride)
    settings = resolve_settings(model, eval_preset, tgt_len, mem_len, clamp_len, same_length)
    context = model.config.max_seq_len
    window = default_window(model, settings) if window is None else window
    if window > context:
        raise ConfigError(f"--window {window} is longer than the model's context (max_seq_len={context})")
    if stride is not None and stride > window:
        raise ConfigError(f"--stride {stride} is larger than the window {window}")
    if protocol == "fixed":
        if stride is not None and stride != window:
            raise ConfigError(f"--stride applies to the sliding protocol; fixed windows advance by "
                              f"the window ({window})")
        stride = None
    else:
        stride = max(1, window // 2) if stride is None else stride

    words = None
    if detokenize == "none":
        ids = _token_stream(model, tokenizer, model_dir, data, split)
    else:
        from lmlab.data.prepare import check_vocab

        if tokenizer is not None:
            check_vocab(tokenizer.vocab_size, model.config.vocab_size)
        ids, words = _detokenized_stream(tokenizer, model_dir, data, split, detokenize)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise DataError(f"{data}: the {split} split holds {ids.numel()} token(s); at least 2 are needed")
    result = evaluate_stream(model, ids, protocol, settings, window, stride, batch_size, tokenizer=tokenizer,
                             per_char=tokenizer is not None, progress=True)
    out = {"model_dir": str(Path(model_dir)), "data": str(data), "split": split, **result}
    if words is not None:
        out["detokenizer"] = detokenize
        out["words"] = words
        if max_tokens is None:
            out["word_ppl"] = math.exp(result["loss"] * result["tokens"] / words)
    return out
