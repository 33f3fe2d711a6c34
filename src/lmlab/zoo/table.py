"""`lmlab zoo`: the lecture's summary table (base model, pre-training, downstream tasks, downstream
model, fine-tuning) with one row per registered family, in the lineage's order (by paper year),
plus what each family can load and the oracle it is checked against.

Nothing here names a family: every cell comes from `models.registry` (a family declared there shows
up here), so the table cannot drift from what lmlab actually builds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lmlab.models.registry import FAMILIES, family_spec
from lmlab.options import option

FORMATS = ("markdown", "json")
# (column title, row key) in the lecture's order, then lmlab's own columns.
COLUMNS = (("family", "family"), ("paper", "paper"), ("base model", "network"),
           ("pre-training", "pretraining"), ("downstream tasks", "downstream"),
           ("downstream model", "downstream_model"), ("fine-tuning", "finetuning"),
           ("kind", "kind"), ("state", "state"), ("task readers", "readers"),
           ("published weights", "weights"), ("checked against", "oracle"))
UNKNOWN = "?"  # a family declared without a lineage (a test's or a user's own)


@dataclass(frozen=True)
class ZooOptions:
    """`lmlab zoo`: the lineage's summary table, one row per model family lmlab builds: its network,
    pretraining, downstream use and fine-tuning (as in the lecture's summary), the published weights it
    loads and the oracle its outputs are checked against."""

    format: str = option("markdown", "markdown (a table) or json (a list of rows)", choices=FORMATS)
    run: bool = option(False, "train every family with its own recipe under one CPU budget and measure "
                              "each the way its paper did (LM quality, downstream score, speed) into --out")
    budget_minutes: float = option(30.0, "--run: minutes in all, shared equally by the families")
    families: tuple[str, ...] = option((), "--run: only these families (default: every declared one)",
                                       nargs="+", metavar="FAMILY")
    out: str = option("runs/zoo", "--run: report dir (results.json, results.md, PNG charts); a second run "
                                  "there resumes, skipping finished families")
    lr: float = option(1e-3, "--run: peak learning rate of every pretraining")
    batch_size: int = option(16, "--run: pretraining sequences per step")
    eval_tokens: int = option(20000, "--run: test tokens scored per causal LM")
    seed: int = option(0, "--run: seed of every run")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = option(True, "no progress bars", flag="no-progress")

    def __post_init__(self):
        from lmlab.errors import ConfigError

        if not self.budget_minutes > 0:
            raise ConfigError(f"--budget-minutes must be > 0, got {self.budget_minutes!r}")
        for name in ("batch_size", "eval_tokens"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")


def _year(paper: str) -> int:
    years = re.findall(r"\b(?:19|20)\d\d\b", paper)
    return int(years[0]) if years else 9999


def zoo_rows() -> list[dict]:
    """One dict per family, keys as in COLUMNS; ordered by paper year, then declaration order."""
    rows = []
    for name in FAMILIES:
        spec = family_spec(name)
        about = spec.lineage
        row = {"family": name, "paper": spec.paper, "kind": spec.kind, "state": spec.state,
               "readers": list(spec.readers)}
        for key in ("network", "pretraining", "downstream", "downstream_model", "finetuning", "oracle"):
            row[key] = getattr(about, key) if about else UNKNOWN
        row["weights"] = list(about.weights) if about else []
        rows.append(row)
    return sorted(rows, key=lambda row: _year(row["paper"]))


def _cell(value) -> str:
    text = ", ".join(value) if isinstance(value, list) else str(value)
    return (text or "-").replace("|", "\\|")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for title, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[key]) for _, key in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def zoo_table(fmt: str = "markdown") -> str:
    rows = zoo_rows()
    return json.dumps(rows, indent=2, ensure_ascii=False) if fmt == "json" else markdown_table(rows)
