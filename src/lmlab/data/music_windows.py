"""Windows of music token shards that keep each piece's conditioning: training batches (random
windows, optionally transposed and stretched) and evaluation windows (every event of every piece
scored once, each piece on its own).

A music shard (`music_shards.prepare_music`) is pieces one after another, each
`composer:C instrument:A ... <start> events ... <eos>`. A window of a random offset usually starts
in the middle of a piece, after its prefix: the model would then have to guess whose music it is
reading, and the prefix it is given at generation time would only ever have been seen at piece
starts. MuseNet prepended the composer and instrumentation tokens to every training sample (Payne
2019); lmlab does the same:

- a window whose offset falls inside a piece's prefix starts at the piece's first token (the
  prefix is there already);
- any other window is `prefix of its piece + the tokens from the offset`, seq_len + 1 in all. The
  prefix is context only: its targets and the target of the join (`<start>` followed by an event
  from the middle of the piece) are not scored (-100), so the model never learns that a piece
  opens mid-phrase. Windows that cross into the next piece read its own prefix as they come to it.
  (`prefix=False` gives plain random windows, for comparison.)

A window cut mid-piece can open with note-offs of notes that started before it; the decoder
ignores them, and they teach the model nothing wrong. The musenet encoding writes a program token
only when the instrument changes, so such a window can lack one until the next change; the
augmenter knows each position's instrument from the whole shard.

Augmentation (MuseNet and the Music Transformer, §4: transposition and time stretch), per window:
a whole number of semitones drawn uniformly from [-transpose, transpose], cut back so that no note
leaves MIDI's 0..127, and a stretch factor uniform in [1 - stretch, 1 + stretch]
(`tokenizers.midi_augment`). Both are drawn from the (seed, step) generator like the offsets, so
a batch is a pure function of (seed, step, rank) and resume is exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from lmlab.data.sampler import Stepper
from lmlab.errors import ConfigError, DataError

IGNORE_INDEX = -100  # lmlab.nn.lm_loss.IGNORE_INDEX: targets that are not scored


def _tokens(shard) -> np.ndarray:
    return getattr(shard, "tokens", shard)


class PieceIndex:
    """Where each piece of a token stream starts, where its prefix ends (just after `<start>`; equal
    to the start for a piece without one) and where it ends (its `<eos>`, or the stream's end)."""

    def __init__(self, tokens: np.ndarray, start_id: int, eos_id: int):
        tokens = np.asarray(tokens)
        n = len(tokens)
        eos = np.flatnonzero(tokens == eos_id)
        starts = np.concatenate([[0], eos + 1]).astype(np.int64)
        ends = np.concatenate([eos, [n - 1]]).astype(np.int64)
        keep = starts < n  # a stream that ends with <eos> has no piece after it
        self.starts, self.ends = starts[keep], ends[keep]
        marks = np.flatnonzero(tokens == start_id)
        first = np.searchsorted(marks, self.starts)  # the first <start> at or after each piece start
        mark = marks[np.minimum(first, max(len(marks) - 1, 0))] if len(marks) else self.starts - 1
        has = (first < len(marks)) & (mark <= self.ends)
        self.prefix_ends = np.where(has, mark + 1, self.starts)

    def __len__(self) -> int:
        return len(self.starts)

    def piece_of(self, offset: int) -> int:
        return int(np.searchsorted(self.starts, offset, side="right") - 1)


class MusicWindows(Stepper):
    """Infinite (x, y) batches of conditioned windows (see the module docstring); y holds -100 where
    a target is not scored. `batch_size` is the global batch; each rank gets its rows of it."""

    kind = "music_windows"

    def __init__(self, shard, seq_len: int, batch_size: int, tokenizer, seed: int = 0, rank: int = 0,
                 world_size: int = 1, prefix: bool = True, transpose: int = 0, stretch: float = 0.0):
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("world_size", world_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if batch_size % world_size or not 0 <= rank < world_size:
            raise ConfigError(f"global batch {batch_size} does not split over {world_size} processes")
        if not isinstance(transpose, int) or not 0 <= transpose <= 24:
            raise ConfigError(f"transpose must be a whole number of semitones in 0..24, got {transpose!r}")
        if not isinstance(stretch, (int, float)) or not 0 <= stretch <= 0.5:
            raise ConfigError(f"stretch must be in [0, 0.5], got {stretch!r}")
        tokens = _tokens(shard)
        if len(tokens) < seq_len + 1:
            raise DataError(f"{getattr(shard, 'path', 'token array')} has {len(tokens)} tokens, fewer than "
                            f"seq_len + 1 = {seq_len + 1}")
        self.shard, self.seq_len, self.batch_size = shard, seq_len, batch_size
        self.seed, self.rank, self.world_size, self.step = int(seed), rank, world_size, 0
        self.prefix, self.transpose, self.stretch = prefix, transpose, float(stretch)
        self.pad_id = tokenizer.pad_token_id
        self.pieces = PieceIndex(tokens, tokenizer.start_token_id, tokenizer.eos_token_id)
        self.augmenter = self.programs = None
        if transpose or stretch:
            from lmlab.tokenizers.midi_augment import EventAugmenter

            self.augmenter = EventAugmenter(tokenizer)
            self.programs = self.augmenter.program_at(tokens) if transpose else None

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (x, y) of global batch `step`, each (batch_size/world_size, seq_len) int64."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, int(step)])))
        n = len(_tokens(self.shard))
        offsets = rng.integers(0, n - self.seq_len, size=self.batch_size, dtype=np.int64)
        semitones = rng.integers(-self.transpose, self.transpose + 1, size=self.batch_size)
        factors = rng.uniform(1 - self.stretch, 1 + self.stretch, size=self.batch_size)
        rows = range(self.batch_size)[self._rows()]
        windows = [self.window(int(offsets[r]), int(semitones[r]), float(factors[r])) for r in rows]
        ids = np.stack([w for w, _ in windows])  # (b, seq_len + 1)
        scored = np.stack([s for _, s in windows])  # (b, seq_len)
        x, y = ids[:, :-1], np.where(scored, ids[:, 1:], IGNORE_INDEX)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))

    def window(self, offset: int, semitones: int = 0, factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(ids (seq_len + 1,), scored (seq_len,)): the window at `offset` with its piece's prefix,
        augmented; scored[t] says whether the target ids[t + 1] counts."""
        tokens = _tokens(self.shard)
        head = np.zeros(0, dtype=np.int64)
        if self.prefix:
            i = self.pieces.piece_of(offset)
            start, prefix_end = int(self.pieces.starts[i]), int(self.pieces.prefix_ends[i])
            if offset < prefix_end:
                offset = start  # inside the prefix: the window starts with the whole piece
            elif prefix_end > start and 2 * (prefix_end - start) <= self.seq_len:
                head = np.asarray(tokens[start:prefix_end], dtype=np.int64)
        need = self.seq_len + 1 - len(head)
        ids = np.concatenate([head, self._body(tokens, offset, need, semitones, factor)[:need]])
        scored = np.ones(self.seq_len, dtype=bool)
        scored[:len(head)] = False  # the prefix and the join: context, not targets
        if len(ids) < self.seq_len + 1:  # stretched shorter at the stream's end: padded, not scored
            scored[len(ids) - 1:] = False
            ids = np.concatenate([ids, np.full(self.seq_len + 1 - len(ids), self.pad_id, dtype=np.int64)])
        return ids, scored

    def _body(self, tokens, offset: int, need: int, semitones: int, factor: float) -> np.ndarray:
        """At least `need` augmented tokens from `offset` (fewer only at the stream's end)."""
        length = need
        while True:
            raw = np.asarray(tokens[offset:offset + length], dtype=np.int64)
            if semitones and self.programs is not None:
                programs = self.programs[offset:offset + length]
                bounds = self.augmenter.pitch_bounds(raw, programs)
                if bounds is not None:  # as far as asked, but no note leaves 0..127
                    semitones = int(np.clip(semitones, -bounds[0], 127 - bounds[1]))
                    raw = self.augmenter.transpose(raw, programs, semitones)
            if factor == 1.0 or self.augmenter is None:
                return raw
            body = self.augmenter.stretch(raw, factor)
            if len(body) >= need or offset + length >= len(tokens):
                return body
            length = min(2 * length, len(tokens) - offset)  # shortened by the stretch: read more


def piece_windows(shard, seq_len: int, tokenizer, stride: int | None = None,
                  batch_size: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches, (b, seq_len) each, that score every event of every piece exactly once: the
    targets after its `<start>` up to and including its `<eos>` (the conditioning prefix is given,
    not predicted). A piece's first window is its first seq_len tokens; each later one is its prefix
    followed by the tokens before the next unscored target, scoring `stride` new targets (default:
    as many as fit, i.e. no overlap). Pieces never share a window; rows are padded on the right."""
    tokens = _tokens(shard)
    index = PieceIndex(tokens, tokenizer.start_token_id, tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for start, prefix_end, end in zip(index.starts, index.prefix_ends, index.ends, strict=True):
        piece = np.asarray(tokens[start:end + 1], dtype=np.int64)
        p = int(prefix_end - start)
        if len(piece) < 2:
            continue
        if 2 * p > seq_len:
            raise DataError(f"a piece's conditioning prefix has {p} tokens: too long for windows of "
                            f"{seq_len}")
        room = seq_len - p  # body inputs after the prefix in later windows
        step = room if stride is None else min(stride, room)
        first = min(seq_len, len(piece) - 1)
        rows.append(_row(piece[:first + 1], max(p - 1, 0), seq_len, pad))  # targets from <start>'s next
        nxt = first + 1  # the next target not yet scored (index into piece)
        while nxt < len(piece):
            last = min(nxt + step, len(piece))  # this window scores targets nxt .. last-1
            b = last - 1 - room  # its inputs after the prefix: piece[b : last-1], room of them
            rows.append(_row(np.concatenate([piece[:p], piece[b:last]]), p + nxt - b - 1, seq_len, pad))
            nxt = last
        while len(rows) >= batch_size:
            yield _stack(rows[:batch_size])
            rows = rows[batch_size:]
    if rows:
        yield _stack(rows)


def _row(ids: np.ndarray, first_scored: int, seq_len: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one window: y[t] = ids[t + 1] scored from t = first_scored on, -100 before and at pads."""
    x = np.full(seq_len, pad, dtype=np.int64)
    y = np.full(seq_len, IGNORE_INDEX, dtype=np.int64)
    n = len(ids) - 1
    x[:n] = ids[:-1]
    y[first_scored:n] = ids[first_scored + 1:]
    return x, y


def _stack(rows) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.stack([x for x, _ in rows])), torch.from_numpy(np.stack([y for _, y in rows]))
