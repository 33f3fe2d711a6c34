"""The `lmlab` command: one subcommand -> one plain function. `lmlab CMD --help` documents each.

Errors meant for users (LmlabError) are printed as one line, without a traceback, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from lmlab.errors import ConfigError, LmlabError


def cmd_demo(args) -> int:
    from lmlab.demo import run_demo

    run_demo(out=args.out, minutes=args.minutes, device=args.device)
    return 0


# --- pretrain ---------------------------------------------------------------------------------
# name -> (type, default, help). Defaults are applied after --config, so the file can set any.
PRETRAIN_FLAGS = {
    "model": (str, "gpt2", "model family (gpt, gpt2, bert, transfo-xl)"),
    "preset": (str, "tiny", "preset of the family, e.g. tiny, gpt2-124m"),
    "data": (str, "builtin:ptb", "builtin:NAME (see `lmlab data list`), a .txt file, a folder of .txt, "
                                 "or JSONL with {\"text\": ...}"),
    "valid": (str, None, "a separate validation source (default: the corpus's own split)"),
    "out": (str, None, "run dir to write (a model dir when done); required"),
    "tokenizer": (str, None, "tokenizer kind: words, chars, byte_bpe or wordpiece (default: wordpiece "
                             "for bert, else the corpus's own)"),
    "vocab_size": (int, None, "byte_bpe / wordpiece vocabulary size (default 8192) or words cap"),
    "steps": (int, 1000, "optimizer steps"),
    "batch_size": (int, 32, "global batch: sequences per optimizer step over all processes"),
    "micro_batch_size": (int, None, "sequences per forward per process (gradient accumulation)"),
    "seq_len": (int, None, "tokens per training sequence (default: 128, or the model's context if shorter; "
                           "transfo-xl: the segment length tgt_len, default the preset's)"),
    "lr": (float, 3e-4, "peak learning rate"),
    "min_lr_ratio": (float, 0.1, "final lr as a fraction of the peak"),
    "warmup": (int, 100, "linear warmup steps"),
    "schedule": (str, "cosine", "cosine, linear or constant decay after warmup"),
    "weight_decay": (float, 0.1, "AdamW weight decay (matrices only)"),
    "grad_clip": (float, 1.0, "clip the global gradient norm (0 = off)"),
    "seed": (int, 0, "seed for weights, data order and dropout"),
    "log_every": (int, 10, "write metrics.jsonl every N steps"),
    "eval_every": (int, 200, "validation loss every N steps (0 = at the end only)"),
    "eval_batches": (int, 20, "validation batches per evaluation"),
    "save_every": (int, 500, "atomic checkpoint every N steps (0 = at the end only)"),
    "keep_checkpoints": (int, 2, "checkpoints kept (at least 2)"),
    "max_bad_steps": (int, 5, "non-finite steps in a row before the run stops"),
    "device": (str, "auto", "auto, cpu, cuda, cuda:N or mps"),
    "masking": (str, None, "bert: dynamic (a fresh mask every step) or static (default: dynamic)"),
    "dupe_factor": (int, None, "bert with --masking static: maskings made of each instance (default: 10)"),
}
PRETRAIN_SWITCHES = {"resume": "continue from the newest valid checkpoint in --out, with the settings the "
                               "run was started with (OUT/pretrain.json); flags given now win",
                     "compile": "torch.compile the model",
                     "fsdp": "under torchrun: shard weights, gradients and optimizer state with FSDP2 "
                             "instead of DDP (docs/scaling.md)",
                     "no_progress": "no progress bar"}


def add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a model from scratch",
                       description="Pretrain a model; the run dir gets metrics.jsonl, plots/, checkpoints/ "
                                   "and the final model. Works the same under torchrun (DDP).")
    for name, (kind, default, text) in PRETRAIN_FLAGS.items():
        shown = f" (default: {default})" if default is not None else ""
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text + shown)
    for name, text in PRETRAIN_SWITCHES.items():
        p.add_argument("--" + name.replace("_", "-"), action="store_true", default=None, help=text)
    p.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE",
                   help="override a model config field, e.g. --set d_model=128 (repeatable)")
    p.add_argument("--config", type=Path, help="YAML file of the same options (flags given win)")
    p.set_defaults(func=cmd_pretrain)


def parse_overrides(items: list[str] | None, where: str = "--set") -> dict:
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: expected FIELD=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def read_run_yaml(path: Path) -> dict:
    import yaml

    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    known = set(PRETRAIN_FLAGS) | set(PRETRAIN_SWITCHES) | {"set"}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "set" in values and not isinstance(values["set"], dict):
        raise ConfigError(f"{path}: 'set' must be a mapping of model config fields")
    return values


def cmd_pretrain(args) -> int:
    from lmlab.train.pretrain import pretrain, saved_settings
    from lmlab.train.recipes import option_fields

    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("func", "config", "command")}
    values = read_run_yaml(args.config) if args.config else {}
    overrides = dict(values.pop("set", {}) or {})
    overrides.update(parse_overrides(given.pop("set", None)))
    values.update(given)
    if values.get("resume") and values.get("out"):
        # The run's own settings come next: `--out DIR --resume` continues it as it was started.
        saved = saved_settings(values["out"])
        overrides = {**saved.pop("overrides", {}), **overrides}
        for name, value in saved.items():
            values.setdefault(name, value)
    for name, (_, default, _) in PRETRAIN_FLAGS.items():
        values.setdefault(name, default)
    if not values["out"]:
        raise ConfigError("pretrain needs --out DIR (or out: in --config)")
    values["progress"] = not values.pop("no_progress", False)
    recipe_options = {name: values.pop(name) for name in option_fields() if name in values}
    pretrain(overrides=overrides, recipe_options=recipe_options, **values)
    return 0


# --- finetune ---------------------------------------------------------------------------------
TASK_CHOICES = ["classify", "pair", "tag", "qa", "choice"]  # lmlab.tasks.registry.TASKS


def add_task_columns(p) -> None:
    p.add_argument("--text-column", help="JSONL field / TSV header of the text (default: text, or the GLUE "
                                         "layout the TSV header shows)")
    p.add_argument("--text-b-column", help="the second text of a pair (default: text_b or the GLUE layout)")
    p.add_argument("--label-column", help="the label (default: label, or the GLUE layout; tag: a column "
                                          "index, default -1 = last)")
    p.add_argument("--truncate", action="store_true",
                   help="cut texts longer than --max-len longest-first (default: stop with an error)")


def add_tag_qa_options(p, evaluate: bool = False) -> None:
    """Options of the tag and qa tasks (--label-column above is the label column index for tag)."""
    p.add_argument("--word-column", type=int, help="tag: column index of the word (default 0; "
                                                   "--label-column defaults to -1, the last)")
    if evaluate:
        p.add_argument("--null-threshold", type=float,
                       help="qa v2.0: answer \"\" when null score - best span score exceeds this "
                            "(default: the value fine-tuned with)")
        return
    p.add_argument("--tag-scheme", default="auto", choices=["auto", "bio", "iob1", "bioes"],
                   help="tag: rewrite chunk labels in this scheme before training (default: as written)")
    p.add_argument("--doc-stride", type=int, default=128,
                   help="qa: tokens between the starts of context windows (default 128)")
    p.add_argument("--max-query-len", type=int, default=64, help="qa: question tokens kept (default 64)")
    p.add_argument("--null-threshold", type=float, default=0.0,
                   help="qa v2.0: answer \"\" when null score - best span score exceeds this (default 0.0)")
    p.add_argument("--version-2", action="store_true", default=None,
                   help="qa: allow \"no answer\" (SQuAD v2.0; default: from the training data)")


def add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a saved model on a task (classify, pair, tag, qa, choice)",
                       description="Fine-tune DIR on task data; --out becomes a run dir and a fine-tuned "
                                   "model dir (metrics.jsonl with val_* dev metrics, checkpoints/, "
                                   "report.json). "
                                   "Decoders get GPT's <start>/<delim>/<extract> inputs and the auxiliary LM "
                                   "loss; encoders (BERT) read the pooled [CLS] state.")
    p.add_argument("model_dir", help="a pretrained lmlab model dir (with its tokenizer)")
    p.add_argument("--task", required=True, choices=TASK_CHOICES,
                   help="classify (one text), pair (two texts), tag (CoNLL token labels), qa (SQuAD "
                        "spans), choice (context + options)")
    p.add_argument("--train", required=True, help="JSONL or GLUE TSV file, or builtin:NAME (lmlab data list)")
    p.add_argument("--dev", required=True, help="the same for the dev set (metrics at each evaluation)")
    p.add_argument("--out", required=True, help="run dir to write")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training data (default 3)")
    p.add_argument("--steps", type=int, help="optimizer steps instead of --epochs")
    p.add_argument("--lr", type=float, default=6.25e-5, help="peak learning rate (default 6.25e-5, GPT's)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (default 32)")
    p.add_argument("--max-len", type=int, default=128, help="longest input in tokens, task tokens included, "
                                                            "capped at the model's context (default 128)")
    p.add_argument("--lm-coef", type=float, default=0.5, help="λ of the auxiliary LM loss, decoders only "
                                                              "(default 0.5, GPT's; 0 = off)")
    p.add_argument("--warmup-ratio", type=float, default=0.1,
                   help="linear warmup share of the steps (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout on the head input (default 0.1)")
    p.add_argument("--pair-mode", default="concat", choices=["concat", "similarity"],
                   help="pair inputs for decoders: concat, or similarity (both orders added; symmetric)")
    p.add_argument("--regression", action="store_true", help="numeric labels, MSE (default: auto-detected)")
    p.add_argument("--eval-every", type=int, help="dev evaluation every N steps (default: each epoch)")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (default: each epoch)")
    p.add_argument("--log-every", type=int, default=10, help="write metrics.jsonl every N steps")
    p.add_argument("--seed", type=int, default=0, help="seed for the head, data order and dropout")
    p.add_argument("--from-scratch", action="store_true",
                   help="same architecture with random weights (the no-pretraining baseline)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_task_columns(p)
    add_tag_qa_options(p)
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> int:
    from lmlab.tasks.finetune import finetune, summary

    report = finetune(args.model_dir, args.task, args.train, args.dev, args.out, epochs=args.epochs,
                      steps=args.steps, lr=args.lr, batch_size=args.batch_size, max_len=args.max_len,
                      lm_coef=args.lm_coef, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
                      dropout=args.dropout, pair_mode=args.pair_mode, regression=args.regression or None,
                      eval_every=args.eval_every, save_every=args.save_every, log_every=args.log_every,
                      seed=args.seed, from_scratch=args.from_scratch, truncate=args.truncate,
                      resume=args.resume, device=args.device, progress=not args.no_progress,
                      text_column=args.text_column, text_b_column=args.text_b_column,
                      label_column=args.label_column, word_column=args.word_column,
                      tag_scheme=args.tag_scheme, doc_stride=args.doc_stride,
                      max_query_len=args.max_query_len, null_threshold=args.null_threshold,
                      version_2=args.version_2)
    print(summary(report))
    return 0


# --- generate, evaluate, convert -----------------------------------------------------------------
def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample text from a model dir",
                       description="Generate a continuation of --prompt; tokens are printed as they come.")
    p.add_argument("model_dir", help="an lmlab model dir (a run dir works)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default 50)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1.0)")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k most likely (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1.0)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL penalty, 1.0 = off")
    p.add_argument("--num-return-sequences", type=int, default=1, help="continuations to sample")
    p.add_argument("--stop", action="append", help="stop once the text contains this string (repeatable)")
    p.add_argument("--no-stop-at-eos", action="store_true", help="keep going past end-of-text")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.add_argument("--draft", metavar="int8|MODEL_DIR",
                   help="speculative greedy decoding (needs --greedy): 'int8' drafts with an int8 copy of "
                        "the model (CPU), or name a smaller model dir with the same vocabulary")
    p.add_argument("--draft-tokens", type=int, default=8,
                   help="tokens the draft proposes per round (default 8)")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from lmlab.generate.cli import generate_command

    generate_command(args.model_dir, args.prompt, max_new_tokens=args.max_new_tokens,
                     do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                     num_return_sequences=args.num_return_sequences, stop=args.stop,
                     stop_at_eos=not args.no_stop_at_eos, seed=args.seed, device=args.device,
                     draft=args.draft, draft_tokens=args.draft_tokens)
    return 0


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="perplexity on a corpus, or task metrics of a fine-tuned model",
                       description="Evaluate a model dir on a corpus (perplexity) or, with --task, a "
                                   "fine-tuned model on a task file (its metrics); print JSON.")
    p.add_argument("model_dir")
    p.add_argument("--data", default="builtin:ptb", help="builtin:NAME, .txt, folder or JSONL")
    p.add_argument("--split", default="valid", help="train, valid or test (default valid)")
    p.add_argument("--protocol", default="fixed", choices=["fixed", "sliding", "memory"],
                   help="fixed: non-overlapping windows; sliding: windows advanced by --stride; memory "
                        "(transfo-xl): consecutive segments carrying the memory, every token once")
    p.add_argument("--window", type=int, help="window length (default: the model's context)")
    p.add_argument("--stride", type=int, help="sliding stride (default: window/2)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward (default 8)")
    p.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens")
    p.add_argument("--device", default="cpu")
    p.add_argument("--task", choices=TASK_CHOICES + ZEROSHOT_CHOICES,
                   help="score a fine-tuned model on --data (JSONL / GLUE TSV / builtin:NAME, whose "
                        "--split train or valid part is used); or, with a plain causal LM, a GPT-2 "
                        "zero-shot task: lambada, cloze, summarize, translate (--data FILE)")
    p.add_argument("--detokenizer", default="none", choices=["none", "ptb", "wikitext"],
                   help="perplexity: undo PTB / WikiText tokenization before a byte-level tokenizer "
                        "(GPT-2 §3.1); adds word_ppl (default none)")
    add_task_columns(p)
    add_tag_qa_options(p, evaluate=True)
    add_zeroshot_options(p)
    add_memory_options(p)
    p.set_defaults(func=cmd_evaluate)


MEMORY_OPTIONS = ("tgt_len", "mem_len", "clamp_len", "same_length", "eval_preset")


def add_memory_options(p) -> None:
    """Eval-only settings of models with memory (transfo-xl), lmlab.eval.memory."""
    from lmlab.eval.memory import EVAL_PRESETS

    p.add_argument("--tgt-len", type=int, help="transfo-xl: segment length (default: the model's)")
    p.add_argument("--mem-len", type=int, help="transfo-xl: positions of memory per layer (default: the "
                                               "model's; 0 = none)")
    p.add_argument("--clamp-len", type=int, help="transfo-xl: distances beyond it share one embedding "
                                                 "(0 = no clamp; default: the model's)")
    p.add_argument("--same-length", action=argparse.BooleanOptionalAction, default=None,
                   help="transfo-xl: every query sees exactly --mem-len keys (default: the model's)")
    p.add_argument("--eval-preset", choices=sorted(EVAL_PRESETS),
                   help="transfo-xl: the paper's evaluation settings (tgt/mem/clamp/same_length) for "
                        "that model; flags given win")


ZEROSHOT_CHOICES = ["lambada", "cloze", "summarize", "translate"]  # lmlab.eval.zeroshot.ZEROSHOT_TASKS


def add_zeroshot_options(p) -> None:
    """Options of the zero-shot tasks of `lmlab evaluate --task` (lmlab.eval.zeroshot)."""
    p.add_argument("--stop-word-filter", action="store_true",
                   help="lambada: greedy prediction may not start with a stop word (GPT-2 §3.3)")
    p.add_argument("--max-examples", type=int, help="zero-shot: score only the first N examples")
    p.add_argument("--max-new-tokens", type=int,
                   help="summarize / translate: tokens to generate (default 100 / 64)")
    p.add_argument("--top-k", type=int, default=2, help="summarize: top-k sampling (default 2, GPT-2's)")
    p.add_argument("--seed", type=int, default=0, help="summarize: sampling seed (default 0)")
    p.add_argument("--shots", type=int, default=5,
                   help="translate: example pairs in the prompt (default 5), the first ones of --data "
                        "(then not scored) or of --context-file")
    p.add_argument("--context-file", help="translate: TSV of example pairs for the prompt")
    p.add_argument("--references", help="translate: target sentences aligned with --data (one per line); "
                                        "without it --data is a TSV source<TAB>target")


def cmd_evaluate(args) -> int:
    from lmlab.eval.cli import evaluate_command

    if args.task in ZEROSHOT_CHOICES:
        from lmlab.eval.zeroshot import zeroshot_command

        result = zeroshot_command(args.model_dir, args.task, args.data, device=args.device,
                                  batch_size=args.batch_size, max_examples=args.max_examples,
                                  stop_word_filter=args.stop_word_filter, max_new_tokens=args.max_new_tokens,
                                  top_k=args.top_k, seed=args.seed, shots=args.shots,
                                  context_file=args.context_file, references=args.references)
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    if args.task:
        from lmlab.tasks.finetune import evaluate_task

        result = evaluate_task(args.model_dir, args.task, args.data, split=args.split,
                               batch_size=args.batch_size, device=args.device, truncate=args.truncate,
                               text_column=args.text_column, text_b_column=args.text_b_column,
                               label_column=args.label_column, word_column=args.word_column,
                               null_threshold=args.null_threshold)
        print(json.dumps(result, indent=2))
        return 0

    result = evaluate_command(args.model_dir, args.data, split=args.split, protocol=args.protocol,
                              stride=args.stride, window=args.window, batch_size=args.batch_size,
                              device=args.device, max_tokens=args.max_tokens, detokenize=args.detokenizer,
                              **{name: getattr(args, name) for name in MEMORY_OPTIONS})
    print(json.dumps(result, indent=2))
    return 0


def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert between Hugging Face and lmlab model dirs",
                       description="--from-hf HF_DIR --out DIR, or --to-hf DIR --out HF_DIR.")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--from-hf", metavar="HF_DIR",
                       help="a Hugging Face model dir (gpt2, openai-gpt, bert, transfo-xl) or builtin:minilm")
    group.add_argument("--to-hf", metavar="DIR", help="an lmlab model dir")
    p.add_argument("--out", required=True, help="where to write the converted model")
    p.add_argument("--overwrite", action="store_true", help="replace a model dir at --out (never a run)")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from lmlab.checkpoints.convert.cli import convert_command

    return convert_command(args.from_hf, args.to_hf, args.out, args.overwrite)


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="per-layer features of each line of a text file (BERT, GPT, GPT-2)",
                       description="Run DIR over each line of --input and write the hidden states of the "
                                   "chosen layers to a safetensors file: text.{i}.layer.{j} (T_i x D, or "
                                   "W_i x D with --pool word), or layer.{j} (N x D) with --pool mean.")
    p.add_argument("model_dir", help="an lmlab model dir (bert, gpt or gpt2)")
    p.add_argument("--input", required=True, help="UTF-8 text file, one text per line (blank lines skipped)")
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--layers", default="-1",
                   help="'all' or comma-separated indices; 0 = embeddings, -1 = last (default -1)")
    p.add_argument("--pool", default="none", choices=["none", "word", "mean"],
                   help="none: every token; word: mean of each word's sub-tokens; mean: one vector per text")
    p.add_argument("--batch-size", type=int, default=16, help="texts per forward (default 16)")
    p.add_argument("--max-len", type=int,
                   help="truncate texts to this many tokens (default: stop with an error at a text longer "
                        "than the model's context)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    # argparse reads "-1" as a value but "-1,-2" as an unknown option: widen its negative-number test.
    p._negative_number_matcher = re.compile(r"^-\d+(,\s*-?\d+)*$|^-\d*\.\d+$")
    p.set_defaults(func=cmd_embed)


def cmd_embed(args) -> int:
    from lmlab.eval.embed import embed_command

    meta = embed_command(args.model_dir, args.input, args.out, layers=args.layers, pool=args.pool,
                         batch_size=args.batch_size, max_len=args.max_len, device=args.device)
    print(f"wrote {meta['texts']} texts x {len(meta['layers'])} layers (pool {meta['pool']}) to {args.out}")
    return 0


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="per-token loss, entropy and rank of a causal LM on a text, as a PNG",
                       description="Score every token of --text with DIR and draw loss, predictive entropy "
                                   "and rank of the true token as three heat strips (Al-Rfou et al. 2018, "
                                   "Fig. 6); the numbers go to --json (default: the PNG path with .json).")
    p.add_argument("model_dir", help="an lmlab causal LM dir (gpt, gpt2, transfo-xl) with its tokenizer")
    p.add_argument("--text", required=True, help="the text to inspect")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--json", help="JSON file for the numbers (default: --out with the suffix .json)")
    p.add_argument("--bits", action="store_true", help="loss and entropy in bits (default nats)")
    p.add_argument("--stride", type=int, help="sliding-window stride for texts longer than the context "
                                              "(default: half the context)")
    p.add_argument("--per-strip", type=int, default=40, help="tokens per heat strip (default 40)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> int:
    from lmlab.eval.inspect import inspect_command

    result = inspect_command(args.model_dir, args.text, args.out, json_path=args.json,
                             unit="bits" if args.bits else "nats", stride=args.stride,
                             per_strip=args.per_strip, device=args.device)
    print(f"{len(result['tokens'])} tokens, mean loss {result['mean_loss']:.4f} {result['unit']}; "
          f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lmlab import __version__
    from lmlab.data.cli import add_arguments as add_data

    parser = argparse.ArgumentParser(prog="lmlab", description="Pretrain, fine-tune, evaluate and sample "
                                     "the 2017-2019 lineage of language models.")
    parser.add_argument("--version", action="version", version=f"lmlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser("demo", help="the main job: pretrain a small GPT-2 on PTB, evaluate, sample",
                          description="Pretrain a small GPT-2 on builtin:ptb for a few minutes, report "
                                      "validation perplexity next to a unigram baseline, sample text.")
    demo.add_argument("--out", default="runs/demo",
                      help="run dir (default runs/demo); an earlier demo there is replaced")
    demo.add_argument("--minutes", type=float, default=5.0, help="training time budget (default 5)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    demo.set_defaults(func=cmd_demo)
    add_data(sub)
    add_pretrain(sub)
    add_finetune(sub)
    add_generate(sub)
    add_evaluate(sub)
    add_convert(sub)
    add_embed(sub)
    add_inspect(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LmlabError as e:
        print(f"lmlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
