"""benchmarks/serve.py runs end to end on a small load: every request answered once, the results written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

# Loaded from its path: "serve" is also the name of tests/serve/.
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve.py"
spec = importlib.util.spec_from_file_location("benchmarks_serve", SCRIPT)
serve_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_bench)


@pytest.mark.slow
def test_the_load_test_runs(tmp_path):
    out = tmp_path / "serve.json"
    argv = ["--levels", "1,3", "--requests", "3", "--tokens", "5", "--repeats", "2", "--out", str(out)]
    assert serve_bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["pass"] and [r["clients"] for r in result["levels"]] == [1, 3]
    for row in result["levels"]:
        assert row["lost"] == 0 and row["dup"] == 0 and row["tokens"] == row["requests"] * 5
        assert row["same"] == row["requests"]
        assert row["after"]["running"] == 0 and row["after"]["cache_bytes"] == 0
