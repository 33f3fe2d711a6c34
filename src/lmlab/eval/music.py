"""Negative log-likelihood per event of a music model on held-out pieces, the measure the Music
Transformer reports (Huang et al. 2018, §4.1 Table 1: NLL per event on JSB Chorales, with and
without relative attention).

Every piece is scored on its own, from its conditioning prefix (composer and instruments, given,
not predicted) to its `<eos>`: each event token once, windows as `lmlab.data.music_windows.
piece_windows` makes them (a piece longer than the window continues in windows that start with
its prefix again). The result is the mean over events, in nats.

`note_statistics` describes a piece (or a sample) by three numbers that tell composers apart:
pitch range, note density and the number of voices sounding at once.
"""

from __future__ import annotations

import math

import torch

from lmlab.data.music_windows import IGNORE_INDEX, PieceIndex, piece_windows
from lmlab.errors import ConfigError, DataError
from lmlab.tokenizers.midi_notes import DRUMS


@torch.no_grad()
def music_nll(model, shard, tokenizer, seq_len: int, batch_size: int = 8, stride: int | None = None,
              max_batches: int | None = None, max_events: int | None = None) -> dict:
    """{"nll_per_event", "events", "windows"} of `model` on the pieces of a music token shard
    (the first `max_batches` batches only, or the batches up to the one that reaches `max_events`
    scored events, when given: the same ones every call)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    events = windows = 0
    try:
        for i, (x, y) in enumerate(piece_windows(shard, seq_len, tokenizer, stride, batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            if max_events is not None and events >= max_events:
                break
            y = y.to(device)
            total += model(x.to(device), targets=y).nll.double().sum()
            events += int((y != IGNORE_INDEX).sum())
            windows += x.shape[0]
    finally:
        model.train(was_training)
    if events == 0:
        raise DataError("the music data holds no events to score")
    return {"nll_per_event": float(total) / events, "events": events, "windows": windows}


def music_evaluate(model, tokenizer, model_dir: str, data: str, split: str, window: int | None,
                   stride: int | None, batch_size: int, max_tokens: int | None = None) -> dict:
    """`lmlab evaluate` for a model with a MIDI tokenizer: NLL per event on `split` of a music source
    ("tokens" = the events scored; `max_tokens`: stop after the batch that reaches that many)."""
    from lmlab.data.music_shards import prepare_music

    if split not in ("train", "valid", "test"):
        raise ConfigError(f"--split {split}: music is split by piece into train, valid and test")
    context = model.config.max_seq_len
    window = context if window is None else window
    if not 2 <= window <= context:
        raise ConfigError(f"--window {window} must be in 2..{context} (the model's context)")
    shard = prepare_music(data, tokenizer, splits=(split,))[split]
    result = music_nll(model, shard, tokenizer, window, batch_size, stride, max_events=max_tokens)
    tokens = getattr(shard, "tokens", shard)
    pieces = len(PieceIndex(tokens, tokenizer.start_token_id, tokenizer.eos_token_id))
    return {"model_dir": str(model_dir), "data": data, "split": split, "pieces": pieces, **result,
            "loss": result["nll_per_event"], "ppl": math.exp(min(result["nll_per_event"], 50)),
            "tokens": result["events"], "window": window, "stride": stride, "max_tokens": max_tokens}


def note_statistics(notes, steps_per_quarter: int) -> dict | None:
    """{"range": highest - lowest pitch (semitones), "density": notes per quarter note from the first
    onset to the last end, "voices": mean number of notes sounding over the time anything sounds,
    "notes"} of pitched notes (midi_notes.Note; drums left out); None without any."""
    import numpy as np

    notes = [n for n in notes if n.program != DRUMS]
    if not notes:
        return None
    start, end = min(n.start for n in notes), max(n.end for n in notes)
    sounding = np.zeros(end - start, dtype=np.int64)
    for n in notes:
        sounding[n.start - start:n.end - start] += 1
    pitches = [n.pitch for n in notes]
    return {"range": max(pitches) - min(pitches), "density": len(notes) * steps_per_quarter / (end - start),
            "voices": float(sounding[sounding > 0].mean()), "notes": len(notes)}
