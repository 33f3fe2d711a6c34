"""Outputs that are not regular files (issue 16 class 1): every file a command writes, when it exists,
must be a regular file (or a link to one) and every folder a folder; a device, FIFO or socket is
refused before any work, and nothing is written beside it.

`lmlab embed --out /dev/null` run as root replaced the device node with a regular file (the
safetensors writer renames a temp file over its target); a FIFO stands in for the device where the
test is not root, and is replaced the same way.
"""

import os
import socket
import stat

import pytest

from lmlab.cli import main
from lmlab.errors import ConfigError
from lmlab.tokenizers.chars import CharTokenizer

TEXT = "the cat sat on the mat and the dog ran home\n" * 4


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("gpt2", CharTokenizer.train([TEXT]), max_seq_len=64)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_embed_into_a_fifo_or_a_device_is_refused_and_leaves_it(model_dir, tmp_path, fifo, capsys):
    text = tmp_path / "in.txt"
    text.write_text(TEXT)
    before = listing(tmp_path)
    err = one_line_error(capsys, ["embed", str(model_dir), "--input", str(text), "--out", str(fifo)])
    assert f"--out {fifo} is a FIFO, not a regular file" in err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and listing(tmp_path) == before  # nothing beside it
    if os.geteuid() == 0:  # the case of the audit: root writing /dev/null
        dev = set(os.listdir("/dev"))
        err = one_line_error(capsys, ["embed", str(model_dir), "--input", str(text), "--out", "/dev/null"])
        assert "--out /dev/null is a device" in err
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and set(os.listdir("/dev")) <= dev


def test_inspect_refuses_a_fifo_for_either_output(model_dir, tmp_path, fifo, capsys):
    before = listing(tmp_path)
    err = one_line_error(capsys, ["inspect", str(model_dir), "--text", "the cat sat", "--out",
                                  str(tmp_path / "x.png"), "--json", str(fifo)])
    assert f"--json {fifo} is a FIFO" in err
    err = one_line_error(capsys, ["inspect", str(model_dir), "--text", "the cat sat", "--out", str(fifo)])
    assert f"--out {fifo} is a FIFO" in err
    assert listing(tmp_path) == before and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_run_refuses_outputs_of_the_wrong_kind_before_any_work(tmp_path, tiny_args, capsys):
    """The plot, the tokenizer folder, the report: what a run writes at its end is checked at its start."""
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    os.mkfifo(run / "plots" / "loss.png")
    err = one_line_error(capsys, tiny_args(run, steps=2))
    assert f"{run / 'plots' / 'loss.png'} is a FIFO" in err
    assert listing(run) == ["plots"]  # no tokenizer, no settings, no lock file left
    os.unlink(run / "plots" / "loss.png")
    (run / "tokenizer").write_text("not a folder")
    err = one_line_error(capsys, tiny_args(run, steps=2))
    assert f"{run / 'tokenizer'} is a regular file; expected a folder" in err
    assert listing(run) == ["plots", "tokenizer"]


def test_finetune_refuses_a_report_that_is_a_fifo(tiny_model_dir, tmp_path, capsys):
    from lmlab.tokenizers.wordpiece import WordPieceTokenizer

    backbone = tiny_model_dir("bert", WordPieceTokenizer.train([TEXT] * 3, vocab_size=60))
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "the cat sat", "label": "a"}\n{"text": "the dog ran", "label": "b"}\n')
    out = tmp_path / "ft"
    out.mkdir()
    os.mkfifo(out / "report.json")
    err = one_line_error(capsys, ["finetune", str(backbone), "--task", "classify", "--train", str(data),
                                  "--dev", str(data), "--out", str(out), "--steps", "1", "--device", "cpu",
                                  "--no-progress"])
    assert f"{out / 'report.json'} is a FIFO" in err
    assert listing(out) == ["report.json"]


def test_convert_refuses_an_out_file_of_the_wrong_kind(tiny_model_dir, tmp_path, capsys):
    from lmlab.tokenizers.byte_bpe import ByteBPETokenizer

    model_dir = tiny_model_dir("gpt2", ByteBPETokenizer.train([TEXT], vocab_size=270))
    out = tmp_path / "hf"
    out.mkdir()
    os.mkfifo(out / "merges.txt")  # --overwrite replaced the whole dir, the FIFO with it
    err = one_line_error(capsys, ["convert", "--to-hf", str(model_dir), "--out", str(out), "--overwrite"])
    assert f"{out / 'merges.txt'} is a FIFO" in err
    assert listing(out) == ["merges.txt"] and stat.S_ISFIFO(os.lstat(out / "merges.txt").st_mode)


def test_the_checks_themselves(tmp_path):
    from lmlab.paths import check_file_target, output_dir, output_file

    regular = tmp_path / "a.txt"
    regular.write_text("x")
    link = tmp_path / "link.txt"
    link.symlink_to(regular)
    assert check_file_target(regular) == regular and check_file_target(tmp_path / "new") == tmp_path / "new"
    assert output_file(link, "--out") == regular  # a link to a file: its target is written
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="a link to nothing"):
        output_file(tmp_path / "dangling", "--out")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
        with pytest.raises(ConfigError, match="is a socket, not a regular file"):
            output_file(tmp_path / "sock", "--out")
    with pytest.raises(ConfigError, match=r"a\.txt exists and is not a directory; --out must be a run dir"):
        output_dir(regular)
    assert output_dir(tmp_path / "x" / "y") == tmp_path / "x" / "y" and (tmp_path / "x" / "y").is_dir()
    assert not [p for p in os.listdir(tmp_path / "x" / "y")]  # the writability probe is gone
