"""`lmlab convert --from-hf HF_DIR | --from-elmo OPTIONS WEIGHTS | --from-fastai PTH VOCAB --out DIR |
--to-hf DIR --out HF_DIR | --to-fastai DIR --out OUT`
as a plain function.

--out is checked before any work, as `pretrain` checks its run dir: a dir that already holds a
model (any of MODEL_FILES) is refused unless `overwrite`, and then replaced as a whole once the new
model is written (into a temp folder beside it): no file of the old model can outlive it next to
the new one, and a failed conversion leaves the old model as it was. A training run (RUN_FILES) is
never replaced. A dir holding no model is written into, its other files left alone.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmlab.checkpoints import convert
from lmlab.checkpoints.atomic import MANIFEST, commit_dir
from lmlab.checkpoints.io import load, save
from lmlab.errors import ConversionError
from lmlab.models.heads import TaskModel
from lmlab.models.registry import family_of
from lmlab.options import option
from lmlab.paths import DirLock, check_outputs

# What a training run leaves (train/state.py RUN_OUTPUTS less the final model, a model file here).
RUN_FILES = ("checkpoints", "metrics.jsonl")
# Files that make a dir a model dir, lmlab's or Hugging Face's: what a converted model would replace.
MODEL_FILES = (MANIFEST, "config.json", "model.safetensors", "model.safetensors.index.json",
               "pytorch_model.bin", "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json",
               "vocab.txt", "vocab.json", "merges.txt")


@dataclass(frozen=True)
class ConvertOptions:
    """`lmlab convert`: a Hugging Face model dir to an lmlab one (--from-hf), or back (--to-hf); the
    released ELMo weights (--from-elmo OPTIONS WEIGHTS), CoVe MT-LSTM (--from-cove PTH) or a fastai
    AWD-LSTM LM (--from-fastai PTH VOCAB) to an lmlab model dir, or an lmlab ulmfit model to fastai's
    files (--to-fastai)."""

    out: str = option(help="where to write the converted model")
    from_hf: str | None = option(None, "a Hugging Face model dir (gpt2, openai-gpt, bert, transfo-xl) or "
                                       "builtin:minilm", group="source", metavar="HF_DIR")
    to_hf: str | None = option(None, "an lmlab model dir", group="source", metavar="DIR")
    from_elmo: tuple[str, ...] | None = option(None, "bilm-tf's options.json and weights .hdf5 (two files)",
                                               group="source", nargs=2, metavar=("OPTIONS", "WEIGHTS"))
    from_cove: str | None = option(None, "the released CoVe MT-LSTM (wmtlstm-*.pth: a 2-layer bidirectional "
                                         "LSTM's state dict); an encoder-only model", group="source",
                                   metavar="PTH")
    from_fastai: tuple[str, ...] | None = option(None, "a fastai AWD-LSTM LM state dict (.pth, e.g. the "
                                                       "published WT-103 model) and its vocabulary (itos "
                                                       "pickle or one token per line)", group="source",
                                                 metavar=("PTH", "VOCAB"), nargs=2)
    to_fastai: str | None = option(None, "an lmlab ulmfit model dir: writes fastai's lm.pth + itos.pkl",
                                   group="source", metavar="DIR")
    overwrite: bool = option(False, "replace a model dir at --out (never a run)")


def check_out(out: Path, overwrite: bool) -> bool:
    """Whether --out holds a model to replace (only with `overwrite`); ConversionError if it may not be
    written at all."""
    if not out.is_dir():
        return False  # nothing there yet, or a file: the writers refuse that with their own message
    run = [name for name in RUN_FILES if os.path.lexists(out / name)]
    if run:
        raise ConversionError(f"--out {out} holds a training run ({run[0]}); convert into another dir "
                              f"(--overwrite never replaces a run)")
    model = [name for name in MODEL_FILES if os.path.lexists(out / name)]
    if not model:
        return False
    if not overwrite:
        raise ConversionError(f"--out {out} already holds a model ({model[0]}); pass --overwrite to "
                              f"replace it, or choose another --out")
    # Replacing deletes the dir: only one that is nothing but a model's files, never a folder tree.
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.is_symlink())
    if folders:
        raise ConversionError(f"--out {out} holds the folder {folders[0]}, so it is more than a model dir; "
                              f"--overwrite replaces only a plain model dir (remove it yourself)")
    return True


def convert_command(from_hf: str | None, to_hf: str | None, out: str, overwrite: bool = False,
                    from_elmo: Sequence[str] | None = None, from_fastai: Sequence[str] | None = None,
                    to_fastai: str | None = None, from_cove: str | None = None) -> int:
    """Convert one model; exactly one of `from_hf` / `to_hf` / `to_fastai` (dirs), `from_elmo` (bilm-tf's
    options.json and weights HDF5, in that order), `from_cove` (the MT-LSTM .pth) or `from_fastai`
    (fastai's weights .pth and vocabulary) is given. Returns the exit code."""
    # family -> its original release's files
    originals = {"elmo": from_elmo, "cove": None if from_cove is None else [from_cove], "ulmfit": from_fastai}
    if sum(x is not None for x in (from_hf, to_hf, from_elmo, from_cove, from_fastai, to_fastai)) != 1:
        raise ConversionError("give exactly one of --from-hf HF_DIR, --from-elmo OPTIONS WEIGHTS, "
                              "--from-cove PTH, --from-fastai PTH VOCAB, --to-hf DIR or --to-fastai DIR")
    for flag, files, names in (("--from-elmo", from_elmo, "OPTIONS (options.json) and WEIGHTS (.hdf5)"),
                               ("--from-fastai", from_fastai, "PTH and VOCAB")):
        if files is not None and len(files) != 2:
            raise ConversionError(f"{flag} takes two files, {names}, got {len(files)}")
    if to_fastai is not None:
        with DirLock(out, "convert"):
            return _to_fastai(Path(to_fastai), Path(out))
    family = next((name for name, files in originals.items() if files is not None), None)
    sources = [Path(p) for p in originals[family]] if family else [Path(from_hf or to_hf)]
    # Both HF layouts call their config file config.json: writing into the source would clobber it.
    if any(Path(out).resolve() == source.resolve() for source in sources):
        raise ConversionError(f"--out {out} is the source dir (or file); write the converted model elsewhere")
    if os.path.lexists(out) and not Path(out).is_dir():
        raise ConversionError(f"{out}: exists and is not a directory; expected a dir to write the model into")
    with DirLock(out, "convert"):  # one process per --out; checked and written under the lock
        return _convert_into(from_hf, family, sources, Path(out), overwrite)


def _convert_into(from_hf: str | None, family: str | None, sources: list[Path], out: Path,
                  overwrite: bool) -> int:
    """family: the family whose original release `sources` are (None: a Hugging Face dir or an lmlab dir)."""
    check_outputs(out, MODEL_FILES)  # the files written there: regular files or nothing yet
    final = out.resolve() if check_out(out, overwrite) else None
    target = final.with_name(f"{final.name}.tmp-{os.getpid()}") if final else Path(out)
    try:
        if family is not None:
            model, tokenizer = convert.from_original(family, *sources)
            save(model, tokenizer, target)
            what = "lmlab"
        else:
            model, tokenizer, what = _convert(from_hf, sources[0], target)
        if final:
            commit_dir(target, final)  # the old model goes only now, once the new one is complete
    finally:
        if final:
            shutil.rmtree(target, ignore_errors=True)
    n_params = sum(p.numel() for p in model.parameters())
    tok = "with" if tokenizer is not None else "without"
    print(f"wrote {what} model dir {out} ({family_of(model)}, {n_params:,} parameters, {tok} tokenizer)")
    return 0


def _convert(from_hf: str | None, source: Path, out: Path):
    if from_hf is not None:
        model, tokenizer = convert.from_hf(source)
        save(model, tokenizer, out)
        return model, tokenizer, "lmlab"
    model, tokenizer = load(source)
    if isinstance(model, TaskModel):
        raise ConversionError(f"{source}: holds a fine-tuned task model (TaskModel, task "
                              f"{model.spec.name!r}); only pretrained backbones convert to Hugging Face")
    convert.to_hf(model, tokenizer, out)
    return model, tokenizer, "Hugging Face"


def _to_fastai(source: Path, out: Path) -> int:
    model, tokenizer = load(source)
    if out.resolve() == source.resolve():
        raise ConversionError(f"--out {out} is the source dir; write the fastai files elsewhere")
    convert.to_original(model, tokenizer, out)
    print(f"wrote fastai files {out / 'lm.pth'} and {out / 'itos.pkl'} ({family_of(model)})")
    return 0
