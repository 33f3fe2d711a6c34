"""A config.json is held against its weights before the model is built (issue 16, class 6).

A config asking for a huge d_model, vocab_size, max_seq_len, d_ff or n_layers is one line naming
the parameters the config implies and those the weights hold, for `lmlab.load` and every
`from_hf` layout; nothing is allocated first (the check runs on a `meta` model). A model that
does fit its weights but not this machine's memory is one line too: here a sparse safetensors
file describes 3 GiB of weights under a 2 GiB address-space cap. Every call runs under an alarm
and that cap, so a regression is a failed test, not a stuck or killed run.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmlab
from checks import one_line_error
from lmlab.checkpoints.atomic import MANIFEST, write_manifest
from lmlab.errors import CheckpointError, ConversionError
from lmlab.models.registry import FAMILIES, build_from_config

HUGE = 10**9


def tiny(family, **overrides):
    torch.manual_seed(0)
    return lmlab.build(family, "tiny", **overrides).eval()


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def meta_parameters(family: str, fields: dict) -> int:
    """Parameters of the model `fields` describe, counted without allocating them (the last test
    checks these counts against real models)."""
    from lmlab.checkpoints.sizes import on_meta

    with on_meta():
        model = build_from_config(family, fields)
    return sum(p.numel() for p in model.parameters())


def held(path: Path) -> int:
    return sum(t.numel() for t in load_file(str(path)).values())


# ---- lmlab.load ------------------------------------------------------------------------------------
OWN = [("gpt2", "d_model", 4 * 10**6), ("gpt2", "vocab_size", HUGE), ("gpt2", "max_seq_len", HUGE),
       ("gpt2", "d_ff", HUGE), ("bert", "d_model", 4 * 10**6), ("bert", "vocab_size", HUGE),
       ("bert", "max_seq_len", HUGE), ("transfo-xl", "d_model", 10**7), ("transfo-xl", "d_ff", HUGE),
       ("transfo-xl", "vocab_size", HUGE)]


@pytest.mark.parametrize("family, field, value", OWN)
def test_own_config_asking_for_more_than_its_weights(tmp_path, family, field, value):
    saved = lmlab.save(tiny(family), None, tmp_path / "model")
    edit_json(saved / "config.json", **{field: value})
    write_manifest(saved, ["config.json", "model.safetensors"])
    config = json.loads((saved / "config.json").read_text())
    fields = {k: v for k, v in config.items() if k not in ("family", "lmlab_version")}
    message = one_line_error(CheckpointError, lambda: lmlab.load(saved))
    implied, stored = meta_parameters(family, fields), held(saved / "model.safetensors")
    assert str(saved / "model.safetensors") in message, message
    assert f"config.json implies {implied:,} parameters, the file holds {stored:,}" in message, message


@pytest.mark.parametrize("family", ["gpt2", "bert", "transfo-xl"])
@pytest.mark.parametrize("n_layers", [10**4, HUGE])
def test_own_config_with_more_layers_than_tensors(tmp_path, family, n_layers):
    saved = lmlab.save(tiny(family), None, tmp_path / "model")
    edit_json(saved / "config.json", n_layers=n_layers)
    write_manifest(saved, ["config.json", "model.safetensors"])
    message = one_line_error(CheckpointError, lambda: lmlab.load(saved))
    n_tensors = len(load_file(str(saved / "model.safetensors")))
    assert str(saved / "config.json") in message, message
    assert f"n_layers={n_layers:,}, but the weights hold only {n_tensors:,} tensors" in message, message


# ---- from_hf ----------------------------------------------------------------------------------------
HF = [("gpt2", "n_embd", 4 * 10**6), ("gpt2", "vocab_size", HUGE), ("gpt2", "n_positions", HUGE),
      ("gpt2", "n_inner", HUGE), ("gpt", "n_embd", 4 * 10**6), ("gpt", "n_positions", HUGE),
      ("bert", "hidden_size", 4 * 10**6), ("bert", "vocab_size", HUGE),
      ("bert", "max_position_embeddings", HUGE), ("bert", "intermediate_size", HUGE),
      ("transfo-xl", "d_model", 10**7), ("transfo-xl", "d_inner", HUGE), ("transfo-xl", "vocab_size", HUGE)]
HF_LAYERS = {"gpt2": "n_layer", "gpt": "n_layer", "bert": "num_hidden_layers", "transfo-xl": "n_layer"}


@pytest.mark.parametrize("family, field, value", HF)
def test_hf_config_asking_for_more_than_its_weights(tmp_path, family, field, value):
    hf = lmlab.to_hf(tiny(family), None, tmp_path / "hf")
    edit_json(hf / "config.json", **{field: value})
    message = one_line_error(ConversionError, lambda: lmlab.from_hf(hf))
    found = re.search(r"config\.json implies ([\d,]+) parameters, the weights hold only ([\d,]+)", message)
    assert found, message
    implied, stored = (int(n.replace(",", "")) for n in found.groups())
    assert stored == held(hf / "model.safetensors") and implied > 1000 * stored, message


@pytest.mark.parametrize("family", list(HF_LAYERS))
@pytest.mark.parametrize("n_layers", [10**4, HUGE])
def test_hf_config_with_more_layers_than_tensors(tmp_path, family, n_layers):
    hf = lmlab.to_hf(tiny(family), None, tmp_path / "hf")
    edit_json(hf / "config.json", **{HF_LAYERS[family]: n_layers})
    message = one_line_error(ConversionError, lambda: lmlab.from_hf(hf))
    n_tensors = len(load_file(str(hf / "model.safetensors")))
    assert f"{hf / 'config.json'}: n_layers={n_layers:,}, but the weights hold only {n_tensors:,} tensors" \
        in message, message


def test_hf_transfo_xl_with_more_clusters_than_tensors(tmp_path):
    hf = lmlab.to_hf(tiny("transfo-xl"), None, tmp_path / "hf")
    edit_json(hf / "config.json", vocab_size=10**7, cutoffs=list(range(1, 10**6)), tie_projs=[])
    message = one_line_error(ConversionError, lambda: lmlab.from_hf(hf))
    assert "999,999 cutoffs, but the weights hold only" in message, message


# ---- a model that fits its weights but not the memory ---------------------------------------------
def sparse_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A valid float32 safetensors file of these shapes whose data is a hole (no disk, no time)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * int(torch.tensor(shape).prod()) if shape else 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)


def grow(path: Path, name: str, rows: int) -> None:
    """Rewrite `path` sparse, with tensor `name` given `rows` rows (3 GiB at 2**24 rows of 48)."""
    shapes = {n: list(t.shape) for n, t in load_file(str(path)).items()}
    shapes[name][0] = rows
    sparse_safetensors(path, shapes)


def test_own_model_too_big_for_memory(tmp_path):
    saved = lmlab.save(tiny("gpt2"), None, tmp_path / "model")
    grow(saved / "model.safetensors", "wte.weight", 2**24)
    edit_json(saved / "config.json", vocab_size=2**24)
    # Sizes right, hashes not: hashing 3 GiB of zeros is not what this test is about (verify=False).
    entries = {n: {"size": (saved / n).stat().st_size, "sha256": "0" * 64}
               for n in ("config.json", "model.safetensors")}
    (saved / MANIFEST).write_text(json.dumps({"files": entries}))
    message = one_line_error(CheckpointError, lambda: lmlab.load(saved, verify=False))
    assert f"{saved / 'model.safetensors'}: not enough memory for this model" in message, message
    assert f"{meta_parameters('gpt2', {**tiny('gpt2').config.__dict__, 'vocab_size': 2**24}):,}" in message


def test_hf_model_too_big_for_memory(tmp_path):
    hf = lmlab.to_hf(tiny("gpt2"), None, tmp_path / "hf")
    grow(hf / "model.safetensors", "transformer.wte.weight", 2**24)
    edit_json(hf / "config.json", vocab_size=2**24)
    message = one_line_error(ConversionError, lambda: lmlab.from_hf(hf))
    assert f"{hf / 'config.json'}: not enough memory for this model" in message, message


# ---- the meta device builds every family ------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_and_preset_builds_on_meta(family):
    from lmlab.checkpoints.io import unique_state
    from lmlab.checkpoints.sizes import n_stored, on_meta, stored_names

    for preset, fields in FAMILIES[family].presets.items():
        with on_meta():
            model = build_from_config(family, dict(fields))
        assert {t.device.type for t in model.state_dict().values()} == {"meta"}, preset
        with torch.device("meta"):  # torch's own meta build, random initialisation included
            plain = build_from_config(family, dict(fields))
        assert n_stored(model) == n_stored(plain), preset
        if preset == "tiny":  # the names a checkpoint stores, tied tensors once, as for a real model
            real = build_from_config(family, dict(fields))
            assert stored_names(model) == list(unique_state(real))
            assert n_stored(model) == sum(t.numel() for t in unique_state(real).values())


def test_the_meta_pass_costs_no_torch_dynamo_import(tmp_path):
    """torch's meta normal_ and cat import torch._dynamo (seconds); lmlab's meta pass avoids both."""
    saved = lmlab.save(tiny("gpt2"), None, tmp_path / "model")
    dirs = [str(lmlab.to_hf(tiny(family), None, tmp_path / family)) for family in HF_LAYERS]
    script = (f"import sys, lmlab; lmlab.load({str(saved)!r}); [lmlab.from_hf(d) for d in {dirs!r}]; "
              f"print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out


def test_hf_bert_query_key_value_that_do_not_stack(tmp_path):
    hf = lmlab.to_hf(tiny("bert"), None, tmp_path / "hf")
    state = load_file(str(hf / "model.safetensors"))
    name = "bert.encoder.layer.0.attention.self.query.weight"
    state[name] = state[name][:, :16].contiguous()
    save_file(state, str(hf / "model.safetensors"), metadata={"format": "pt"})
    message = one_line_error(ConversionError, lambda: lmlab.from_hf(hf))
    assert "encoder.layer.0.attention.self.query.weight (32, 16)" in message, message


# ---- tensors that cannot exist (found by `make faults`) --------------------------------------------
@pytest.mark.parametrize("family, field", [("gpt2", "n_embd"), ("bert", "hidden_size")])
def test_hf_config_whose_tensors_overflow_even_on_meta(tmp_path, family, field):
    """n_embd 2**30: a (2**30, 3 * 2**30) attention matrix is more bytes than an int64 counts, and
    torch refused it on the meta device with a RuntimeError (a traceback from `lmlab convert`)."""
    hf = lmlab.to_hf(tiny(family), None, tmp_path / "hf")
    edit_json(hf / "config.json", **{field: 1 << 30})
    message = one_line_error(ConversionError, lambda: lmlab.from_hf(hf))
    assert message.startswith(f"{hf / 'config.json'}: the config asks for a tensor larger than any machine "
                              f"holds"), message


def test_own_config_whose_tensors_overflow_even_on_meta(tmp_path):
    saved = lmlab.save(tiny("gpt2"), None, tmp_path / "model")
    edit_json(saved / "config.json", d_model=1 << 30, n_heads=1)
    write_manifest(saved, ["config.json", "model.safetensors"])
    message = one_line_error(CheckpointError, lambda: lmlab.load(saved))
    assert "the config asks for a tensor larger than any machine holds" in message, message
