"""The command line is built from the commands' option dataclasses: --help and --config for every
command, choices from the registries, one-line errors with exit code 2."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lmlab.cli import COMMANDS, build_parser, main
from lmlab.tokenizers.words import WordTokenizer

# positionals only: argparse checks those
REQUIRED = {"demo": [], "pretrain": [], "finetune": ["DIR"], "generate": ["DIR"], "evaluate": ["DIR"],
            "convert": [], "embed": ["DIR"], "inspect": ["DIR"], "serve": ["DIR"], "zoo": []}

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")


@pytest.mark.parametrize("command", [*COMMANDS, "data"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: lmlab " + command in capsys.readouterr().out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_takes_a_config_file_and_defaults_device_to_auto(command):
    classes = COMMANDS[command].classes()
    args = build_parser().parse_args([command, *REQUIRED[command]])
    assert "config" in vars(args)
    devices = [f.default for cls in classes for f in dataclasses.fields(cls) if f.name == "device"]
    assert devices in ([], ["auto"])  # convert runs on the CPU: no --device


def test_choices_come_from_the_registries(register_family, capsys):
    register_family("my-family", object)
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "my-family" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "{classify,pair,choice,tag,qa,lm}" in capsys.readouterr().out


@pytest.fixture(scope="module")
def lm_dir(tiny_model_dir):
    tok = WordTokenizer.train(["the cat sat on the mat and the dog ran to the house"] * 4)
    return tiny_model_dir("gpt2", tok, max_seq_len=32)


def test_a_config_file_gives_the_same_result_as_the_flags(lm_dir, tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text("the cat sat on the mat\nthe dog ran to the house\n" * 5)
    flags = ["evaluate", str(lm_dir), "--data", str(data), "--split", "all", "--protocol", "sliding",
             "--stride", "4", "--window", "16", "--device", "cpu"]
    assert main(flags) == 0
    by_flags = json.loads(capsys.readouterr().out)
    config = tmp_path / "eval.yaml"
    config.write_text(f"data: {data}\nsplit: all\nprotocol: sliding\nstride: 4\nwindow: 16\ndevice: cpu\n")
    assert main(["evaluate", str(lm_dir), "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out) == by_flags
    # A flag given on the command line wins over the file.
    assert main(["evaluate", str(lm_dir), "--config", str(config), "--stride", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["stride"] == 8


@pytest.mark.parametrize("text, expected", [
    ("strides: 4\n", "unknown key 'strides'"),
    ("stride: four\n", "field stride must be an integer or null, got 'four'"),
    ("- a list\n", "expected a mapping of option: value"),
    ("stride: [1\n", "cannot read YAML"),
])
def test_a_bad_config_file_is_one_line_naming_the_file(lm_dir, tmp_path, capsys, text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["evaluate", str(lm_dir), "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(config) in err and expected in err, err


def test_a_required_option_missing_from_flags_and_file_is_named(lm_dir, capsys):
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(lm_dir)])
    assert info.value.code == 2
    assert "the following arguments are required: --text, --out" in capsys.readouterr().err


def test_a_two_file_option_takes_both_values_from_flags_or_file(tmp_path):
    args = build_parser().parse_args(["convert", "--from-elmo", "opts.json", "w.hdf5", "--out", "m"])
    assert args.from_elmo == ["opts.json", "w.hdf5"]
    from lmlab.cli import build_options, given_values

    config = tmp_path / "convert.yaml"
    config.write_text("from_elmo: [opts.json, w.hdf5]\nout: m\n")
    args = build_parser().parse_args(["convert", "--config", str(config)])
    options = build_options(args.option_classes[0], given_values(args, args.option_classes), args.subparser)
    assert options.from_elmo == ("opts.json", "w.hdf5") and options.from_hf is None
