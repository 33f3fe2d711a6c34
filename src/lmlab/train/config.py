"""TrainConfig: every knob of a training run, as plain values (also what `--config run.yaml` sets)."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.models.config import check_positive, require


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # global: sequences per optimizer step, over all ranks and accumulation
    micro_batch_size: int | None = None  # per rank per forward; None = the whole per-rank share
    seq_len: int = 128
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine/linear decay ends at lr * min_lr_ratio
    warmup: int = 100
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200  # 0 = only at the end
    eval_batches: int = 20
    save_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 2
    max_bad_steps: int = 5  # non-finite steps in a row before the run stops
    discriminative: float = 1.0  # per layer group down from the top, lr / discriminative^k (ULMFiT: 2.6)
    unfreeze_every: int = 0  # gradual unfreezing: top layer group first, one more every N steps (0 = off)
    compile: bool = False
    fsdp: bool = False  # under torchrun: FSDP2 sharding instead of DDP (lmlab.train.fsdp)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    progress: bool = True

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "seq_len", "log_every", "eval_batches", "max_bad_steps")
        require(self.micro_batch_size is None or self.micro_batch_size > 0,
                f"micro_batch_size must be positive, got {self.micro_batch_size!r}")
        require(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        require(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        require(self.warmup >= 0, f"warmup must be >= 0, got {self.warmup!r}")
        require(self.schedule in ("cosine", "linear", "constant"),
                f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        require(self.eval_every >= 0 and self.save_every >= 0, "eval_every and save_every must be >= 0")
        require(self.keep_checkpoints >= 2, f"keep_checkpoints must be >= 2, got {self.keep_checkpoints}")
        require(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip!r}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        require(self.discriminative > 0, f"discriminative must be > 0, got {self.discriminative!r}")
        require(self.unfreeze_every >= 0, f"unfreeze_every must be >= 0, got {self.unfreeze_every!r}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            require(0 <= value < 1, f"{name} must be in [0, 1), got {value!r}")
