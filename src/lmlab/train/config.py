"""TrainConfig: every knob of a training run, as plain values (also what `--config run.yaml` sets)."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.models.config import check_positive, require
from lmlab.options import option


@dataclass(frozen=True)
class TrainConfig:
    steps: int = option(1000, "optimizer steps")
    batch_size: int = option(32, "global batch: sequences per optimizer step over all processes")
    micro_batch_size: int | None = option(None, "sequences per forward per process (gradient accumulation; "
                                                "default: the whole per-process share)")
    seq_len: int = option(128, "tokens per training sequence")
    lr: float = option(3e-4, "peak learning rate")
    min_lr_ratio: float = option(0.1, "final lr as a fraction of the peak (cosine and linear decay)")
    warmup: int = option(100, "linear warmup steps")
    schedule: str = option("cosine", "decay after warmup; stlr: ULMFiT's slanted triangular rates (its own "
                                     "rise, restarted at every unfreezing stage)",
                           choices=("cosine", "linear", "constant", "stlr"))
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm (0 = off)")
    seed: int = option(0, "seed for weights, data order and dropout")
    log_every: int = option(10, "write metrics.jsonl every N steps")
    eval_every: int = option(200, "validation every N steps (0 = at the end only)")
    eval_batches: int = option(20, "validation batches per evaluation")
    save_every: int = option(500, "atomic checkpoint every N steps (0 = at the end only)")
    keep_checkpoints: int = option(2, "checkpoints kept (at least 2)")
    max_bad_steps: int = option(5, "non-finite steps in a row before the run stops")
    discriminative: float = option(1.0, "discriminative rates: each layer group below the top gets lr / "
                                        "this factor per group (ULMFiT: 2.6; 1 = off)")
    unfreeze_every: int = option(0, "gradual unfreezing: the top layer group first, one more every N "
                                    "steps (0 = off)")
    compile: bool = option(False, "torch.compile the model")
    fsdp: bool = option(False, "under torchrun: shard weights, gradients and optimizer state with FSDP2 "
                               "instead of DDP (docs/scaling.md)")
    collective_timeout: float = option(600.0, "under torchrun: seconds a process waits for the others at a "
                                              "collective before the run stops with a message (a stalled or "
                                              "dead process)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = option(True, "no progress bar", flag="no-progress")

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "seq_len", "log_every", "eval_batches", "max_bad_steps")
        require(self.micro_batch_size is None or self.micro_batch_size > 0,
                f"micro_batch_size must be positive, got {self.micro_batch_size!r}")
        require(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        require(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        require(self.warmup >= 0, f"warmup must be >= 0, got {self.warmup!r}")
        require(self.schedule in ("cosine", "linear", "constant", "stlr"),
                f"schedule must be cosine, linear, constant or stlr, got {self.schedule!r}")
        require(self.eval_every >= 0 and self.save_every >= 0, "eval_every and save_every must be >= 0")
        require(self.keep_checkpoints >= 2, f"keep_checkpoints must be >= 2, got {self.keep_checkpoints}")
        require(self.collective_timeout > 0,
                f"collective_timeout must be > 0 seconds, got {self.collective_timeout!r}")
        require(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip!r}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        require(self.discriminative > 0, f"discriminative must be > 0, got {self.discriminative!r}")
        require(self.unfreeze_every >= 0, f"unfreeze_every must be >= 0, got {self.unfreeze_every!r}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            require(0 <= value < 1, f"{name} must be in [0, 1), got {value!r}")
