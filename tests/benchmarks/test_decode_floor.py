"""benchmarks/decode_floor.py reads every weight matrix of the model once per token, the tied
output layer once, the position table not at all."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import decode_floor  # noqa: E402

import lmlab  # noqa: E402


def test_the_floor_reads_each_weight_matrix_once_per_token(monkeypatch):
    model = lmlab.build("gpt2", "tiny")  # 2 blocks of d_model 48, d_ff 192, vocab 256
    d, ff, vocab = 48, 192, 256
    per_block = d * 3 * d + d * d + d * ff + ff * d
    run, nbytes = decode_floor.weight_reader(model, steps=3)
    assert nbytes == 4 * (2 * per_block + vocab * d)
    shapes = []
    monkeypatch.setattr(torch, "mm", lambda x, m: shapes.append(tuple(m.shape)) or x @ m)
    monkeypatch.setattr(decode_floor.F, "linear", lambda x, w: shapes.append(("out",) + tuple(w.shape)))
    run()
    assert sorted(set(shapes), key=str) == sorted({(d, 3 * d), (d, d), (d, ff), (ff, d), ("out", vocab, d)},
                                                  key=str)
    assert len(shapes) == 3 * (2 * 4 + 1)
