"""`lmlab convert` never replaces a model or a run at --out by surprise (issue 16, class 4).

A dir holding a model (lmlab or Hugging Face files) is refused unless --overwrite is given, and
then replaced as a whole: nothing of the old model (a stale tokenizer.json) survives next to the
new one. A training run (checkpoints/ or metrics.jsonl) is refused even with --overwrite, as
`pretrain` refuses it. A folder holding no model is written into, as before. Both directions.
"""

import json
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.checkpoints.atomic import MANIFEST, sha256_file
from lmlab.cli import main
from lmlab.tokenizers.chars import CharTokenizer


def tiny(family="gpt2", **overrides):
    torch.manual_seed(0)
    return lmlab.build(family, "tiny", **overrides).eval()


def fingerprint(directory: Path) -> dict[str, str]:
    """Every file under `directory` (relative name -> sha256): 'nothing here changed' is equality."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {str(p.relative_to(directory)): sha256_file(p) for p in files}


def convert(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["convert", *argv])
    err = capsys.readouterr().err
    return code, err


def refused(capsys, *argv: str) -> str:
    code, err = convert(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lmlab convert: error: "), err
    return lines[0]


@pytest.fixture
def hf_source(tmp_path) -> Path:
    return lmlab.to_hf(tiny(d_model=32, n_heads=2), None, tmp_path / "hf-src")


@pytest.fixture
def lmlab_source(tmp_path) -> Path:
    return lmlab.save(tiny(d_model=32, n_heads=2), None, tmp_path / "lmlab-src")


@pytest.fixture
def lmlab_model(tmp_path) -> Path:
    """An lmlab model dir with a tokenizer (the new model has none: a stale one must not survive)."""
    return lmlab.save(tiny(), CharTokenizer.train(["abcdef"]), tmp_path / "model")


@pytest.fixture
def hf_model(tmp_path) -> Path:
    return lmlab.to_hf(tiny(), None, tmp_path / "hf-model")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_args) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(tiny_args(out, steps=2, save_every=2)) == 0
    return out


def test_from_hf_into_a_model_dir_is_refused(capsys, hf_source, lmlab_model):
    before = fingerprint(lmlab_model)
    line = refused(capsys, "--from-hf", str(hf_source), "--out", str(lmlab_model))
    assert str(lmlab_model) in line and "--overwrite" in line, line
    assert fingerprint(lmlab_model) == before


def test_to_hf_into_a_model_dir_is_refused(capsys, lmlab_source, hf_model):
    before = fingerprint(hf_model)
    line = refused(capsys, "--to-hf", str(lmlab_source), "--out", str(hf_model))
    assert str(hf_model) in line and "--overwrite" in line, line
    assert fingerprint(hf_model) == before


@pytest.mark.parametrize("direction", ["--from-hf", "--to-hf"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_run_is_never_replaced(capsys, run_dir, hf_source, lmlab_source, direction, overwrite):
    source = hf_source if direction == "--from-hf" else lmlab_source
    before = fingerprint(run_dir)
    flags = ["--overwrite"] if overwrite else []
    line = refused(capsys, direction, str(source), "--out", str(run_dir), *flags)
    assert str(run_dir) in line and "run" in line, line
    assert fingerprint(run_dir) == before


def test_overwrite_replaces_an_lmlab_model_dir_whole(capsys, hf_source, lmlab_model):
    code, err = convert(capsys, "--from-hf", str(hf_source), "--out", str(lmlab_model), "--overwrite")
    assert code == 0, err
    model, tokenizer = lmlab.load(lmlab_model)
    assert model.config.d_model == 32 and tokenizer is None  # the old tokenizer.json went with the old model
    assert not (lmlab_model / "tokenizer.json").exists()
    assert [p.name for p in lmlab_model.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_overwrite_replaces_a_hugging_face_dir(capsys, lmlab_source, hf_model):
    code, err = convert(capsys, "--to-hf", str(lmlab_source), "--out", str(hf_model), "--overwrite")
    assert code == 0, err
    assert json.loads((hf_model / "config.json").read_text())["n_embd"] == 32
    model, _ = lmlab.from_hf(hf_model)
    assert model.config.d_model == 32


def test_overwrite_refuses_a_folder_that_is_more_than_a_model(capsys, hf_source, lmlab_model):
    (lmlab_model / "notes").mkdir()
    (lmlab_model / "notes" / "todo.txt").write_text("keep me")
    before = fingerprint(lmlab_model)
    line = refused(capsys, "--from-hf", str(hf_source), "--out", str(lmlab_model), "--overwrite")
    assert "notes" in line, line
    assert fingerprint(lmlab_model) == before


def test_a_failed_overwrite_keeps_the_old_model(capsys, tmp_path, lmlab_model):
    broken = lmlab.to_hf(tiny(), None, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    before = fingerprint(lmlab_model)
    refused(capsys, "--from-hf", str(broken), "--out", str(lmlab_model), "--overwrite")
    assert fingerprint(lmlab_model) == before
    assert sorted(p.name for p in lmlab_model.parent.iterdir()) == ["broken", "model"]


@pytest.mark.parametrize("state", ["absent", "empty", "other files"])
def test_a_folder_without_a_model_is_written_into(capsys, tmp_path, hf_source, state):
    out = tmp_path / "out"
    if state != "absent":
        out.mkdir()
    if state == "other files":
        (out / "README.md").write_text("mine")
    code, err = convert(capsys, "--from-hf", str(hf_source), "--out", str(out))
    assert code == 0, err
    assert lmlab.load(out)[0].config.d_model == 32
    if state == "other files":
        assert (out / "README.md").read_text() == "mine"
    assert (out / MANIFEST).exists()
