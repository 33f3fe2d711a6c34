"""Transformer-XL ablation on characters: the same model and steps with mem_len 0 vs 2 x tgt_len.

    python benchmarks/transformer_xl_ablation.py [--steps 1000] [--data builtin:ptb-char] [--out DIR]

Both runs train in parallel (one process each, one thread each) with `lmlab pretrain --model
transfo-xl` on contiguous streams; then each model is scored on the whole validation split with
the memory protocol (`lmlab evaluate --protocol memory`), at its own mem_len and at the other
one, so the table separates "trained with memory" from "evaluated with memory". Writes
benchmarks/results/transformer_xl_ablation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TGT = 64
MODEL = ["d_model=128", "n_layers=4", "n_heads=4", "d_head=32", "d_ff=512", "dropout=0.1"]


def pretrain_cmd(out: Path, args, mem_len: int) -> list[str]:
    sets = [x for item in [*MODEL, f"mem_len={mem_len}"] for x in ("--set", item)]
    valid = ["--valid", args.valid] if args.valid else []
    return [sys.executable, "-m", "lmlab", "pretrain", "--model", "transfo-xl", "--preset", "tiny",
            "--data", args.data, *valid, "--tokenizer", "chars", "--out", str(out),
            "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(TGT),
            "--lr", str(args.lr), "--warmup", "100",
            "--eval-every", "0", "--eval-batches", "4", "--save-every", "0", "--log-every", "50",
            "--device", args.device, "--no-progress", *sets]


def evaluate(model_dir: Path, args, mem_len: int, env: dict) -> dict:
    # A separate validation file is scored whole; otherwise the corpus's own valid split.
    data = ["--data", args.valid, "--split", "all"] if args.valid else ["--data", args.data,
                                                                      "--split", "valid"]
    cmd = [sys.executable, "-m", "lmlab", "evaluate", str(model_dir), *data, "--device", args.device,
           "--protocol", "memory", "--mem-len", str(mem_len), "--batch-size", "8"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each run (default 1000)")
    parser.add_argument("--data", default="builtin:ptb-char",
                        help="a character corpus (default builtin:ptb-char)")
    parser.add_argument("--valid", help="a separate validation text file (default: the corpus's split)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--out", default="runs/txl-ablation", help="where the two runs go (default "
                                                                    "runs/txl-ablation)")
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    mems = {"no memory": 0, "memory": 2 * TGT}
    start = time.perf_counter()
    procs = {name: subprocess.Popen(pretrain_cmd(Path(args.out) / f"mem{m}", args, m),
                                    env=env, stdout=subprocess.PIPE, text=True)
             for name, m in mems.items()}
    summaries = {}
    for name, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode:
            sys.exit(f"{name} run failed (exit {proc.returncode})")
        summaries[name] = out.strip().splitlines()[-1]
        common.log(f"{name}: {summaries[name]}")
    trained = time.perf_counter() - start
    rows = []
    for name, m in mems.items():
        row = {"run": f"trained mem_len {m}", "train_summary": summaries[name]}
        for eval_mem in mems.values():
            result = evaluate(Path(args.out) / f"mem{m}", args, eval_mem, env)
            row[f"bpc_eval_mem{eval_mem}"] = result["bpc"]
            row["tokens"] = result["tokens"]
        rows.append(row)
    payload = {"data": args.data, "valid": args.valid, "device": args.device, "steps": args.steps,
               "batch": args.batch_size, "lr": args.lr, "tgt_len": TGT, "model": MODEL,
               "eval": "memory protocol, whole validation split, 8 streams", "rows": rows,
               "train_seconds": round(trained, 1), "seconds": round(time.perf_counter() - start, 1)}
    shown = [{k: f"{v:.4f}" if k.startswith("bpc") else v for k, v in r.items()} for r in rows]
    print(common.table(shown, [("run", "model"), ("bpc_eval_mem0", "bpc, eval mem_len 0"),
                              (f"bpc_eval_mem{2 * TGT}", f"bpc, eval mem_len {2 * TGT}")]))
    print(f"{rows[0]['tokens']:,} validation characters; {payload['seconds']} s in all")
    suffix = "" if args.device == "cpu" else "_" + args.device.split(":")[0]
    common.write_results("transformer_xl_ablation" + suffix, payload)
    return payload


if __name__ == "__main__":
    main()
