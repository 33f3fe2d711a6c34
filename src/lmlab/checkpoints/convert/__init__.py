"""Hugging Face model dirs <-> lmlab models, and original releases -> lmlab models.

Reading and writing the files (config.json, safetensors or `.bin` weights, tokenizer files) happens
here; what the tensors are called and how the config fields map lives in one module per layout
(`hf_gpt`, ...), chosen through the literal dicts below: config.json's `model_type` for `from_hf`,
the model's lmlab family for `to_hf`. A layout module never touches files, so adding a layout is
adding two functions and two dict entries.

Safe loading: `torch.load(weights_only=True)` is used here, and only here, for foreign
`pytorch_model.bin` files and the released CoVe MT-LSTM (`cove_mtlstm`); everything lmlab writes is
safetensors + JSON. Every file of the dir is
read through `lmlab.checkpoints.files` (regular files inside the dir, JSON and vocabularies capped);
the tokenizer files, which the tokenizers read by path, are checked before any of them is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmlab.checkpoints.atomic import temp_output, write_bytes_atomic
from lmlab.checkpoints.builtin import builtin_weights_dir, is_builtin
from lmlab.checkpoints.convert import bilm_tf, cove_mtlstm, fastai_awd, hf_bert, hf_gpt, hf_transfo_xl
from lmlab.checkpoints.convert.common import tensor_dict, torch_file
from lmlab.checkpoints.files import JSON_CAP, check_tokenizer_files, checked_path, read_json
from lmlab.checkpoints.io import check_tokenizer_fits
from lmlab.checkpoints.sizes import check_finite, header_state
from lmlab.errors import ConversionError
from lmlab.models.heads import TaskModel
from lmlab.models.registry import family_of

# config.json model_type -> layout reader: (hf_dir, config, read_weights) -> (model, tokenizer|None);
# read_weights(meta) as common.build_loaded takes it.
FROM_HF = {
    "gpt2": hf_gpt.gpt2_from_hf,
    "openai-gpt": hf_gpt.openai_gpt_from_hf,
    "bert": hf_bert.bert_from_hf,
    "transfo-xl": hf_transfo_xl.transfo_xl_from_hf,
}
# lmlab family -> layout writer: (model, tokenizer) -> (HF config dict, HF-named state dict).
TO_HF = {
    "gpt2": hf_gpt.gpt2_to_hf,
    "gpt": hf_gpt.openai_gpt_to_hf,
    "bert": hf_bert.bert_to_hf,
    "transfo-xl": hf_transfo_xl.transfo_xl_to_hf,
}
# lmlab tokenizer kind -> writer of the files transformers reads for it: (tokenizer, dir, config).
TOKENIZER_TO_HF = {
    "byte_bpe": hf_gpt.write_byte_bpe_tokenizer,
    "wordpiece": hf_bert.write_wordpiece_tokenizer,
}

# lmlab family -> (reader of its original release's files: (*paths) -> (model, tokenizer), the files).
FROM_ORIGINAL = {
    "elmo": (bilm_tf.elmo_from_bilm_tf, ("options_json", "weights_hdf5")),  # allenai/bilm-tf
    "cove": (cove_mtlstm.cove_from_mtlstm, ("mtlstm_pth",)),  # salesforce/cove (encoder only)
    "ulmfit": (fastai_awd.ulmfit_from_fastai, ("weights_pth", "vocab")),  # fastai AWD-LSTM LM
}
# lmlab family -> writer of its original release's files: (model, tokenizer, out_dir) -> out_dir.
TO_ORIGINAL = {
    "ulmfit": fastai_awd.ulmfit_to_fastai,
}

CONFIG = "config.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def from_hf(hf_dir: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer) from a Hugging Face model dir, or `builtin:NAME` weights from a package;
    tokenizer is None when the dir has none."""
    directory = builtin_weights_dir(hf_dir) if is_builtin(hf_dir) else Path(hf_dir)
    config = read_hf_config(directory)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in FROM_HF:
        raise ConversionError(f"{directory / CONFIG}: model_type {model_type!r} is not supported; "
                              f"expected one of {', '.join(FROM_HF)}")
    check_tokenizer_files(directory, ConversionError)
    # Weights are read only once the config is known to be convertible (they can be gigabytes).
    model, tokenizer = FROM_HF[model_type](directory, config, HFWeights(directory))
    check_tokenizer_fits(model, tokenizer, directory)
    return model.to(device).eval(), tokenizer


def from_original(family: str, *paths: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer) from a family's original released files, e.g.
    `from_original("elmo", options_json, weights_hdf5)` (bilm-tf's options.json and weights HDF5),
    `from_original("cove", mtlstm_pth)` (the MT-LSTM's state dict; tokenizer None) or
    `from_original("ulmfit", weights_pth, vocab)` (fastai's AWD-LSTM LM state dict and its itos)."""
    if not isinstance(family, str) or family not in FROM_ORIGINAL:
        raise ConversionError(f"no original release reader for {family!r}; expected one of "
                              f"{', '.join(FROM_ORIGINAL)}")
    reader, files = FROM_ORIGINAL[family]
    if len(paths) != len(files):
        raise ConversionError(f"from_original({family!r}, ...) takes {len(files)} files "
                              f"({', '.join(files)}), "
                              f"got {len(paths)}")
    model, tokenizer = reader(*paths)
    return model.to(device).eval(), tokenizer


def to_original(model, tokenizer, out_dir: str | Path) -> Path:
    """Write `model` (and `tokenizer`) in its family's original release layout into `out_dir`
    (ulmfit: fastai's lm.pth + itos.pkl)."""
    family = family_of(model.backbone if isinstance(model, TaskModel) else model)
    if isinstance(model, TaskModel) or family not in TO_ORIGINAL:
        raise ConversionError(f"no original release layout for {family!r}"
                              + (" task models" if isinstance(model, TaskModel) else "")
                              + f"; expected a language model of {', '.join(TO_ORIGINAL)}")
    return TO_ORIGINAL[family](model, tokenizer, out_dir)


def to_hf(model, tokenizer, hf_dir: str | Path) -> Path:
    """Write `model` (and `tokenizer`, if given) as a Hugging Face model dir of its family's layout."""
    if isinstance(model, TaskModel):
        raise ConversionError(f"a fine-tuned task model (TaskModel, task {model.spec.name!r}) has no "
                              f"Hugging Face layout here; only pretrained backbones convert")
    family = family_of(model)
    if family not in TO_HF:
        raise ConversionError(f"family {family!r} has no Hugging Face layout; "
                              f"expected one of {', '.join(TO_HF)}")
    kind = getattr(tokenizer, "kind", None)
    if tokenizer is not None and kind not in TOKENIZER_TO_HF:
        raise ConversionError(f"tokenizer kind {kind!r} has no Hugging Face layout; expected one of "
                              f"{', '.join(TOKENIZER_TO_HF)}, or pass tokenizer=None")
    config, state = TO_HF[family](model, tokenizer)
    out = Path(hf_dir)
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{out}: exists and is not a directory; expected a dir to write the "
                              f"Hugging Face model into")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{SAFETENSORS}.tmp-{os.getpid()}"
    with temp_output(tmp, str(out / SAFETENSORS)):  # a full disk: one line, no temp file left
        save_file(state, str(tmp), metadata={"format": "pt"})  # "pt": what transformers checks for
        os.replace(tmp, out / SAFETENSORS)
    if tokenizer is not None:
        TOKENIZER_TO_HF[kind](tokenizer, out, config)
    write_bytes_atomic(out / CONFIG, json.dumps(config, indent=2, sort_keys=True).encode())
    return out


def read_hf_config(directory: Path) -> dict:
    if not directory.is_dir():
        raise ConversionError(f"{directory}: not a directory; expected a Hugging Face model dir")
    path = directory / CONFIG
    try:
        config = read_json(path, JSON_CAP, ConversionError)
    except FileNotFoundError:
        raise ConversionError(f"{directory}: no {CONFIG}; not a Hugging Face model dir") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return config


class HFWeights:
    """The layouts' `read_weights(meta)`: for meta=True the header shapes of safetensors files (as
    meta tensors, no data read), else the tensors, each file read once and checked to be finite."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.files = None
        self.state = None

    def __call__(self, meta: bool = False) -> dict[str, torch.Tensor]:
        if self.files is None:
            self.files = weight_files(self.directory)
        if meta and self.state is None and all(p.suffix == ".safetensors" for p in self.files):
            shapes = {}
            for path in self.files:
                shapes.update(header_state(path, ConversionError))
            return shapes
        if self.state is None:  # .bin files have no header: their tensors serve both passes
            self.state = _read_files(self.files)
        return self.state


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the dir: one safetensors/.bin file or an index of shards, safetensors first."""
    return _read_files(weight_files(directory))


def weight_files(directory: Path) -> list[Path]:
    """The weight files of the dir: one safetensors/.bin file, or the shards an index names.

    A name that is there but not a regular file inside the dir (a FIFO, a link elsewhere) is an
    error when read, not a reason to look for the next one."""
    if os.path.lexists(directory / SAFETENSORS):
        return [directory / SAFETENSORS]
    for index in (SAFETENSORS_INDEX, BIN_INDEX):
        if os.path.lexists(directory / index):
            return _shards(directory, directory / index)
    if os.path.lexists(directory / BIN):
        return [directory / BIN]
    raise ConversionError(f"{directory}: no weights file (expected {SAFETENSORS}, {BIN} or a "
                          f"{SAFETENSORS_INDEX} of shards)")


def _shards(directory: Path, index: Path) -> list[Path]:
    try:
        weight_map = read_json(index, JSON_CAP, ConversionError)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except FileNotFoundError:
        raise ConversionError(f"{index}: missing") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise ConversionError(f"{index}: not a valid shard index ({e})") from None
    for name in shards:
        # A shard is a plain file of this folder: an index never makes us read elsewhere.
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            raise ConversionError(f"{index}: shard name {name!r} is not a file name in this folder")
    return [directory / name for name in shards]


def _read_files(paths: list[Path]) -> dict[str, torch.Tensor]:
    state = {}
    for path in paths:
        tensors = _read_file(path)
        check_finite(tensors, str(path), ConversionError)
        state.update(tensors)
    return state


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix != ".safetensors":
        return tensor_dict(torch_file(path, advice="; convert it to safetensors"), path)
    try:
        real = checked_path(path, ConversionError)
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing") from None
    try:
        return load_file(str(real))
    except (SafetensorError, OSError) as e:
        raise ConversionError(f"{path}: not a readable safetensors file ({e})") from None
