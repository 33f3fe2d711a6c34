"""The structure rules of docs/architecture.md that a grep can check (the import layers themselves are
import-linter's contract in pyproject.toml, run by `make test`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import lmlab
from lmlab.models.registry import FAMILIES

SRC = Path(lmlab.__file__).parent
# Where a family may be named: its own declaration and files, its recipe, foreign layouts, the demo.
ALLOWED = ("models/", "train/recipes.py", "checkpoints/convert/", "demo.py")


def sources():
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), path.read_text(encoding="utf-8")


def test_no_module_names_a_family_or_probes_a_model():
    names = "|".join(re.escape(n) for n in FAMILIES)
    pattern = re.compile(rf'"({names})"|hasattr\(model')
    found = [f"{rel}:{n}" for rel, text in sources() if not rel.startswith(ALLOWED)
             for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_no_file_imports_another_files_private_names():
    found = [f"{rel}:{node.lineno}: {alias.name}" for rel, text in sources()
             for node in ast.walk(ast.parse(text)) if isinstance(node, ast.ImportFrom)
             and (node.module or "").startswith("lmlab") for alias in node.names
             if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert found == []


def test_checkpoints_never_import_the_task_code():
    imports = re.compile(r"^\s*(from|import) lmlab\.tasks", re.M)
    assert [rel for rel, text in sources() if rel.startswith("checkpoints/") and imports.search(text)] == []


def test_import_lmlab_loads_no_subpackage_until_asked():
    import subprocess
    import sys

    code = "import sys, lmlab; print(sorted(m for m in sys.modules if m.startswith('lmlab')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['lmlab', 'lmlab.version']"
    code = ("import lmlab; "
            "print(lmlab.eval.span_f1.__name__, lmlab.eval.squad_scores.__name__, lmlab.embed.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["span_f1", "squad_scores", "embed"]
