"""Every rung of the reproduction ladder, cut short: the same commands with a few steps must give the
short recipe's own expected number (experiments/ladder_rungs.py), so a regression in any family's
training, evaluation or fine-tuning moves a number here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

from ladder_rungs import RUNGS  # noqa: E402

import ladder  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNGS))
def test_the_short_recipe_gives_its_expected_number(name, tmp_path):
    expect = RUNGS[name].short
    number = ladder.run_rung(RUNGS[name], tmp_path, short=True, threads=2)["number"]
    assert abs(number - expect.expected) <= expect.tolerance, \
        f"{name}: {number:.4f}, expected {expect.expected:.4f} ± {expect.tolerance:.4f}"
