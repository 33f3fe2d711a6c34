"""The CLI boundary (issue 16 class 11): every failure a user can cause ends as one line and a
non-zero exit, and a closed pipe exits quietly. Each case below was a raw traceback.
"""

import json
import os
import subprocess
import sys

import pytest

from lmlab.cli import main
from lmlab.tokenizers.chars import CharTokenizer

TEXT = "the cat sat on the mat and the dog ran home\n" * 4
HUGE = "1" * 5000  # Python refuses to read an integer of more than 4300 digits
NESTED = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("gpt2", CharTokenizer.train([TEXT]), max_seq_len=64)


def run_lmlab(*args, stdout=None, close_stdout=False) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", *args], stdout=stdout or subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if close_stdout:
        proc.stdout.close()  # `| head -c 0`: the reader is gone before the first write
    err = proc.stderr.read()
    return subprocess.CompletedProcess(proc.args, proc.wait(timeout=120), None, err)


def test_a_closed_pipe_exits_quietly(model_dir):
    done = run_lmlab("generate", str(model_dir), "--prompt", "the cat", "--max-new-tokens", "20", "--greedy",
                     "--device", "cpu", close_stdout=True)
    assert done.returncode == 141 and done.stderr == "", done.stderr  # 141: as a process SIGPIPE ends


def test_a_full_disk_on_stdout_is_one_line(model_dir):
    with open("/dev/full", "w") as full:
        done = run_lmlab("generate", str(model_dir), "--prompt", "the cat", "--max-new-tokens", "20",
                         "--greedy", "--device", "cpu", stdout=full)
    assert done.returncode == 2
    assert done.stderr == "lmlab generate: error: standard output: cannot write (No space left on device)\n"


def one_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_files_a_user_can_break(tmp_path, tiny_args, model_dir, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_bytes(b"steps: 5\nlr: \"\xff\xfe\"\n")
    assert "cannot read YAML" in one_line(capsys, [*tiny_args(tmp_path / "a"), "--config", str(bad_yaml)])
    huge_yaml = tmp_path / "huge.yaml"
    huge_yaml.write_text(f"steps: {HUGE}\n")
    assert "cannot read YAML" in one_line(capsys, [*tiny_args(tmp_path / "a"), "--config", str(huge_yaml)])
    err = one_line(capsys, [*tiny_args(tmp_path / "a"), "--set", f"d_model={HUGE}"])
    assert "d_model must be an integer" in err
    nested = tmp_path / "nested.jsonl"
    nested.write_text(json.dumps({"text": "the cat sat on the mat"}) + "\n" + '{"text": ' + NESTED + "}\n")
    err = one_line(capsys, tiny_args(tmp_path / "b", data=str(nested)))
    assert f"{nested}:2: not valid JSON (nested deeper than the parser's recursion limit)" in err


@pytest.mark.parametrize("line, expected", [
    ('{"text": "the dog", "label": ' + HUGE + "}", "Exceeds the limit (4300 digits)"),
    ('{"text": ' + NESTED + ', "label": 1}', "nested deeper than the parser's recursion limit"),
])
def test_task_files_a_user_can_break(tmp_path, model_dir, capsys, line, expected):
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "the cat", "label": 0}\n' + line + "\n")
    err = one_line(capsys, ["finetune", str(model_dir), "--task", "classify", "--train", str(data), "--dev",
                            str(data), "--out", str(tmp_path / "ft"), "--steps", "1", "--device", "cpu"])
    assert f"{data}:2: not valid JSON ({expected}" in err
    assert not (tmp_path / "ft").exists()


def out_cases(tmp_path, model_dir, tiny_args, out):
    text = tmp_path / "in.txt"
    text.write_text(TEXT)
    return {
        "pretrain": tiny_args(out, steps=2),
        "embed": ["embed", str(model_dir), "--input", str(text), "--out", f"{out}/x.safetensors"],
        "inspect": ["inspect", str(model_dir), "--text", "the cat", "--out", f"{out}/x.png"],
        "convert": ["convert", "--to-hf", str(model_dir), "--out", str(out)],
        "demo": ["demo", "--out", str(out), "--minutes", "0.01", "--device", "cpu"],
    }


@pytest.mark.parametrize("command", ["pretrain", "embed", "inspect", "convert", "demo"])
def test_an_out_under_a_file_or_under_proc(command, tmp_path, model_dir, tiny_args, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("keep me")
    err = one_line(capsys, out_cases(tmp_path, model_dir, tiny_args, afile / "run")[command])
    assert f"{afile} is a file, not a folder" in err
    err = one_line(capsys, out_cases(tmp_path, model_dir, tiny_args, "/proc/lmlab-run")[command])
    assert "cannot write in /proc" in err or "/proc/lmlab-run" in err
    assert afile.read_text() == "keep me" and not os.path.lexists("/proc/lmlab-run")
