"""lmlab.save / lmlab.load: round trips, tied weights stored once, the manifest, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lmlab
from lmlab.checkpoints.atomic import MANIFEST, sha256_file, write_manifest
from lmlab.errors import CheckpointError

FAMILIES = ["gpt", "gpt2"]


def tiny(family="gpt2", **overrides):
    torch.manual_seed(0)
    return lmlab.build(family, "tiny", **overrides).eval()


@pytest.fixture
def saved(tmp_path) -> Path:
    out = tmp_path / "model"
    lmlab.save(tiny(), None, out)
    return out


def load_error(directory: Path, *needles: str) -> str:
    with pytest.raises(CheckpointError) as info:
        lmlab.load(directory)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def rewrite(directory: Path, name: str, data: bytes) -> None:
    """Replace a file and re-sign the manifest, so the loader gets past the integrity check."""
    (directory / name).write_bytes(data)
    files = json.loads((directory / MANIFEST).read_text())["files"]
    write_manifest(directory, sorted(files))


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    rewrite(directory, "config.json", json.dumps(config).encode())


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_identical_logits(tmp_path, family):
    model = tiny(family, d_model=32, n_heads=2)
    with torch.no_grad():  # make biases and norms non-trivial so every tensor matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    lmlab.save(model, None, tmp_path / "m")
    loaded, tokenizer = lmlab.load(tmp_path / "m")
    assert tokenizer is None
    assert loaded.family == family and loaded.config == model.config
    assert not loaded.training
    ids = torch.randint(0, 256, (2, 9))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_weights_stored_once_and_retied(tmp_path, family):
    lmlab.save(tiny(family), None, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "wte.weight" in keys and "lm_head.weight" not in keys
    assert len(keys) == len({id(p) for p in tiny(family).parameters()})
    loaded, _ = lmlab.load(tmp_path / "m")
    assert loaded.lm_head.weight is loaded.wte.weight


def test_manifest_written_and_verified(saved):
    manifest = json.loads((saved / MANIFEST).read_text())["files"]
    assert set(manifest) == {"config.json", "model.safetensors"}
    for name, entry in manifest.items():
        assert entry["size"] == (saved / name).stat().st_size
        assert entry["sha256"] == sha256_file(saved / name)
    config = json.loads((saved / "config.json").read_text())
    assert config["family"] == "gpt2" and config["lmlab_version"] == lmlab.__version__
    assert not [p.name for p in saved.iterdir() if ".tmp" in p.name]


def test_save_keeps_other_files(saved):
    (saved / "metrics.jsonl").write_text('{"step": 1}\n')
    (saved / "plots").mkdir()
    (saved / "plots" / "loss.png").write_bytes(b"png")
    lmlab.save(tiny("gpt", d_model=32, n_heads=2), None, saved)  # overwrite with another model
    assert (saved / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert (saved / "plots" / "loss.png").read_bytes() == b"png"
    loaded, _ = lmlab.load(saved)
    assert loaded.family == "gpt" and loaded.config.d_model == 32


def test_missing_dir(tmp_path):
    load_error(tmp_path / "nope", "nope")


def test_missing_manifest(saved):
    (saved / MANIFEST).unlink()
    load_error(saved, MANIFEST)


def test_truncated_weights(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    load_error(saved, "model.safetensors", "size", "truncated")


def test_flipped_byte(saved):
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    load_error(saved, "model.safetensors", "sha256")


def test_flipped_byte_not_verified_when_asked(saved):
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor's data: still a readable file
    path.write_bytes(bytes(data))
    lmlab.load(saved, verify=False)


def test_file_listed_in_manifest_missing(saved):
    (saved / "model.safetensors").unlink()
    load_error(saved, "model.safetensors", "missing")


def test_corrupt_manifest(saved):
    (saved / MANIFEST).write_text("{not json")
    load_error(saved, MANIFEST)


def test_corrupt_config(saved):
    rewrite(saved, "config.json", b'{"family": "gpt2", "d_model": ')
    load_error(saved, "config.json", "JSON")


def test_config_without_family(saved):
    config = json.loads((saved / "config.json").read_text())
    del config["family"]
    rewrite(saved, "config.json", json.dumps(config).encode())
    load_error(saved, "config.json", "family")


def test_config_unknown_family(saved):
    edit_config(saved, family="gpt7")
    load_error(saved, "gpt7", "config.json")


def test_config_unknown_key(saved):
    edit_config(saved, n_embd=64)
    load_error(saved, "n_embd", "config.json")


def test_config_bad_value(saved):
    edit_config(saved, dropout=1.5)
    load_error(saved, "dropout", "config.json")


def test_weights_with_wrong_shape(saved):
    state = load_file(str(saved / "model.safetensors"))
    state["wpe.weight"] = state["wpe.weight"][:64].contiguous()
    save_file(state, str(saved / "w.tmp"))
    rewrite(saved, "model.safetensors", (saved / "w.tmp").read_bytes())
    d = state["wpe.weight"].shape[1]
    load_error(saved, "wpe.weight", f"(64, {d})", f"(128, {d})")


def test_weights_missing_or_unexpected_tensor(saved):
    state = load_file(str(saved / "model.safetensors"))
    extra = {**state, "blocks.9.attn.c_attn.weight": torch.zeros(2)}
    save_file(extra, str(saved / "w.tmp"))
    rewrite(saved, "model.safetensors", (saved / "w.tmp").read_bytes())
    load_error(saved, "blocks.9.attn.c_attn.weight")
    del state["ln_f.weight"]
    save_file(state, str(saved / "w.tmp"))
    rewrite(saved, "model.safetensors", (saved / "w.tmp").read_bytes())
    load_error(saved, "ln_f.weight", "missing")


def test_weights_not_safetensors(saved):
    rewrite(saved, "model.safetensors", b"\x00" * 64)
    load_error(saved, "model.safetensors")


def test_an_unknown_device_is_refused_before_the_weights_are_read(saved, monkeypatch):
    from lmlab.checkpoints import io

    monkeypatch.setattr(io, "load_file", lambda *a: pytest.fail("weights read before the device check"))
    with pytest.raises(lmlab.errors.ConfigError, match="--device 'tpu' is not a device"):
        lmlab.load(saved, device="tpu")
