"""The fault campaign (issue 16): `make faults`. Not part of `make test`: 10-15 minutes on two cores.

    python benchmarks/faults.py [--seed N] [--workers 2] [--quick]

It runs lmlab as a user would (`python -m lmlab ...`, this checkout's src/) and does to it what an
unlucky or hostile user, machine or scheduler does, with random timing drawn from --seed:

- kill: SIGKILL at a random moment of training, sometimes twice, then `--resume`;
- kill-in-checkpoint: SIGKILL at a random stage of a random checkpoint write (the LMLAB_TEST_CRASH_AT
  hook: after the weights, the optimizer, the trainer state, the manifest, or the commit), then `--resume`;
- sigterm: SIGTERM or SIGINT at a random moment (a scheduler's preemption, Ctrl-C), then `--resume`;
- full-disk: the run dir on a small tmpfs (root only; skipped with a message otherwise) that fills up
  at a checkpoint, the final save or a log line; then the disk grows and the run resumes;
- corrupt-checkpoint: a byte flipped, a file truncated, removed or replaced in the newest checkpoint
  (or in both), then `--resume`;
- concurrent: three new runs started at once on one --out, two resumes at once;
- hostile-input: Hugging Face folders with links out of the folder, FIFOs, /dev/zero, huge or deeply
  nested or non-UTF-8 configs, truncated weights, given to `lmlab convert --from-hf`;
- hostile-output: /dev/null, a FIFO, a path under /proc or under a file as --out.

Each training case runs one of the families with state between steps: gpt2, transfo-xl (memory
carried across steps), bert (MLM + NSP) and a BERT fine-tune (classify). Every case is compared with
an uninterrupted reference run of the same family: a case survives when every command it ran ended
as expected (a clean exit, or a refusal in one line with a non-zero code, never a traceback or a
hang) and the run it leaves equals the reference (the same loss, bit for bit, at every step, the same
final weights, no temp folder left). "steps lost": logged steps missing, doubled or different from
the reference at the end (nothing lost: 0). "steps redone": training steps done again after a
crash (a SIGKILL loses the work since the last checkpoint; a SIGTERM loses none). "max |dloss|":
the largest difference to the reference's logged losses after resuming.

The table goes to stdout and, with every case, to benchmarks/results/faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import faults_cases as cases  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
CLASSES = ["kill", "kill-in-checkpoint", "sigterm", "full-disk", "corrupt-checkpoint", "concurrent",
           "hostile-input", "hostile-output"]


def table(results: list[dict], skipped: dict[str, str]) -> list[dict]:
    rows = []
    for name in CLASSES:
        mine = [r for r in results if r["class"] == name]
        if not mine:
            rows.append({"class": name, "cases": 0, "survived": 0, "skipped": skipped.get(name, "no cases")})
            continue
        dloss = [r["max_dloss"] for r in mine if r.get("max_dloss") is not None]
        rows.append({"class": name, "cases": len(mine), "survived": sum(r["survived"] for r in mine),
                     "steps_lost": sum(r.get("steps_lost", 0) for r in mine),
                     "steps_redone": sum(r.get("steps_redone", 0) for r in mine),
                     "max_dloss": max(dloss) if dloss else None,
                     "families": sorted({r["family"] for r in mine if r.get("family")})})
    return rows


def show(rows: list[dict]) -> str:
    head = (f"{'class':<20} {'cases':>5} {'survived':>8} {'steps lost':>10} {'steps redone':>12} "
            f"{'max |dloss|':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r["cases"]:
            lines.append(f"{r['class']:<20} {'-':>5}  skipped: {r['skipped']}")
            continue
        d = "n/a" if r["max_dloss"] is None else f"{r['max_dloss']:.1e}" if r["max_dloss"] else "0"
        lines.append(f"{r['class']:<20} {r['cases']:>5} {r['survived']:>8} {r['steps_lost']:>10} "
                     f"{r['steps_redone']:>12} {d:>11}")
    total = sum(r["cases"] for r in rows), sum(r["survived"] for r in rows)
    lines.append(f"{'all':<20} {total[0]:>5} {total[1]:>8}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the random timings and choices")
    parser.add_argument("--workers", type=int, default=2, help="cases run at the same time")
    parser.add_argument("--quick", action="store_true", help="about a third of the cases")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lmlab-faults-"))
    print(f"lmlab fault campaign: seed {args.seed}, {args.workers} workers, work folder {work}", flush=True)
    lab = cases.Lab(work, random.Random(args.seed))
    lab.prepare()
    print(f"references ready ({time.perf_counter() - t0:.0f} s): "
          + ", ".join(f"{f} ({r.span:.1f} s of training)" for f, r in lab.refs.items()), flush=True)
    planned, skipped = lab.plan(quick=args.quick)
    for name, why in skipped.items():
        print(f"  {name}: skipped ({why})", flush=True)
    results = []
    with ThreadPoolExecutor(args.workers) as pool:
        for result in pool.map(lab.run, planned):
            results.append(result)
            mark = "ok " if result["survived"] else "FAIL"
            print(f"  [{mark}] {result['class']:<19} {result.get('family') or '':<10} {result['case']}"
                  + ("" if result["survived"] else f"  <- {result.get('why')}"), flush=True)
    rows = table(results, skipped)
    print()
    print(show(rows))
    wall = time.perf_counter() - t0
    print(f"\n{len(results)} cases in {wall:.0f} s; results in {args.out}")
    report = {"seed": args.seed, "workers": args.workers, "quick": args.quick, "wall_s": round(wall, 1),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform(), "root": os.geteuid() == 0},
              "classes": rows, "cases": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if not args.keep:
        lab.cleanup()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0 if all(r["survived"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
