"""benchmarks/common.py's memory children: the peak is what the measured call adds, per side."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import common  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")

MB = {"lmlab": 64, "hf": 160}  # each side's work allocates and touches this much


def allocate(side: str, loaded_mb: int):
    import torch

    loaded = torch.ones(loaded_mb << 18)  # setup's memory (like a model): not counted
    return lambda: torch.ones(MB[side] << 18).sum() + loaded[0]


def fail(side: str):
    raise ValueError(f"no model for {side}")


def test_peak_counts_the_work_not_the_setup():
    peaks = common.peak_memory(allocate, 200, threads=1)
    for side, mb in MB.items():
        assert not peaks[side]["peak_includes_load"]
        assert mb - 2 <= peaks[side]["peak_mb"] <= mb + 24, peaks  # + interpreter and allocator slack


def test_a_failing_child_is_an_error_naming_it():
    message = r"memory child for fail\('lmlab',\): ValueError: no model for lmlab"
    with pytest.raises(RuntimeError, match=message):
        common.peak_memory(fail, threads=1)
