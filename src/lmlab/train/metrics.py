"""metrics.jsonl (one JSON object per logged step) and the loss-curve PNG drawn from it.

Rows are written with `finite_json`: a NaN or infinite value (a skipped step's loss, say) is null,
and the row's `"non_finite"` object keeps what it was (`{"loss": "nan"}`), so every line is JSON.

A log is read line by line. A line that is not a JSON object (hand-edited, invalid UTF-8, nested
deeper than the parser goes) is skipped by readers and kept as it is; only a torn last line, one a
crash cut in the middle of a write, is dropped when a run resumes, and the resume says so.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from lmlab.checkpoints.atomic import finite_json, temp_output, write_bytes_atomic
from lmlab.errors import OutputError
from lmlab.paths import check_file_target


def parse_row(line: bytes) -> dict | None:
    """The row a line holds, or None when it is not a JSON object with an integer step."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return row if isinstance(row, dict) and type(row.get("step", 0)) is int else None


class MetricsLog:
    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = check_file_target(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self.truncate_after(resume_step)
        elif os.path.lexists(path):
            path.unlink()  # nothing to resume from (killed before its first checkpoint): start over

    def lines(self) -> list[bytes]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        return data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")

    def truncate_after(self, step: int) -> None:
        """Drop the rows a killed run logged after the checkpoint we resume from (they happen again)
        and a torn last line; every other line stays, a bad one in the middle as it is."""
        lines = self.lines()
        rows = [parse_row(line) for line in lines]
        if lines and rows[-1] is None:
            print(f"lmlab: {self.path}: dropped its last line, cut by a crash ({len(lines[-1])} bytes)",
                  file=sys.stderr)
            lines, rows = lines[:-1], rows[:-1]
        kept = {i for i, r in enumerate(rows) if r is not None and r.get("step", 0) <= step}
        end = max(kept) + 1 if kept else 0  # bad lines after the last kept row belong to the undone steps
        keep = [line for i, line in enumerate(lines[:end]) if rows[i] is None or i in kept]
        bad = sum(r is None for r in rows[:end])
        if bad:
            print(f"lmlab: {self.path}: {bad} line(s) are not JSON rows; kept as they are, readers skip "
                  f"them", file=sys.stderr)
        write_bytes_atomic(self.path, b"".join(line + b"\n" for line in keep))

    def write(self, row: dict) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(finite_json(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write ({e.strerror})") from None

    def read(self) -> list[dict]:
        """The rows, in order; lines that are not JSON rows are skipped."""
        return [row for row in map(parse_row, self.lines()) if row is not None]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_losses(rows: list[dict], out: Path, title: str = "") -> Path | None:
    """Training loss (and validation loss where logged) against step, as a PNG."""
    train = [(r["step"], r["loss"]) for r in rows if _number(r.get("loss"))]
    valid = [(r["step"], r["val_loss"]) for r in rows if _number(r.get("val_loss"))]
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
    out = check_file_target(out)
    tmp = out.with_name(out.stem + f".tmp-{os.getpid()}.png")
    try:
        fig.tight_layout()
        with temp_output(tmp, str(out), error=OutputError):
            fig.savefig(tmp)
            os.replace(tmp, out)
    finally:
        plt.close(fig)
    return out
