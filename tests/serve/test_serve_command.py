"""`lmlab serve DIR` as a user runs it: a process that prints its address, binds to loopback by default,
takes the key from --api-key or $LMLAB_API_KEY, stops on Ctrl-C, and refuses bad options in one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from serve_helpers import post, request

import lmlab
from lmlab.cli import main

SRC = str(Path(lmlab.__file__).parents[1])


def start(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **(env or {})})
    line = proc.stdout.readline()
    found = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
    if not found:
        proc.kill()
        raise AssertionError(f"no address printed: {line!r} {proc.stderr.read()}")
    return proc, found.group(1)


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=20)
    finally:
        proc.kill()


@pytest.mark.slow
def test_serve_command(gpt2_chars_dir):
    proc, url = start([str(gpt2_chars_dir), "--port", "0", "--name", "chars", "--max-tokens", "50"],
                      env={"LMLAB_API_KEY": "from-env"})
    try:
        assert request(url + "/healthz")[0] == 200
        assert request(url + "/v1/models")[0] == 401
        key = {"Authorization": "Bearer from-env"}
        status, out, _ = request(url + "/v1/models", headers=key)
        assert status == 200 and out["data"][0]["id"] == "chars"
        status, out, _ = post(url + "/v1/completions", {"prompt": "the", "max_tokens": 51}, headers=key)
        assert status == 422 and "[1, 50]" in out["error"]["message"]
        assert post(url + "/v1/completions", {"prompt": "the", "max_tokens": 5}, headers=key)[0] == 200
    finally:
        assert stop(proc) in (0, 130)  # 130: Ctrl-C, as uvicorn passes the signal on once it has shut down
    assert "Traceback" not in proc.stderr.read()


def test_bad_options_are_one_line(gpt2_chars_dir, tmp_path, capsys):
    assert main(["serve", str(gpt2_chars_dir), "--max-running", "0"]) == 2
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    busy = __import__("socket").socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        assert main(["serve", str(gpt2_chars_dir), "--port", str(busy.getsockname()[1])]) == 2
    finally:
        busy.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("lmlab serve: error: ") for line in lines)
    assert "--max-running must be >= 1" in lines[0] and "cannot listen on 127.0.0.1" in lines[2]


@pytest.mark.parametrize("flag", ["--help"])
def test_help_names_the_flags(flag, capsys):
    with pytest.raises(SystemExit):
        main(["serve", flag])
    text = capsys.readouterr().out
    for name in ("--host", "--port", "--api-key", "--max-running", "--max-queue", "--max-body"):
        assert name in text
