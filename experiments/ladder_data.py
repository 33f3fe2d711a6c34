"""Data steps of the reproduction ladder (experiments/ladder_rungs.py) that are not an `lmlab` command.

    PYTHONPATH=src python experiments/ladder_data.py polarity DIR [--train N]

polarity: builtin:polarity's full reviews (Pang & Lee's 1,500) as DIR/train.jsonl and DIR/dev.jsonl,
each text written the way PTB is tokenized (experiments/ulmfit.py's ptb_style), so that a language
model pretrained on builtin:ptb reads the reviews in its own vocabulary; --train keeps the first N
training reviews in a seeded order (default all).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ulmfit import jsonl, ptb_style  # noqa: E402


def polarity(out: Path, n_train: int | None) -> None:
    from lmlab.data.corpora import read_task_data

    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        rows = [{"text": ptb_style(r["text"]), "label": r["label"]}
                for r in read_task_data("builtin:polarity", split)]
        if split == "train" and n_train:
            random.Random(0).shuffle(rows)
            rows = rows[:n_train]
        print(f"{jsonl(out / f'{split}.jsonl', rows)}: {len(rows)} reviews")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("polarity",))
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=None, help="keep the first N training reviews")
    args = parser.parse_args()
    polarity(args.out, args.train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
