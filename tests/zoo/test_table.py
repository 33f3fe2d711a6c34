"""`lmlab zoo` is the registry, printed: every declared family has its row, with its declared cells."""

import json

import pytest
import torch

from lmlab.models import registry
from lmlab.zoo.table import COLUMNS, zoo_rows, zoo_table


def test_every_family_has_its_declared_row():
    rows = {row["family"]: row for row in zoo_rows()}
    assert set(rows) == set(registry.FAMILIES)
    for name, family in registry.FAMILIES.items():
        row = rows[name]
        assert (row["paper"], row["kind"], row["state"], row["readers"]) == (
            family.paper, family.kind, family.state, list(family.readers))
        assert family.lineage is not None, f"{name} declares no lineage for the summary table"
        assert row["network"] == family.lineage.network
        assert row["weights"] == list(family.lineage.weights)


def test_rows_follow_the_lineage_by_paper_year():
    years = [int(next(w for w in row["paper"].split() if w[:2] in ("19", "20") and w.isdigit()))
             for row in zoo_rows()]
    assert years == sorted(years)


class Fake(torch.nn.Module):
    pass


def test_a_new_family_gets_a_row(register_family):
    lineage = registry.Lineage("a fake | net", "unsupervised: nothing", "zero-shot", "task-agnostic", "/",
                               weights=("fake-release",), oracle="a notebook")
    register_family("fake-2016", Fake, paper="Nobody 2016", lineage=lineage)
    rows = zoo_rows()
    assert rows[0]["family"] == "fake-2016"  # 2016: before CoVe and everything else
    assert rows[0]["weights"] == ["fake-release"] and rows[0]["oracle"] == "a notebook"
    table = zoo_table("markdown").splitlines()
    assert len(table) == 2 + len(registry.FAMILIES)
    fake_line = next(line for line in table if line.startswith("| fake-2016 |"))
    assert "a fake \\| net" in fake_line  # a | in a cell is escaped, the row keeps its columns
    assert fake_line.count(" | ") == len(COLUMNS) - 1
    assert json.loads(zoo_table("json"))[0]["network"] == "a fake | net"


def test_a_family_without_lineage_shows_unknown_cells(register_family):
    register_family("bare", Fake)
    bare = next(row for row in zoo_rows() if row["family"] == "bare")
    assert bare["network"] == "?" and bare["weights"] == []


@pytest.mark.parametrize("fmt", ["markdown", "json"])
def test_cli_prints_the_table(fmt, capsys):
    from lmlab.cli import main

    assert main(["zoo", "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert out.strip() == zoo_table(fmt)
