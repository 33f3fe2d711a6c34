"""SIGTERM and SIGINT during training: finish the step, write a checkpoint, stop with one line.

Schedulers send SIGTERM before they preempt a job (Slurm, Kubernetes and torchrun's agent wait
about 30 s before SIGKILL); Ctrl-C sends SIGINT. While the training loop runs, either signal only
sets a flag: the loop finishes the step it is in, writes a checkpoint of it (the one a regular save
at that step would write: model, optimizer, data position, RNG states, carried state), and raises
`Stopped`, which the CLI prints as one line and exits with 128 + the signal's number (143, 130).
`--resume` then continues exactly where it stopped. A second signal stops at once (SIGINT:
KeyboardInterrupt; SIGTERM: SystemExit(143)), as impatient users and schedulers expect; the temp
folder of a checkpoint it cuts short is removed or, after a SIGKILL, ignored and cleaned at resume.

Under torchrun every rank must stop after the same step: each step, the ranks agree on whether
any of them got a signal (lmlab.train.distributed.any_rank, one small host-side all-reduce).
Handlers are installed only from the main thread (Python allows no other) and restored after.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from lmlab.errors import Stopped
from lmlab.train.distributed import Dist, any_rank

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager: while inside, SIGTERM/SIGINT set `signum` instead of stopping the process."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        self.__exit__()  # a second signal: stop now
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def agreed(self, d: Dist) -> bool:
        """Whether to stop after this step: a signal here (or, under torchrun, on any rank)."""
        return any_rank(self.signum is not None, d) if d.enabled else self.signum is not None

    def stopped(self, step: int, checkpoint) -> Stopped:
        name = signal.Signals(self.signum).name if self.signum else "a signal on another process"
        code = 128 + (self.signum or signal.SIGTERM)
        return Stopped(f"stopped by {name} after step {step}: checkpoint {checkpoint} written; run the "
                       f"same command with --resume to continue", exit_code=code)


def fault_hooks(step: int, rank: int, stop: StopSignals) -> None:
    """Test hooks, read from the environment (the reliability tests and `make faults` use them):
    LMLAB_TEST_SIGNAL_AT=STEP sends this process SIGTERM at the end of that step (SIGINT with
    STEP:INT); LMLAB_TEST_STALL=RANK:STEP makes that rank stall there (until a signal, at most 120 s),
    as a hung process would."""
    at = os.environ.get("LMLAB_TEST_SIGNAL_AT")
    if at and int(at.split(":")[0]) == step:
        os.kill(os.getpid(), signal.SIGINT if at.endswith(":INT") else signal.SIGTERM)
    stall = os.environ.get("LMLAB_TEST_STALL")
    if stall and [int(x) for x in stall.split(":")] == [rank, step]:
        deadline = time.monotonic() + 120
        while stop.signum is None and time.monotonic() < deadline:
            time.sleep(0.05)
