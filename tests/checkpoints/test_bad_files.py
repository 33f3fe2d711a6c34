"""Malformed model dirs, manifests and Hugging Face dirs: one-line lmlab errors, never a traceback.

Every bad file is built here from a tiny model; CLI cases go through `lmlab.cli.main`.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmlab
from lmlab.checkpoints.atomic import MANIFEST, write_manifest
from lmlab.cli import main
from lmlab.errors import CheckpointError, ConversionError, TokenizerError
from lmlab.models.heads import TaskSpec, build_task_model
from lmlab.tasks.base import add_task_tokens
from lmlab.tokenizers.chars import CharTokenizer

TEXT = "the quick brown fox jumps over the lazy dog 0123456789"


def tiny(**overrides):
    torch.manual_seed(0)
    return lmlab.build("gpt2", "tiny", **overrides).eval()


def resign(directory: Path) -> None:
    """A valid manifest over the edited files, so what is refused is the edit itself."""
    files = json.loads((directory / MANIFEST).read_text())["files"]
    write_manifest(directory, sorted(files))


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def one_line(message: str) -> str:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


def cli_error(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lmlab {argv[0]}: error: "), err
    return one_line(err)


@pytest.fixture
def saved(tmp_path) -> Path:
    return lmlab.save(tiny(), None, tmp_path / "model")


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    return lmlab.to_hf(tiny(), None, tmp_path / "hf")


# ---- 1, 2: config.json field types and family names ---------------------------------------------
@pytest.mark.parametrize("field, value, expected", [("layer_norm_eps", "abc", "a number"),
                                                    ("init_std", "x", "a number"),
                                                    ("pre_ln", "no", "true or false")])
def test_config_field_of_wrong_type(saved, field, value, expected):
    edit_json(saved / "config.json", **{field: value})
    resign(saved)
    with pytest.raises(CheckpointError) as info:
        lmlab.load(saved)
    assert one_line(str(info.value)) == (f"{saved / 'config.json'}: field {field} must be {expected}, "
                                         f"got {value!r}")


@pytest.mark.parametrize("field, value", [("layer_norm_epsilon", "abc"), ("initializer_range", "x")])
def test_hf_config_field_of_wrong_type(hf_dir, tmp_path, capsys, field, value):
    edit_json(hf_dir / "config.json", **{field: value})
    with pytest.raises(ConversionError, match=f"config.json: field .* must be a number, got {value!r}"):
        lmlab.from_hf(hf_dir)
    assert "must be a number" in cli_error(capsys, "convert", "--from-hf", str(hf_dir), "--out",
                                           str(tmp_path / "out"))


def test_family_and_model_type_that_are_lists(saved, hf_dir):
    edit_json(saved / "config.json", family=["gpt2"])
    resign(saved)
    with pytest.raises(CheckpointError, match=r"config.json: unknown model family \['gpt2'\]"):
        lmlab.load(saved)
    edit_json(hf_dir / "config.json", model_type=["gpt2"])
    with pytest.raises(ConversionError, match=r"config.json: model_type \['gpt2'\] is not supported"):
        lmlab.from_hf(hf_dir)


# ---- 3: manifest structure ----------------------------------------------------------------------
@pytest.mark.parametrize("manifest", [{"files": ["config.json"]},
                                      {"files": {"config.json": {"sha256": "0" * 64}}},
                                      {"files": {"../config.json": {"size": 1, "sha256": "0" * 64}}},
                                      ["files"]])
def test_manifest_of_the_wrong_shape(saved, manifest):
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as info:
        lmlab.load(saved)
    assert one_line(str(info.value)).startswith(f"{saved / MANIFEST}: unreadable manifest (expected")


# ---- 4: tokenizer vs model vocabulary -----------------------------------------------------------
def test_tokenizer_larger_than_the_model_vocab_is_refused(tmp_path):
    tok = CharTokenizer.train([TEXT])
    lmlab.save(tiny(vocab_size=tok.vocab_size - 1), tok, tmp_path / "big")
    with pytest.raises(TokenizerError) as info:
        lmlab.load(tmp_path / "big")
    assert one_line(str(info.value)) == (f"{tmp_path / 'big'}: the tokenizer has {tok.vocab_size} tokens, "
                                         f"more than the model's vocab_size {tok.vocab_size - 1}; it "
                                         f"belongs to another model")
    lmlab.save(tiny(vocab_size=tok.vocab_size + 7), tok, tmp_path / "padded")  # padded: fine
    assert lmlab.load(tmp_path / "padded")[1].vocab_size == tok.vocab_size


def test_task_model_with_added_task_tokens_still_loads(tmp_path):
    tok = CharTokenizer.train([TEXT])
    backbone = tiny(vocab_size=tok.vocab_size)
    ids = add_task_tokens(backbone, tok)
    model = build_task_model(backbone, TaskSpec("classify", labels=("a", "b"), **ids))
    lmlab.save(model, tok, tmp_path / "task")
    loaded, loaded_tok = lmlab.load(tmp_path / "task")
    assert loaded_tok.vocab_size == tok.vocab_size <= loaded.config.vocab_size


# ---- 5: weight dtypes ---------------------------------------------------------------------------
def test_integer_weights_are_refused_half_precision_loads(saved):
    state = load_file(str(saved / "model.safetensors"))
    save_file({k: v.half() for k, v in state.items()}, str(saved / "model.safetensors"))
    resign(saved)
    model, _ = lmlab.load(saved)
    assert model.wte.weight.dtype == torch.float32
    save_file({k: v.to(torch.int32) for k, v in state.items()}, str(saved / "model.safetensors"))
    resign(saved)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor \S+ has dtype torch.int32, "
                                              r"the model expects floating point \(torch.float32\)"):
        lmlab.load(saved)


def test_integer_hf_weights_are_refused(hf_dir):
    state = load_file(str(hf_dir / "model.safetensors"))
    save_file({k: v.to(torch.int32) for k, v in state.items()}, str(hf_dir / "model.safetensors"))
    with pytest.raises(ConversionError, match="has dtype torch.int32, lmlab expects floating point"):
        lmlab.from_hf(hf_dir)


# ---- 6: convert --from-hf messages --------------------------------------------------------------
def test_unknown_builtin_is_named_plainly(tmp_path, capsys):
    err = cli_error(capsys, "convert", "--from-hf", "builtin:nope", "--out", str(tmp_path / "out"))
    assert "unknown built-in weights builtin:nope; expected one of builtin:minilm" in err
    assert "PosixPath" not in err


def test_unreadable_bin_does_not_repeat_torch_advice(hf_dir, tmp_path, capsys):
    (hf_dir / "model.safetensors").unlink()
    (hf_dir / "pytorch_model.bin").write_bytes(os.urandom(1000))
    err = cli_error(capsys, "convert", "--from-hf", str(hf_dir), "--out", str(tmp_path / "out"))
    assert f"{hf_dir / 'pytorch_model.bin'}: not a readable PyTorch weights file" in err
    assert "safetensors" in err and "weights_only" not in err


def test_pickled_non_tensors_print_no_torch_warning(hf_dir, tmp_path, capsys):
    (hf_dir / "model.safetensors").unlink()
    with open(hf_dir / "pytorch_model.bin", "wb") as f:
        pickle.dump({"a": 1}, f)  # protocol 4: torch warns about it before failing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = cli_error(capsys, "convert", "--from-hf", str(hf_dir), "--out", str(tmp_path / "out"))
    assert not [str(w.message) for w in caught] and "pytorch_model.bin" in err


# ---- 7: convert --to-hf -------------------------------------------------------------------------
def test_to_hf_out_that_is_a_file(saved, tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    err = cli_error(capsys, "convert", "--to-hf", str(saved), "--out", str(tmp_path / "x"))
    assert f"{tmp_path / 'x'}: exists and is not a directory" in err
    assert (tmp_path / "x").read_text() == "keep me"


def test_to_hf_of_a_task_model_names_it(tmp_path, capsys):
    backbone = tiny()
    model = build_task_model(backbone, TaskSpec("classify", labels=("a", "b"), reader="pooled_cls"))
    lmlab.save(model, None, tmp_path / "task")
    err = cli_error(capsys, "convert", "--to-hf", str(tmp_path / "task"), "--out", str(tmp_path / "hf"))
    assert f"{tmp_path / 'task'}: holds a fine-tuned task model (TaskModel" in err
    assert "only pretrained backbones convert" in err
    with pytest.raises(ConversionError, match="fine-tuned task model"):
        lmlab.to_hf(model, None, tmp_path / "hf")
