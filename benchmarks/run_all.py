"""Every CPU benchmark in sequence (generate, train, evaluate, bert, Transformer-XL) and one combined
table: `make bench`.

    python benchmarks/run_all.py [--quick] [--threads N] [--repeats R]

Each benchmark also writes its own benchmarks/results/<name>.json; the combined table goes to
benchmarks/results/all.json. See benchmarks/README.md for what is measured and the time budget.
Transformer-XL's peer needs transformers 4.44: transformer_xl_hf.py runs in the Python named by
LMLAB_ORACLE_PYTHON (default .venv-oracle/bin/python, which `make bench` builds); without one its
rows are left out, with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bert  # noqa: E402
import common  # noqa: E402
import evaluate  # noqa: E402

import generate  # noqa: E402
import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ORACLE_PYTHON = Path(os.environ.get("LMLAB_ORACLE_PYTHON", ROOT / ".venv-oracle" / "bin" / "python"))
COLUMNS = [*common.SPEED_COLUMNS, ("hf_greedy_ratio", "vs HF greedy"), ("same", "same output")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small config only, 3 repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 5)")
    args = parser.parse_args(argv)
    passed = ["--quick"] if args.quick else []
    passed += ["--threads", str(args.threads)] if args.threads else []
    passed += ["--repeats", str(args.repeats)] if args.repeats else []
    start = time.perf_counter()
    rows, seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp:  # one set of random models shared by both benchmarks
        for name, module, check in (("generate", generate, "tokens_equal"), ("train", train, "loss_equal"),
                                    ("evaluate", evaluate, "losses_equal"), ("bert", bert, "outputs_equal")):
            t0 = time.perf_counter()
            payload = module.main(passed, workdir=Path(tmp))
            seconds[name] = round(time.perf_counter() - t0, 1)
            rows += [{**row, "same": row[check]} for row in payload["rows"]]
            env = payload["env"]
    t0 = time.perf_counter()
    txl, txl_error = transformer_xl_hf(passed)
    if txl:
        rows += [{**row, "same": row["losses_equal"]} for row in txl["rows"]]
        seconds["transformer_xl_hf"] = round(time.perf_counter() - t0, 1)
    total = round(time.perf_counter() - start, 1)
    print()
    print(common.env_line(env))
    if txl:
        print(f"(txl rows: HF TransfoXLLMHeadModel from transformers {txl['env']['transformers']})")
    print(common.table(rows, COLUMNS))
    print(f"total {total} s ({', '.join(f'{k} {v} s' for k, v in seconds.items())})")
    common.write_results("all", {"env": env, "seconds": seconds, "total_seconds": total,
                                 "txl_transformers": txl["env"]["transformers"] if txl else None,
                                 "rows": [{k: row[k] for k, _ in COLUMNS if k in row} for row in rows]})
    if not all(row["same"] for row in rows):
        sys.exit("lmlab and HF disagree on some case (see the 'same output' column)")
    if txl_error:
        sys.exit(txl_error)


def transformer_xl_hf(passed: list[str]) -> tuple[dict | None, str | None]:
    """(transformer_xl_hf.py's results, None), run in the oracle Python with lmlab from src/;
    (None, None) without that Python; (None, what failed) when the script fails."""
    if not ORACLE_PYTHON.exists():
        common.log(f"transformer_xl_hf: skipped, no Python with transformers 4.44 at {ORACLE_PYTHON} "
                   f"(`make oracle` builds one; LMLAB_ORACLE_PYTHON names another)")
        return None, None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    script = Path(__file__).resolve().parent / "transformer_xl_hf.py"
    done = subprocess.run([str(ORACLE_PYTHON), str(script), *passed], env=env)
    if done.returncode:  # the other benchmarks' table is still printed; main() fails at the end
        return None, (f"{script.name} exited with status {done.returncode} in {ORACLE_PYTHON} "
                      f"(its output is above); its rows are left out")
    return json.loads((common.RESULTS / "transformer_xl_hf.json").read_text()), None


if __name__ == "__main__":
    main()
