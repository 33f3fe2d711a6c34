"""docs/results.md's ladder holds only numbers its records hold, and each record is what today's rung
commands produced: the commands match the rung, the number follows from the record's results."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

from ladder_rungs import RUNGS  # noqa: E402

import ladder  # noqa: E402

RECORDS = ladder.load_records()


def test_every_rung_has_a_record_and_every_record_a_rung():
    assert set(RECORDS) == set(RUNGS)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_a_record_ran_the_rungs_commands_and_its_number_follows(name):
    record, rung = RECORDS[name], RUNGS[name]
    assert record["recipe"] == "full"
    assert record["commands"] == [ladder.shown(s.argv, f"runs/ladder/{name}") for s in rung.steps(False)]
    assert rung.number(record["results"]) == pytest.approx(record["number"], abs=1e-12)
    assert abs(record["number"] - rung.full.expected) <= rung.full.tolerance


def test_the_page_is_the_rendering_of_the_records():
    assert ladder.DOCS.read_text(encoding="utf-8") == ladder.render_docs(), \
        "docs/results.md is stale: run `python experiments/ladder.py --docs`"


def test_the_table_has_a_row_per_rung_with_its_measured_number():
    table = ladder.table(RECORDS)
    for name, record in RECORDS.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| [{name}]"))
        assert f"{record['number']:.{RUNGS[name].digits}f}" in row
