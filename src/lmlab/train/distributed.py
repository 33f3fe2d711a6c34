"""torchrun support: one process per device, DDP, only rank 0 writes.

`torchrun --nproc-per-node N -m lmlab pretrain ...` sets RANK/WORLD_SIZE/LOCAL_RANK; without them
everything here is a no-op and the same code runs as one process.

Timeouts. A rank that stalls (a hung device, a stuck filesystem) or dies leaves the others waiting at
their next collective. The training collectives (loss and gradient all-reduces, the guard's vote,
gathers) give up after `TrainConfig.collective_timeout` seconds (default 600; torch's own default is
30 minutes), and the run stops with one line (`collective_failure`, a CollectiveError) on each rank
that noticed. Waiting for rank 0 to finish what only it does (train the tokenizer, tokenize the corpus,
write a checkpoint) is not a stall: `barrier` waits on a separate gloo group, for up to WAIT_HOURS.
A second gloo group carries host-side votes (`any_rank`: did any rank get SIGTERM?), so that on GPUs
they never wait for queued device work. With NCCL, torch's watchdog may also abort a process at the
timeout, with its own message.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmlab.errors import CollectiveError, ConfigError
from lmlab.paths import DirLock

WAIT_HOURS = 24
_GROUPS: dict[str, object] = {}  # "host": votes on the host; "wait": barriers while rank 0 works


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float | None = None  # the collective timeout (None: torch's default)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str, timeout_s: float | None = None) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    backend = "nccl" if device_type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    if not _GROUPS:  # every rank creates them, in the same order
        host = dist.new_group(backend="gloo", timeout=timeout) if dist.get_backend() != "gloo" else None
        _GROUPS["host"] = host
        _GROUPS["wait"] = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=WAIT_HOURS))
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), timeout_s)


def mean_over_ranks(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= d.world_size
    return value


def average_gradients(params: list[torch.Tensor], d: Dist) -> None:
    """Average the gradients of parameters DDP does not hold (an objective's own) over the ranks.
    Every rank has gradients for the same parameters (what is trained is a function of the step)."""
    if not d.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= d.world_size


def gather_rows(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Every rank's `t` (same shape on each) concatenated along dim 0 in rank order."""
    if not d.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(d.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def any_rank(flag: bool, d: Dist) -> bool:
    """Whether `flag` is true on any rank (every rank calls it at the same point), decided on the host."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_GROUPS.get("host"))
    return bool(t.item())


def barrier(d: Dist) -> None:
    """Every rank waits here for the others, rank 0's own work included (see the module docstring)."""
    if d.enabled:
        dist.barrier(group=_GROUPS.get("wait"))


def hold_run_dir(run_dir, command: str, d: Dist) -> DirLock | None:
    """Rank 0 takes the run dir's lock (lmlab.paths.DirLock); if it cannot, every rank stops, not only
    rank 0 (the others would wait for it at the next collective)."""
    lock, error = None, None
    if d.is_main:
        try:
            lock = DirLock(run_dir, command)
        except ConfigError as e:
            error = e
    if any_rank(error is not None, d):
        raise error or ConfigError(f"rank 0 cannot take the run dir {run_dir} (see its message)")
    return lock


# Words in torch's messages for a collective that failed (gloo and NCCL), rather than a bug.
_FAILURE_WORDS = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe",
                  "pair closure", "nccl", "gloo", "watchdog")


def collective_failure(e: BaseException, d: Dist) -> CollectiveError | None:
    """The one line for `e` if it is a collective that failed under torchrun, else None."""
    text = str(e)
    known = isinstance(e, getattr(dist, "DistError", ())) or any(w in text.lower() for w in _FAILURE_WORDS)
    if not d.enabled or not isinstance(e, RuntimeError) or not known:
        return None
    first = " ".join(text.split("\n")[0].split())
    if first.startswith("[") and "] " in first:
        first = first.split("] ", 1)[1]  # torch's source location
    limit = f"{d.timeout_s:g} s (--collective-timeout)" if d.timeout_s else "torch's default timeout"
    return CollectiveError(f"rank {d.rank}: a collective with the other processes failed ({first[:160]}); "
                           f"one of them stalled past {limit} or died; resume with --resume")


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
    _GROUPS.clear()
