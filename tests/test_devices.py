"""--device names: checked once, with a one-line error, before any work."""

import pytest
import torch

from lmlab.devices import resolve_device
from lmlab.errors import ConfigError


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name, message", [
    ("tpu", "is not a device lmlab runs on"),
    ("meta", "is not a device lmlab runs on"),
    ("gpu0", "is not a device lmlab runs on"),
    ("cuda:99", "CUDA"),
])
def test_bad_names_are_one_line_errors(name, message):
    with pytest.raises(ConfigError, match=message) as info:
        resolve_device(name)
    assert "\n" not in str(info.value) and name in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu():
    with pytest.raises(ConfigError, match="no CUDA GPU here"):
        resolve_device("cuda")


@pytest.mark.parametrize("command", [
    ["pretrain", "--out", "{tmp}/run"],
    ["finetune", "{tmp}/no-model", "--task", "classify", "--train", "{tmp}/no.jsonl",
     "--dev", "{tmp}/no.jsonl", "--out", "{tmp}/ft"],
    ["demo", "--out", "{tmp}/demo"],
])
def test_commands_check_the_device_before_any_work(command, tmp_path, capsys):
    from lmlab.cli import main

    assert main([arg.format(tmp=tmp_path) for arg in command] + ["--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--device 'tpu' is not a device lmlab runs on; expected auto, cpu, cuda, "
                        "cuda:N or mps")
    assert list(tmp_path.iterdir()) == []  # nothing was written
