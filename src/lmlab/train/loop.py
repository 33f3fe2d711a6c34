"""The training loop every objective uses: plain code, read top to bottom.

One optimizer step = `batch_size` sequences over all ranks, cut into micro-batches for gradient
accumulation. Each step: forward/backward per micro-batch, clip, guard, AdamW step, schedule.
Checkpoints are atomic and carry everything needed to resume bitwise-exactly on CPU.

An objective is `objective(model, batch) -> loss`. A *stateful* objective (one with a
`state_dict` method, e.g. `lmlab.objectives.clm_memory.MemoryCLM`: Transformer-XL memory) carries
state per row from step to step; the loop then
- calls it as `objective(model, micro_batch, rows)`, rows = the slice of this process's batch
  that the micro-batch holds (the same every step, so each slice continues its own state);
- calls `objective.reset()` before a batch for which the sampler says `reset_state` (the streams
  start over) and after a skipped (non-finite) step;
- saves `objective.state_dict()` (tensors with rows first) into the checkpoint's
  carried.safetensors, rows of all processes gathered in rank order, and on resume hands each
  process its own rows back through `objective.load_state_dict()`.

An objective may also own trainable parameters (training-only output layers, e.g. the character
transformer's intermediate classifiers, `lmlab.objectives.char_aux`): it then has a `module` (an
nn.Module). The loop moves it to the device, trains its parameters with the model's (AdamW groups
after the model's, so the model's optimizer state keeps its indices), clips them with the model's,
averages their gradients over the processes (they are outside DDP), and saves them into every
training checkpoint (objective.safetensors) and restores them on resume; the final model dir holds
the model only. A module with buffers alone (CVT's moving average of the weights) is saved and
restored the same way. An objective with `set_step(step)` is told each optimizer step (0-based) before it
runs: a schedule over training that is a pure function of the step, so resume is exact.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lmlab.checkpoints.io import save
from lmlab.errors import CheckpointError, LmlabError
from lmlab.nn.attention import training_attention
from lmlab.objectives.clm import clm_loss
from lmlab.train.config import TrainConfig
from lmlab.train.distributed import Dist, average_gradients, barrier, gather_rows, mean_over_ranks
from lmlab.train.guard import NonFiniteGuard
from lmlab.train.metrics import MetricsLog, plot_losses
from lmlab.train.optim import make_optimizer, set_trainable, trainable_groups
from lmlab.train.schedule import lr_at
from lmlab.train.signals import StopSignals, fault_hooks
from lmlab.train.state import (
    TRAINER_STATE,
    check_run_dir,
    load_carried,
    load_checkpoint,
    load_objective,
    remove_stale,
    resume_point,
    rotate,
    save_checkpoint,
    set_rng_state,
)


class TrainingError(LmlabError):
    """The run cannot go on (non-finite steps in a row, a batch that does not split)."""


@dataclass
class RunResult:
    steps: int
    tokens: int
    loss: float
    val_loss: float | None
    val_metrics: dict
    tokens_per_s: float
    skipped: int
    wall_s: float
    resumed_from: int | None


# A batch is a tuple/list of tensors (x, y) or a dict of named tensors (task batches).
def to_device(batch, device):
    def move(t: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda" and t.device.type == "cpu":
            # From pageable memory CUDA first waits for all queued GPU work (a stall every step);
            # from pinned memory the copy is queued like a kernel.
            t = t.pin_memory()
        return t.to(device, non_blocking=True)

    if isinstance(batch, dict):
        return {k: move(v) for k, v in batch.items()}
    return [move(t) for t in batch]


def rows(batch, start: int, end: int):
    if isinstance(batch, dict):
        return {k: v[start:end] for k, v in batch.items()}
    return [t[start:end] for t in batch]


def first_tensor(batch) -> torch.Tensor:
    return next(iter(batch.values())) if isinstance(batch, dict) else batch[0]


def own_rows(tensors: dict[str, torch.Tensor], mine: slice, batch_size: int, device) -> dict:
    """This process's rows of carried state saved for the whole global batch."""
    for name, t in tensors.items():
        if t.shape[0] != batch_size:
            raise TrainingError(f"the checkpoint's carried state {name} holds {t.shape[0]} rows but "
                                f"--batch-size is {batch_size}; resume with the batch size it was saved with")
    return {name: t[mine].to(device) for name, t in tensors.items()}


def split_batch(cfg: TrainConfig, d: Dist) -> tuple[int, int]:
    """(rows per rank, accumulation steps) for the global batch."""
    if cfg.batch_size % d.world_size:
        raise TrainingError(f"--batch-size {cfg.batch_size} does not split over {d.world_size} processes")
    per_rank = cfg.batch_size // d.world_size
    micro = cfg.micro_batch_size or per_rank
    if per_rank % micro:
        raise TrainingError(f"per-process batch {per_rank} is not a multiple of --micro-batch-size {micro}")
    return per_rank, per_rank // micro


def train(model: torch.nn.Module, tokenizer, cfg: TrainConfig, run_dir: str | Path, batches,
          evaluate: Callable[[torch.nn.Module], float] | None = None,
          objective: Callable = clm_loss, resume: bool = False, dist: Dist = Dist()) -> RunResult:
    """Train `model` in place for cfg.steps optimizer steps; the final weights go to `run_dir`.

    `batches` yields this rank's share of each global batch as a tuple of tensors and has
    state_dict()/load_state_dict() (its position goes into checkpoints). `evaluate(model)` returns
    a validation loss. `objective(model, batch) -> loss` defaults to causal LM; a stateful
    objective (see the module docstring) carries state across steps and into checkpoints.

    SIGTERM or SIGINT while it runs: the step is finished, a checkpoint of it written, and
    lmlab.errors.Stopped raised (lmlab.train.signals).
    """
    with StopSignals() as stop:
        return _train(model, tokenizer, cfg, Path(run_dir), batches, evaluate, objective, resume, dist, stop)


def _train(model, tokenizer, cfg: TrainConfig, run_dir: Path, batches, evaluate, objective, resume: bool,
           dist: Dist, stop: StopSignals) -> RunResult:
    device = next(model.parameters()).device
    per_rank, accum = split_batch(cfg, dist)
    stateful = callable(getattr(objective, "state_dict", None))
    scheduled = callable(getattr(objective, "set_step", None))
    own = getattr(objective, "module", None)  # the objective's own trainable parameters, if any
    if own is not None:
        own.to(device)
    own_params = [p for p in own.parameters() if p.requires_grad] if own is not None else []
    own_saved = own is not None and len(own.state_dict()) > 0  # parameters or buffers: checkpointed
    sharded, replica = cfg.fsdp and dist.enabled, None  # FSDP2 under torchrun (lmlab.train.fsdp)
    if sharded and own_params:
        raise TrainingError("this objective trains parameters of its own (training-only output layers); "
                            "run it with DDP, not --fsdp")
    if sharded:
        from lmlab.train import fsdp

        replica = fsdp.shard_model(model, dist)  # before the optimizer: parameters become shards
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device.type,
                               cfg.discriminative, extra=own_params)
    layers = model.layer_groups() if cfg.unfreeze_every else None
    if layers is not None and dist.enabled:
        raise TrainingError("gradual unfreezing (unfreeze_every) runs in one process, not under torchrun")
    start, tokens, skipped, bad_run, resumed, ckpt = 0, 0, 0, 0, None, None
    check_run_dir(run_dir, not resume)  # on every rank, before rank 0 writes anything
    if dist.is_main:
        remove_stale(run_dir)
    barrier(dist)
    if resume:
        ckpt, note = resume_point(run_dir)  # CheckpointError when every checkpoint is broken
        if note and dist.is_main:
            print(f"lmlab: {note}", file=sys.stderr)
    if ckpt is not None:
        state = (fsdp.load_sharded_checkpoint if sharded else load_checkpoint)(ckpt, model, optimizer)
        if own_saved:
            load_objective(ckpt, own)
        try:
            set_rng_state(state["rng"])
            batches.load_state_dict(state["sampler"])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt / TRAINER_STATE}: its rng or sampler state cannot be restored "
                                  f"({type(e).__name__}: {e})") from None
        if stateful:
            mine = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
            objective.load_state_dict(own_rows(load_carried(ckpt), mine, cfg.batch_size, device))
        start = resumed = state["step"]
        tokens, skipped, bad_run = state["tokens"], state["skipped"], state["bad_run"]
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=resumed) if dist.is_main else None
    guard = NonFiniteGuard(device, dist, skipped, bad_run)

    net = model
    if dist.enabled and not sharded:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    params = [p for p in model.parameters() if p.requires_grad]
    allowed = {id(p) for p in params}  # what unfreezing may switch on
    params += own_params
    batch_iter = iter(batches)
    bar = tqdm(total=cfg.steps, initial=start, disable=not (dist.is_main and cfg.progress),
               desc="train", unit="step", dynamic_ncols=True)
    loss_value, val_loss, val_metrics = float("nan"), None, {}
    t_start = t_last = time.perf_counter()
    tokens_at_last = tokens
    model.train()
    if own is not None:
        own.train()
    for step in range(start, cfg.steps):
        lr = lr_at(step, cfg.lr, cfg.steps, cfg.warmup, cfg.schedule, cfg.min_lr_ratio, cfg.unfreeze_every,
                   len(layers) if layers is not None else None)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # checkpoints before lr_scale have none
        if layers is not None:  # a pure function of the step: resume is exact
            set_trainable(layers, trainable_groups(step, len(layers), cfg.unfreeze_every), allowed)
        if scheduled:
            objective.set_step(step)
        batch = to_device(next(batch_iter), device)
        if stateful and getattr(batches, "reset_state", False):
            objective.reset()  # the streams start over: no row continues its old history
        loss_sum = torch.zeros((), device=device)
        for i in range(accum):
            part = slice(i * (per_rank // accum), (i + 1) * (per_rank // accum))
            micro = rows(batch, part.start, part.stop)
            # FSDP2 has no no_sync: it reduce-scatters every micro-batch's gradients into the shards.
            last = i == accum - 1 or not dist.enabled or sharded
            sync = contextlib.nullcontext() if last else net.no_sync()
            with sync, autocast, training_attention(device):  # a fresh one each time: single use
                loss = (objective(net, micro, part) if stateful else objective(net, micro)) / accum
            loss.backward()
            loss_sum += loss.detach()
        loss_mean = mean_over_ranks(loss_sum, dist)
        average_gradients(own_params, dist)
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if sharded:
            norm = fsdp.full_norm(norm)
        # The guard: a non-finite loss or gradient never reaches the weights (decided on the device).
        guard.step(optimizer, loss_mean, norm)
        if stateful and bool(guard.last_bad):
            objective.reset()  # the carried state of a non-finite step may be non-finite too
        tokens += cfg.batch_size * first_tensor(batch).shape[1]
        done = step + 1
        bar.update(1)
        log_step = done % cfg.log_every == 0 or done == cfg.steps
        evaluating = evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0)
                                               or done == cfg.steps)
        fault_hooks(done, dist.rank, stop)
        stopping = done < cfg.steps and stop.agreed(dist)  # a signal: checkpoint this step, then stop
        saving = (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps or stopping
        # Host values only where they are needed; the same steps on every rank, so all stop together.
        if log_step or evaluating or saving or stateful:
            skipped, bad_run = guard.counts()
            loss_value = float(loss_mean)
            if bad_run >= cfg.max_bad_steps:
                bar.close()
                raise TrainingError(f"stopped at step {done}: {bad_run} non-finite losses or gradients "
                                    f"in a row (lower --lr or check the data)")
        if dist.is_main and log_step:
            now = time.perf_counter()
            speed = (tokens - tokens_at_last) / max(now - t_last, 1e-9)
            t_last, tokens_at_last = now, tokens
            log.write({"step": done, "loss": loss_value, "lr": lr, "tokens": tokens,
                       "tokens_per_s": round(speed, 1), "grad_norm": float(norm), "skipped": skipped})
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{speed:,.0f}")
        if evaluating:
            result = evaluate(model)
            model.train()
            # A float is a validation loss; a dict (fine-tuning) holds named dev metrics.
            metrics = result if isinstance(result, dict) else {"loss": result}
            if "loss" in metrics and "ppl" not in metrics and not isinstance(result, dict):
                metrics["ppl"] = math.exp(min(metrics["loss"], 50))
            val_loss, val_metrics = metrics.get("loss"), metrics
            if dist.is_main:
                log.write({"step": done, **{f"val_{k}": v for k, v in metrics.items()}})
        if saving:
            # Every rank takes part in gathering the carried state; rank 0 writes it.
            carried = ({k: gather_rows(v, dist) for k, v in objective.state_dict().items()}
                       if stateful else None)
            # FSDP: every rank takes part in gathering full weights and optimizer state too.
            whole, whole_optimizer = (fsdp.gather(model, optimizer, replica, dist) if sharded
                                      else (model, optimizer))
            if dist.is_main:
                save_checkpoint(run_dir, done, whole, tokenizer, whole_optimizer,
                                {"tokens": tokens, "skipped": skipped, "bad_run": bad_run,
                                 "sampler": batches.state_dict(), "config": asdict(cfg)}, carried,
                                own.state_dict() if own_saved else None)
                rotate(run_dir, cfg.keep_checkpoints, protect=ckpt)  # never the one resumed from
            barrier(dist)
            if stopping:
                bar.close()
                raise stop.stopped(done, run_dir / "checkpoints" / f"step-{done}")
        if dist.is_main and done % cfg.log_every == 0:
            t_last = time.perf_counter()  # tokens/s counts training, not evaluation or saving
    bar.close()
    if layers is not None:  # unfreezing ends with the model as it came: a later run sees every parameter
        set_trainable(layers, len(layers), allowed)
    wall = time.perf_counter() - t_start
    whole = fsdp.gather(model, None, replica, dist)[0] if sharded else model
    if dist.is_main:
        save(whole, tokenizer, run_dir)
        plot_losses(log.read(), run_dir / "plots" / "loss.png", title=run_dir.name)
    barrier(dist)
    trained = cfg.steps - start
    return RunResult(steps=cfg.steps, tokens=tokens, loss=loss_value, val_loss=val_loss,
                     val_metrics=val_metrics, skipped=skipped, wall_s=wall, resumed_from=resumed,
                     tokens_per_s=trained * cfg.batch_size * cfg.seq_len / max(wall, 1e-9))
