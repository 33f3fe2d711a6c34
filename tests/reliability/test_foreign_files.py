"""Files of a model dir are read only if they are regular files inside it, of bounded size
(issue 16, class 5): Hugging Face dirs through `from_hf`, lmlab's own dirs through `lmlab.load`.

A link that leaves the dir (its target would be copied into the converted model), a FIFO (reading
it blocks forever) and a link to /dev/zero (it never ends) are each one line naming the file. The
hub cache layout, whose snapshot files link to `../../blobs/HASH`, still converts. Every call that
could hang or fill memory on a regression runs under an alarm and an address-space cap, so a
failure is a failed test, not a stuck or killed test run.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmlab
from checks import one_line_error
from lmlab.checkpoints.atomic import MANIFEST
from lmlab.errors import CheckpointError, ConversionError
from lmlab.tokenizers.wordpiece import SPECIALS, WordPieceTokenizer

WORDS = ["the", "cat", "sat", "on", "mat", "##s", "dog"]


def tiny(family, **overrides):
    torch.manual_seed(0)
    return lmlab.build(family, "tiny", **overrides).eval()


@pytest.fixture
def bert_hf(tmp_path) -> Path:
    """A Hugging Face bert dir with vocab.txt and tokenizer_config.json."""
    return lmlab.to_hf(tiny("bert"), WordPieceTokenizer([*SPECIALS, *WORDS]), tmp_path / "bert")


@pytest.fixture
def saved(tmp_path) -> Path:
    return lmlab.save(tiny("gpt2"), None, tmp_path / "model")


def make(path: Path, what: str, outside: Path) -> None:
    """Replace `path` by a FIFO, a link to /dev/zero, a link to itself or a link to `outside`."""
    path.unlink(missing_ok=True)
    if what == "fifo":
        os.mkfifo(path)
    elif what == "zero":
        path.symlink_to("/dev/zero")
    elif what == "loop":
        path.symlink_to(path.name)
    else:
        path.symlink_to(outside)


KINDS = {"fifo": "FIFO", "zero": "/dev/zero", "loop": "cannot be resolved", "outside": "outside"}


# ---- Hugging Face dirs ---------------------------------------------------------------------------
def test_a_vocab_link_out_of_the_dir_is_not_copied_into_the_model(tmp_path, bert_hf):
    secret = tmp_path / "secret.txt"
    secret.write_text("\n".join([*SPECIALS, "password", "hunter2"]) + "\n")
    make(bert_hf / "vocab.txt", "outside", secret)
    one_line_error(ConversionError, lambda: lmlab.from_hf(bert_hf), str(bert_hf / "vocab.txt"), "outside")


@pytest.mark.parametrize("what", list(KINDS))
@pytest.mark.parametrize("name", ["config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json",
                                  "model.safetensors"])
def test_hf_files_that_are_not_regular_files_inside_the_dir(tmp_path, bert_hf, name, what):
    (tmp_path / "elsewhere").mkdir()
    outside = tmp_path / "elsewhere" / name
    if (bert_hf / name).exists():
        outside.write_bytes((bert_hf / name).read_bytes())  # a valid file: only its place is wrong
    else:
        outside.write_text("{}")
    make(bert_hf / name, what, outside)
    one_line_error(ConversionError, lambda: lmlab.from_hf(bert_hf), str(bert_hf / name), KINDS[what])


@pytest.mark.parametrize("what", list(KINDS))
def test_shard_index_and_shards(tmp_path, what):
    hf = lmlab.to_hf(tiny("gpt2"), None, tmp_path / "hf")
    state = load_file(str(hf / "model.safetensors"))
    names = sorted(state)
    half = len(names) // 2
    for shard, part in (("model-1.safetensors", names[:half]), ("model-2.safetensors", names[half:])):
        save_file({n: state[n] for n in part}, str(hf / shard), metadata={"format": "pt"})
    (hf / "model.safetensors").unlink()
    index = {"weight_map": {n: "model-1.safetensors" if n in names[:half] else "model-2.safetensors"
                            for n in names}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    lmlab.from_hf(hf)  # sharded, as written: converts
    (tmp_path / "elsewhere").mkdir()
    outside = tmp_path / "elsewhere" / "model-2.safetensors"
    outside.write_bytes((hf / "model-2.safetensors").read_bytes())
    make(hf / "model-2.safetensors", what, outside)
    one_line_error(ConversionError, lambda: lmlab.from_hf(hf), str(hf / "model-2.safetensors"), KINDS[what])
    (hf / "model-2.safetensors").unlink()
    (hf / "model-2.safetensors").write_bytes(outside.read_bytes())
    make(hf / "model.safetensors.index.json", what, tmp_path / "elsewhere" / "index.json")
    (tmp_path / "elsewhere" / "index.json").write_text(json.dumps(index))
    one_line_error(ConversionError, lambda: lmlab.from_hf(hf), "model.safetensors.index.json", KINDS[what])


def test_the_hub_cache_layout_still_converts(tmp_path, bert_hf):
    """models--ORG--NAME/snapshots/REV/FILE -> ../../blobs/HASH, as huggingface_hub stores them."""
    repo = tmp_path / "hub" / "models--someone--tiny-bert"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted(bert_hf.iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob.name))
    model, tokenizer = lmlab.from_hf(snapshot)
    reference, _ = lmlab.from_hf(bert_hf)
    assert tokenizer is not None and tokenizer.vocab_size == len(SPECIALS) + len(WORDS)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_link_out_of_a_snapshot_and_its_cache_is_refused(tmp_path, bert_hf):
    snapshot = tmp_path / "hub" / "models--someone--tiny-bert" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for path in bert_hf.iterdir():
        (snapshot / path.name).symlink_to(path)  # outside models--someone--tiny-bert
    one_line_error(ConversionError, lambda: lmlab.from_hf(snapshot), "outside")


def test_size_caps(bert_hf):
    config = json.loads((bert_hf / "config.json").read_text())
    text = json.dumps(config)
    (bert_hf / "config.json").write_text(text[:-1] + " " * (16 * 2**20 - len(text) + 1) + "}")
    one_line_error(ConversionError, lambda: lmlab.from_hf(bert_hf), "config.json", "16,777,216 bytes")
    (bert_hf / "config.json").write_text(text)
    vocab = (bert_hf / "vocab.txt").read_text()
    (bert_hf / "vocab.txt").write_text(vocab + "\n" * (64 * 2**20))
    one_line_error(ConversionError, lambda: lmlab.from_hf(bert_hf), "vocab.txt", "67,108,864 bytes")


def test_json_nested_too_deeply(bert_hf):
    (bert_hf / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(ConversionError, lambda: lmlab.from_hf(bert_hf), "config.json", "JSON")


# ---- lmlab's own dirs ----------------------------------------------------------------------------
@pytest.mark.parametrize("what", list(KINDS))
@pytest.mark.parametrize("name", [MANIFEST, "config.json", "tokenizer.json"])
def test_own_json_files_that_are_not_regular_files_inside_the_dir(tmp_path, saved, name, what):
    (tmp_path / "elsewhere").mkdir()
    outside = tmp_path / "elsewhere" / name
    outside.write_bytes((saved / name).read_bytes() if (saved / name).exists() else b"{}")
    make(saved / name, what, outside)
    one_line_error(CheckpointError, lambda: lmlab.load(saved), str(saved / name))


def test_own_manifest_size_cap(saved):
    manifest = (saved / MANIFEST).read_text()
    (saved / MANIFEST).write_text(manifest + " " * (16 * 2**20))
    one_line_error(CheckpointError, lambda: lmlab.load(saved), MANIFEST, "16,777,216 bytes")
