"""Concurrent runs (issue 16 class 2): a run holds an exclusive lock on its dir for its whole life,
and a second process on the same dir (pretrain, finetune, convert, demo) is refused in one line
before it writes anything. Two `pretrain` processes on one --out used to interleave two histories in
metrics.jsonl and mix their checkpoints.

The lock is flock(2) on DIR/.lmlab.lock: the kernel drops it when its holder dies, so a SIGKILLed
run never leaves a lock that blocks its `--resume`.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmlab.cli import main

HOLDER = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".lmlab.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"pid %d, a test holder" % os.getpid())
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held(tmp_path):
    """A dir whose lock another process holds (as a running lmlab would), and that process."""
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    proc.kill()
    proc.wait()


def refused(capsys, argv, out) -> str:
    before = sorted(os.listdir(out))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{out} is in use by another lmlab process (pid " in err and "a test holder" in err, err
    assert sorted(os.listdir(out)) == before  # nothing written
    return err


def test_pretrain_is_refused_while_another_process_holds_the_dir_and_resumes_after_it_dies(
        held, tiny_args, capsys):
    out, proc = held
    refused(capsys, tiny_args(out, steps=2), out)
    refused(capsys, tiny_args(out, steps=2, resume=True), out)
    proc.send_signal(signal.SIGKILL)  # a crashed holder: its lock file stays, its lock does not
    proc.wait()
    assert (out / ".lmlab.lock").exists()
    assert main(tiny_args(out, steps=2, resume=True)) == 0
    assert not (out / ".lmlab.lock").exists()  # a run that ends removes its lock file


def test_finetune_convert_and_demo_are_refused_too(held, tiny_model_dir, tmp_path, capsys):
    from lmlab.tokenizers.wordpiece import WordPieceTokenizer

    out, _ = held
    text = "the cat sat on the mat and the dog ran home\n"
    model = tiny_model_dir("bert", WordPieceTokenizer.train([text] * 3, vocab_size=60))
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "the cat sat", "label": "a"}\n{"text": "the dog ran", "label": "b"}\n')
    refused(capsys, ["finetune", str(model), "--task", "classify", "--train", str(data), "--dev", str(data),
                     "--out", str(out), "--steps", "1", "--device", "cpu", "--no-progress"], out)
    refused(capsys, ["convert", "--to-hf", str(model), "--out", str(out)], out)
    refused(capsys, ["demo", "--out", str(out), "--minutes", "0.01", "--device", "cpu"], out)


def read_rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_pretrain_processes_on_one_out(tmp_path, tiny_args):
    """The first stalls at step 2 while holding the dir (a test hook), the second starts and is
    refused; the first, stopped by SIGTERM, leaves one history that a resume completes."""
    out = tmp_path / "run"
    env = {**os.environ, "LMLAB_TEST_STALL": "0:2"}
    first = subprocess.Popen([sys.executable, "-m", "lmlab", *tiny_args(out, steps=6)], env=env,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() or len(read_rows(out)) < 1:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.1)
    second = subprocess.run([sys.executable, "-m", "lmlab", *tiny_args(out, steps=6)], capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 2 and "is in use by another lmlab process" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143
    assert main(tiny_args(out, steps=6, resume=True)) == 0
    assert [r["step"] for r in read_rows(out) if "loss" in r] == [1, 2, 3, 4, 5, 6]  # one history


def test_a_filesystem_without_locks_warns_and_goes_on(tmp_path, tiny_args, monkeypatch, capsys):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "run"
    assert main(tiny_args(out, steps=2)) == 0
    err = capsys.readouterr().err
    assert f"lmlab: warning: {out} is on a filesystem without locks (No locks available)" in err


def test_a_process_may_hold_a_dir_twice(tmp_path):
    """`lmlab demo` runs `pretrain` into the dir it holds: the inner hold is a no-op."""
    from lmlab.paths import LOCK_FILE, DirLock

    with DirLock(tmp_path / "d", "demo"):
        with DirLock(tmp_path / "d", "pretrain"):
            pass
        assert (tmp_path / "d" / LOCK_FILE).exists()  # still held by the outer one
    assert not (tmp_path / "d").exists()  # made for the run, left empty: removed
