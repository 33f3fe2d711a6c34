"""`lmlab convert --from-hf HF_DIR --out DIR | --to-hf DIR --out HF_DIR` as a plain function."""

from __future__ import annotations

from pathlib import Path

from lmlab.checkpoints import convert
from lmlab.checkpoints.io import load, save
from lmlab.errors import ConversionError
from lmlab.models.heads import TaskModel
from lmlab.models.registry import family_of


def convert_command(from_hf: str | None, to_hf: str | None, out: str) -> int:
    """Convert one model dir; exactly one of `from_hf` / `to_hf` is given. Returns the exit code."""
    if (from_hf is None) == (to_hf is None):
        raise ConversionError("give exactly one of --from-hf HF_DIR or --to-hf DIR")
    source = Path(from_hf if from_hf is not None else to_hf)
    # Both layouts call their config file config.json: writing into the source would clobber it.
    if Path(out).resolve() == source.resolve():
        raise ConversionError(f"--out {out} is the source dir; write the converted model elsewhere")
    if from_hf is not None:
        model, tokenizer = convert.from_hf(source)
        save(model, tokenizer, out)
        what = "lmlab"
    else:
        model, tokenizer = load(source)
        if isinstance(model, TaskModel):
            raise ConversionError(f"{source}: holds a fine-tuned task model (TaskModel, task "
                                  f"{model.spec.name!r}); only pretrained backbones convert to Hugging Face")
        convert.to_hf(model, tokenizer, out)
        what = "Hugging Face"
    n_params = sum(p.numel() for p in model.parameters())
    tok = "with" if tokenizer is not None else "without"
    print(f"wrote {what} model dir {out} ({family_of(model)}, {n_params:,} parameters, {tok} tokenizer)")
    return 0
