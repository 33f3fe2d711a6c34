"""Checks the reliability tests share: a user error is one line naming what it should, and a call
that might hang or allocate without bound runs under a time and memory cap.

(tests/ is on sys.path: pytest puts the folder of the top conftest.py there.)
"""

from __future__ import annotations

import re
import resource
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest


class Hung(BaseException):
    """Raised by the alarm: not an Exception, so no handler in lmlab can turn it into a pass."""


@contextmanager
def bounded(seconds: int = 20, memory: int = 2 << 30):
    """Run the block for at most `seconds` and with at most `memory` more bytes of address space."""
    used = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = used + memory if hard == resource.RLIM_INFINITY else min(used + memory, hard)

    def alarm(*_):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def one_line_error(error: type[Exception], call, *needles: str) -> str:
    """The message of the `error` that `call()` raises: one line, holding every needle. The call runs
    `bounded()`, so a hang or a runaway allocation fails the test instead of stalling the machine."""
    with bounded(), pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message
