"""Does composer conditioning work? Samples of a music model given only a composer token, against
that composer's real pieces: pitch range, note density, voices (lmlab.eval.music.note_statistics).

    python benchmarks/music_conditioning.py prepare --out runs/composers-data   # a labelled subsample
    lmlab pretrain --model music ... --data runs/composers-data --out runs/composers   # docs/music.md
    python benchmarks/music_conditioning.py compare runs/composers --data runs/composers-data

`prepare` links a subsample of builtin:music21-composers' train pieces into DIR/COMPOSER/*.mid (a
folder lmlab reads with its subfolders as composer labels). `compare` draws --samples continuations
of `composer:C` alone (the model picks the instruments, then the music) for each composer, and takes
the first --tokens tokens of each of the composer's pieces in the data as the real reference, so
both sides have the same length in tokens. It prints a table and writes
benchmarks/results/music_conditioning.json. The conditioning works when, for each statistic, the
composers come in the same order in the samples as in the real pieces.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from pathlib import Path

import numpy as np
import torch

import lmlab
from lmlab.eval.music import note_statistics

STATS = ("range", "density", "voices")
SUBSAMPLE = {"bach": 150, "palestrina": 100, "trecento": 55, "beethoven": 5}  # ~110k tokens each


def prepare(out: Path) -> None:
    from lmlab.data.music import read_pieces

    by = collections.defaultdict(list)
    for piece in read_pieces("builtin:music21-composers", "train"):
        by[piece.composer].append(piece)
    for composer, n in SUBSAMPLE.items():
        (out / composer).mkdir(parents=True, exist_ok=True)
        for piece in by[composer][:n]:
            link = out / composer / piece.path.name
            if not link.exists():
                os.symlink(piece.path, link)
    print({c: len(os.listdir(out / c)) for c in SUBSAMPLE})


def mean_stats(rows: list[dict]) -> dict:
    rows = [r for r in rows if r is not None]
    return {k: float(np.mean([r[k] for r in rows])) for k in STATS} | {"n": len(rows)}


def compare(run: Path, data: Path, samples: int, tokens: int, seed: int, temperature: float) -> dict:
    from lmlab.data.music import read_pieces

    model, tok = lmlab.load(run)
    model.eval()
    spq = tok.settings.steps_per_quarter
    pieces = collections.defaultdict(list)
    for split in ("train", "valid", "test"):
        for piece in read_pieces(str(data), split, progress=False):
            pieces[piece.composer].append(piece)
    result = {}
    for composer in sorted(pieces):
        real = [note_statistics(tok.decode_notes(tok.encode(p.path, composer=composer)[:tokens]), spq)
                for p in pieces[composer]]
        prompt = tok.prompt(composer)[:1]  # the composer token alone
        rows = lmlab.generate(model, [prompt], max_new_tokens=tokens - 1, do_sample=True,
                              temperature=temperature, top_k=0, seed=seed, num_return_sequences=samples,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        made, instruments = [], collections.Counter()
        for row in rows.tolist():
            notes = tok.decode_notes(row)
            instruments.update({n.program for n in notes})
            made.append(note_statistics(notes, spq))
        chosen = {tok.instruments[p]: c for p, c in instruments.most_common(4)}
        result[composer] = {"real": mean_stats(real), "samples": mean_stats(made),
                            "sample_instruments": chosen}
    order = {}
    for stat in STATS:
        by_real = sorted(result, key=lambda c: result[c]["real"][stat])
        by_samples = sorted(result, key=lambda c: result[c]["samples"][stat])
        order[stat] = {"real": by_real, "samples": by_samples, "agree": by_real == by_samples}
    return {"run": str(run), "data": str(data), "samples": samples, "tokens": tokens, "seed": seed,
            "temperature": temperature, "composers": result, "order": order}


def table(report: dict) -> str:
    lines = ["| composer | pitch range real / samples | notes per quarter real / samples "
             "| voices real / samples | pieces / samples |", "|---|---|---|---|---|"]
    for composer, r in report["composers"].items():
        cells = [f"{r['real'][s]:.1f} / {r['samples'][s]:.1f}" for s in STATS]
        lines.append(f"| {composer} | " + " | ".join(cells) + f" | {r['real']['n']} / {r['samples']['n']} |")
    for stat, o in report["order"].items():
        lines.append(f"\n{stat}: real {' < '.join(o['real'])}; samples {' < '.join(o['samples'])}"
                     f" ({'same order' if o['agree'] else 'different order'})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("run", type=Path)
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--samples", type=int, default=16)
    c.add_argument("--tokens", type=int, default=256)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out)
        return
    torch.set_num_threads(args.threads)
    report = compare(args.run, args.data, args.samples, args.tokens, args.seed, args.temperature)
    print(table(report))
    out = Path(__file__).parent / "results" / "music_conditioning.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
