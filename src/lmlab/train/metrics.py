"""metrics.jsonl (one JSON object per logged step) and the loss-curve PNG drawn from it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from lmlab.checkpoints.atomic import write_bytes_atomic


class MetricsLog:
    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self.truncate_after(resume_step)
        elif path.exists():
            path.unlink()  # nothing to resume from (killed before its first checkpoint): start over

    def truncate_after(self, step: int) -> None:
        """Drop lines a killed run logged after the checkpoint we resume from: they happen again."""
        rows = [r for r in self.read() if r.get("step", 0) <= step]
        write_bytes_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def write(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash ends the log
        return rows


def plot_losses(rows: list[dict], out: Path, title: str = "") -> Path | None:
    """Training loss (and validation loss where logged) against step, as a PNG."""
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])]
    valid = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train and not valid:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train", linewidth=1)
    if valid:
        ax.plot([s for s, _ in valid], [v for _, v in valid], "o-", label="validation", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + f".tmp-{os.getpid()}.png")
    fig.tight_layout()
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out
