"""The `lmlab` command: one subcommand -> one plain function. `lmlab CMD --help` documents each.

Every command's options are dataclass fields (lmlab.options), declared beside the function they
configure (TrainConfig, PretrainOptions, FinetuneOptions, SampleOptions, EvalOptions, ...). This
file builds the parsers from them: one flag per field, the same names as keys of the YAML file
that `--config FILE.yaml` reads (every command has it; flags given win over the file, which wins
over the defaults), and choices that come from the registries (families, tasks, tokenizers).
Errors meant for users (LmlabError) are printed as one line, without a traceback, exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path

from lmlab.errors import ConfigError, LmlabError, OutputError, Stopped

# ---------------------------------------------------------------- parsers from option dataclasses


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name.replace("_", "-")


def _value_type(hint):
    """int for `int`, `int | None` and `tuple[int, ...]`."""
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return _value_type(args[0]) if args else hint


def _is_switch(f: dataclasses.Field, hint) -> bool:
    return _value_type(hint) is bool


def _help(f: dataclasses.Field, hint, text: str | None) -> str:
    """The field's help, with its default unless it goes without saying (none, off, or the text says)."""
    if text is not None:
        return text
    shown = not (f.default is MISSING or f.default is None or f.default == () or _is_switch(f, hint))
    return f.metadata.get("help", "") + (f" (default: {f.default})" if shown else "")


def add_options(parser: argparse.ArgumentParser, classes, choices: dict | None = None,
                helps: dict | None = None) -> None:
    """One argument per field of `classes`; nothing is defaulted here (a flag not given is absent
    from the namespace), so --config values and the dataclass defaults can fill in after."""
    choices, helps, groups = choices or {}, helps or {}, {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta, hint = f.metadata, hints[f.name]
            text = _help(f, hint, helps.get(f.name))
            if meta.get("positional"):
                parser.add_argument(f.name, help=text)
                continue
            target = parser
            if meta.get("group"):
                if meta["group"] not in groups:
                    groups[meta["group"]] = parser.add_mutually_exclusive_group()
                target = groups[meta["group"]]
            args = dict(dest=f.name, default=argparse.SUPPRESS, help=text)
            if _is_switch(f, hint):
                action = (argparse.BooleanOptionalAction if f.default is None
                          else "store_false" if f.default else "store_true")
                target.add_argument("--" + flag_name(f), action=action, **args)
            elif meta.get("repeat"):
                target.add_argument("--" + flag_name(f), action="append", metavar=meta.get("metavar"), **args)
            else:  # one value, or `nargs` values at once
                target.add_argument("--" + flag_name(f), type=_value_type(hint), metavar=meta.get("metavar"),
                                    nargs=meta.get("nargs"), choices=choices.get(f.name, meta.get("choices")),
                                    **args)


def all_fields(classes) -> list[dataclasses.Field]:
    return [f for cls in classes for f in dataclasses.fields(cls)]


def read_config(path: Path, classes) -> dict:
    """The --config YAML file as field values; keys are the flag names (`batch_size`, `set`,
    `no_progress`), checked against `classes`. Its values are type-checked when the options are built."""
    import yaml

    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot read YAML ({first})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    by_key = {flag_name(f).replace("-", "_"): f for f in all_fields(classes)
              if not f.metadata.get("positional")}
    out = {}
    for key, value in values.items():
        f = by_key.get(str(key).replace("-", "_"))
        if f is None:
            raise ConfigError(f"{path}: unknown key {key!r}; known: {', '.join(sorted(by_key))}")
        negated = flag_name(f).startswith("no-") and f.default is True
        out[f.name] = (not value) if negated and isinstance(value, bool) else value
    return out


def given_values(args: argparse.Namespace, classes) -> dict:
    """Values of the flags given on the command line, then the --config file under them."""
    fields = {f.name: (f, hint) for cls in classes for f in dataclasses.fields(cls)
              for hint in [typing.get_type_hints(cls)[f.name]]}
    given = {k: _from_flags(*fields[k], v) for k, v in vars(args).items() if k in fields}
    values = read_config(args.config, classes) if args.config else {}
    values.update(given)
    return values


def build_options(cls, values: dict, parser: argparse.ArgumentParser, where: str = "options"):
    """`cls` from the values it owns (type-checked: a --config file's values are not typed by argparse)."""
    from lmlab.models.config import config_from_dict

    fields = dataclasses.fields(cls)
    mine = {f.name: values[f.name] for f in fields if f.name in values}
    missing = ["--" + flag_name(f) for f in fields if f.name not in mine and f.default is MISSING]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    for group in {f.metadata.get("group") for f in fields} - {None}:
        members = [f for f in fields if f.metadata.get("group") == group]
        if sum(mine.get(f.name) is not None for f in members) != 1:
            parser.error("give exactly one of " + " or ".join("--" + flag_name(f) for f in members))
    return config_from_dict(cls, mine, where=where)


def _from_flags(f: dataclasses.Field, hint, value):
    """A repeated FIELD=VALUE flag (`--set d_model=128`) as the dict its field holds."""
    if _value_type(hint) is dict and isinstance(value, list):
        return parse_overrides(value, "--" + flag_name(f))
    return value


def parse_overrides(items: list[str], where: str = "--set") -> dict:
    out = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: expected FIELD=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON (or beyond its limits): the text itself
            out[key.strip()] = raw
    return out


# ---------------------------------------------------------------- the commands


def cmd_demo(o) -> int:
    from lmlab.demo import run_demo

    run_demo(out=o.out, minutes=o.minutes, device=o.device)
    return 0


def cmd_pretrain(values: dict, parser: argparse.ArgumentParser, where: str) -> int:
    from lmlab.train.config import TrainConfig
    from lmlab.train.pretrain import PretrainOptions, pretrain, saved_settings
    from lmlab.train.recipes import option_fields

    if values.get("resume") and values.get("out"):
        # The run's own settings come next: `--out DIR --resume` continues it as it was started.
        saved = saved_settings(values["out"])
        values["overrides"] = {**saved.pop("overrides", {}), **(values.get("overrides") or {})}
        for name, value in saved.items():
            values.setdefault(name, value)
    if not values.get("out"):
        raise ConfigError("pretrain needs --out DIR (or out: in --config)")
    run = build_options(PretrainOptions, values, parser, where)
    train = dataclasses.asdict(build_options(TrainConfig, values, parser, where))
    train = {k: v for k, v in train.items() if k in values}  # the rest: pretrain's defaults
    recipe = {name: values[name] for name in option_fields() if name in values}
    pretrain(**{**dataclasses.asdict(run), "overrides": run.overrides or {}}, recipe_options=recipe, **train)
    return 0


def cmd_finetune(o) -> int:
    from lmlab.tasks.finetune import finetune, summary

    print(summary(finetune(**dataclasses.asdict(o))))
    return 0


def cmd_generate(o) -> int:
    from lmlab.generate.cli import generate_command

    generate_command(o.model_dir, o.prompt, max_new_tokens=o.max_new_tokens, do_sample=not o.greedy,
                     temperature=o.temperature, top_k=o.top_k, top_p=o.top_p,
                     repetition_penalty=o.repetition_penalty, num_return_sequences=o.num_return_sequences,
                     stop=list(o.stop) or None, stop_at_eos=o.stop_at_eos, seed=o.seed, device=o.device,
                     draft=o.draft, draft_tokens=o.draft_tokens, beam_size=o.beam_size,
                     length_penalty=o.length_penalty, replace_unk=o.replace_unk, out=sys.stdout,
                     music=dict(prompt_midi=o.prompt_midi, composer=o.composer,
                                instruments=list(o.instrument), out=o.out, soundfont=o.soundfont, wav=o.wav))
    return 0


def cmd_evaluate(o) -> int:
    from lmlab.checkpoints.atomic import finite_json
    from lmlab.eval.zeroshot import ZEROSHOT_TASKS

    if o.task in ZEROSHOT_TASKS:
        from lmlab.eval.zeroshot import zeroshot_command

        result = zeroshot_command(o.model_dir, o.task, o.data, device=o.device, batch_size=o.batch_size,
                                  max_examples=o.max_examples, stop_word_filter=o.stop_word_filter,
                                  max_new_tokens=o.max_new_tokens, top_k=o.top_k, seed=o.seed,
                                  shots=o.shots, context_file=o.context_file, references=o.references)
    elif o.task:
        from lmlab.tasks.finetune import evaluate_task

        result = evaluate_task(o.model_dir, o.task, o.data, split=o.split, batch_size=o.batch_size,
                               device=o.device, truncate=o.truncate, text_column=o.text_column,
                               text_b_column=o.text_b_column, label_column=o.label_column,
                               word_column=o.word_column, null_threshold=o.null_threshold)
    else:
        from lmlab.eval.cli import evaluate_command

        result = evaluate_command(o.model_dir, o.data, split=o.split, protocol=o.protocol, stride=o.stride,
                                  window=o.window, batch_size=o.batch_size, device=o.device,
                                  max_tokens=o.max_tokens, detokenize=o.detokenizer, tgt_len=o.tgt_len,
                                  mem_len=o.mem_len, clamp_len=o.clamp_len, same_length=o.same_length,
                                  eval_preset=o.eval_preset, beam_size=o.beam_size,
                                  max_examples=o.max_examples)
    print(finite_json(result, indent=2, ensure_ascii=False))  # NaN/inf: null + "non_finite"
    return 0


def cmd_convert(o) -> int:
    from lmlab.checkpoints.convert.cli import convert_command

    return convert_command(o.from_hf, o.to_hf, o.out, o.overwrite, from_elmo=o.from_elmo,
                           from_fastai=o.from_fastai, to_fastai=o.to_fastai, from_cove=o.from_cove)


def cmd_embed(o) -> int:
    from lmlab.eval.embed import embed_command

    meta = embed_command(o.model_dir, o.input, o.out, layers=o.layers, pool=o.pool, batch_size=o.batch_size,
                         max_len=o.max_len, device=o.device, stateful=o.stateful, word_vectors=o.word_vectors)
    print(f"wrote {meta['texts']} texts x {len(meta['layers'])} layers (pool {meta['pool']}) to {o.out}")
    return 0


def cmd_inspect(o) -> int:
    from lmlab.eval.inspect import inspect_command

    result = inspect_command(o.model_dir, o.text, o.out, json_path=o.json, unit="bits" if o.bits else "nats",
                             stride=o.stride, per_strip=o.per_strip, device=o.device, seed_text=o.seed_text)
    print(f"{len(result['tokens'])} tokens, mean loss {result['mean_loss']:.4f} {result['unit']}; "
          f"wrote {o.out}")
    return 0


def cmd_serve(o) -> int:
    from lmlab.serve.server import serve_command

    return serve_command(o)


def cmd_zoo(o) -> int:
    if not o.run:
        from lmlab.zoo.table import zoo_table

        print(zoo_table(o.format))
        return 0
    from lmlab.zoo.report import markdown
    from lmlab.zoo.run import ZooRun, run_zoo, runnable

    results = run_zoo(ZooRun(Path(o.out), o.budget_minutes, runnable(tuple(o.families)), device=o.device,
                             lr=o.lr, batch_size=o.batch_size, eval_tokens=o.eval_tokens, seed=o.seed,
                             progress=o.progress))
    print(markdown(results) + f"\nwrote {o.out}")
    return 0


@dataclass(frozen=True)
class Command:
    help: str
    classes: Callable[[], tuple]  # the option dataclasses (imported when the parser is built)
    run: Callable
    choices: Callable[[], dict] = dict  # field -> allowed values, from the registries
    helps: Callable[[], dict] = dict  # field -> help text that differs from the field's own
    whole_values: bool = False  # run(values, parser, where), not run(options): options of several classes


def _pretrain_classes():
    from lmlab.train.config import TrainConfig
    from lmlab.train.pretrain import PretrainOptions
    from lmlab.train.recipes import RECIPES

    recipe_options = tuple(dict.fromkeys(r.options for r in RECIPES.values()))
    return (PretrainOptions, TrainConfig, *recipe_options)


def _families() -> dict:
    from lmlab.data.prepare import MIN_VOCAB  # the kinds a run can train
    from lmlab.models.registry import FAMILIES

    return {"model": list(FAMILIES), "tokenizer": list(MIN_VOCAB)}


def _tasks() -> dict:
    from lmlab.tasks.registry import TASKS
    from lmlab.train.recipes import FINETUNE_RECIPES

    return {"task": list(TASKS), "recipe": list(FINETUNE_RECIPES)}


def _evaluate_tasks() -> dict:
    from lmlab.eval.zeroshot import ZEROSHOT_TASKS
    from lmlab.tasks.registry import TASKS

    return {"task": [*TASKS, *ZEROSHOT_TASKS]}


def _zoo_families() -> dict:
    from lmlab.models.registry import FAMILIES

    return {"families": list(FAMILIES)}


def _options(module: str, name: str) -> Callable[[], tuple]:
    def classes():
        import importlib

        return (getattr(importlib.import_module(module), name),)

    return classes


SEQ_LEN_HELP = ("tokens per training sequence (default: the family's recipe: 128, or the model's context if "
                "shorter; transfo-xl: the segment length tgt_len)")
COMMANDS = {
    "demo": Command("the main job: pretrain a small GPT-2 on PTB, evaluate, sample",
                    _options("lmlab.demo", "DemoOptions"), cmd_demo),
    "pretrain": Command("pretrain a model from scratch", _pretrain_classes, cmd_pretrain, _families,
                        lambda: {"seq_len": SEQ_LEN_HELP}, whole_values=True),
    "finetune": Command("fine-tune a saved model on a task (classify, pair, tag, qa, choice)",
                        _options("lmlab.tasks.finetune", "FinetuneOptions"), cmd_finetune, _tasks),
    "generate": Command("sample text (or music, to MIDI) from a model dir",
                        _options("lmlab.generate.cli", "SampleOptions"), cmd_generate),
    "evaluate": Command("perplexity on a corpus, or task metrics of a fine-tuned model",
                        _options("lmlab.eval.cli", "EvalOptions"), cmd_evaluate, _evaluate_tasks),
    "convert": Command("convert between Hugging Face and lmlab model dirs",
                       _options("lmlab.checkpoints.convert.cli", "ConvertOptions"), cmd_convert),
    "embed": Command("per-layer features of each line of a text file",
                     _options("lmlab.eval.embed", "EmbedOptions"), cmd_embed),
    "inspect": Command("per-token loss, entropy and rank of a causal LM on a text, as a PNG",
                       _options("lmlab.eval.inspect", "InspectOptions"), cmd_inspect),
    "serve": Command("an OpenAI-compatible HTTP API and a web page for a model dir",
                     _options("lmlab.serve.server", "ServeOptions"), cmd_serve),
    "zoo": Command("the lineage's summary table, from the family registry; --run: measured",
                   _options("lmlab.zoo.table", "ZooOptions"), cmd_zoo, _zoo_families),
}


def build_parser() -> argparse.ArgumentParser:
    from lmlab.data.cli import add_arguments as add_data
    from lmlab.version import __version__

    parser = argparse.ArgumentParser(prog="lmlab", description="Pretrain, fine-tune, evaluate and sample "
                                     "the 2017-2019 lineage of language models.")
    parser.add_argument("--version", action="version", version=f"lmlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, command in COMMANDS.items():
        classes = command.classes()
        doc = " ".join((classes[0].__doc__ or command.help).split())
        p = sub.add_parser(name, help=command.help, description=doc)
        add_options(p, classes, command.choices(), command.helps())
        p.add_argument("--config", type=Path, metavar="FILE.yaml",
                       help="YAML file of the same options, keys named like the flags (flags given win)")
        p.set_defaults(command_spec=command, option_classes=classes, subparser=p)
        if name == "embed":  # argparse reads "-1" as a value but "-1,-2" as an option: widen its test
            p._negative_number_matcher = re.compile(r"^-\d+(,\s*-?\d+)*$|^-\d*\.\d+$")
        if name == "demo":
            add_data(sub)  # `lmlab data list|fetch`, listed after the demo
    return parser


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "command_spec", None)
    if command is None:  # `lmlab data ...`: its own small functions
        return args.func(args)
    values = given_values(args, args.option_classes)
    where = str(args.config) if args.config else f"lmlab {args.command} options"
    if command.whole_values:
        return command.run(values, args.subparser, where)
    return command.run(build_options(args.option_classes[0], values, args.subparser, where))


class GuardedStdout:
    """sys.stdout while a command runs: a write that fails for another reason than a closed pipe (a
    full disk: `lmlab evaluate ... > /dev/full`) is one OutputError line, not a traceback."""

    def __init__(self, stream):
        self.stream, self.failed = stream, False

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as e:
            raise self._failure(e) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as e:
            raise self._failure(e) from None

    def _failure(self, e: OSError) -> OSError | OutputError:
        self.failed = True
        if isinstance(e, BrokenPipeError):
            return e
        return OutputError(f"standard output: cannot write ({e.strerror or e})")

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _drop_stdout() -> None:
    """Point file descriptor 1 at /dev/null: what is still buffered for a closed pipe or a full disk
    is then dropped at exit, instead of failing again there with "Exception ignored ..."."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def main(argv: list[str] | None = None) -> int:
    """The command line's boundary: every failure a user can cause ends here as one line and a
    non-zero exit (LmlabError: 2; stopped by a signal after a checkpoint: 128 + its number; Ctrl-C
    elsewhere: 130), and a closed pipe (`lmlab generate ... | head`) exits quietly with 141, as a
    process killed by SIGPIPE would."""
    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    sys.stdout = guarded = GuardedStdout(stdout)
    try:
        code = run(args)
        sys.stdout.flush()  # a full disk or a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        _drop_stdout()
        return 141
    except Stopped as e:
        print(f"lmlab {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except LmlabError as e:
        if guarded.failed:
            _drop_stdout()
        print(f"lmlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the last net: the causes are handled where they are (lmlab.paths, writers)
        where = f"{e.filename}: " if e.filename else ""
        print(f"lmlab {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        sys.stdout = stdout
