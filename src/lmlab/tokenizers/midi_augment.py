"""Transposition and time stretch of MuseNet-style token ids, without decoding them to notes.

Training draws windows from token shards (`lmlab.data.music_windows`); augmenting a window by
decoding it to notes and encoding it again would cost a Python loop over every note of every row.
On the ids of lmlab's event stream (`midi_events`) both augmentations are array operations:

- transpose by k semitones: every `on:P` / `off:P` of a pitched instrument becomes `on:P+k` /
  `off:P+k`; drums (the events after a `program:drums`) are untouched. `program_at` says which
  instrument each position belongs to, computed once over a whole shard (a window may start after
  its piece's last program token). The caller picks k so that no pitch leaves 0..127
  (`pitch_bounds`), where `midi_notes.transpose` would drop the note.
- stretch time by f: the time before each token (the running sum of its `shift:K` tokens) is
  scaled and rounded half up on the grid, `floor(t·f + 0.5)` as `midi_notes.stretch` does for a
  piece starting at the window's first token; each run of shift tokens is rewritten as the
  fewest shifts of the new gap. The window's length changes; the caller cuts what it needs.
  For f >= 1 every gap of a step or more stays one; for f < 1 a one-step gap can close, and a
  note one grid step long (1/12 of a quarter by default; the chorales have none) then vanishes.

Only the "musenet" encoding: REMI's bars, positions and durations have no such id-level form.
"""

from __future__ import annotations

import math

import numpy as np

from lmlab.errors import TokenizerError
from lmlab.tokenizers.midi_notes import DRUMS

MIN_STRETCH = 0.5


class EventAugmenter:
    """Id-level augmentation for a MidiTokenizer with the "musenet" encoding."""

    def __init__(self, tokenizer):
        if getattr(tokenizer, "encoding", None) != "musenet":
            raise TokenizerError(f"transposing and stretching token ids needs the musenet encoding, not "
                                 f"{getattr(tokenizer, 'encoding', None)!r}")
        ids = tokenizer.token_to_id
        self.on0, self.off0 = ids("on:0"), ids("off:0")
        self.program0, self.drums = ids("program:0"), ids("program:drums")
        if self.drums != self.program0 + DRUMS:
            raise TokenizerError("unexpected musenet vocabulary: program tokens are not contiguous")
        shifts, k = [], 1
        while ids(f"shift:{k}") is not None:
            shifts.append(ids(f"shift:{k}"))
            k += 1
        self.shift0, self.max_shift = shifts[0], len(shifts)
        if shifts != list(range(self.shift0, self.shift0 + self.max_shift)):
            raise TokenizerError("unexpected musenet vocabulary: shift tokens are not contiguous")

    def program_at(self, ids: np.ndarray) -> np.ndarray:
        """(n,) int16: the program (0..127, DRUMS) in force at each position, -1 before any."""
        ids = np.asarray(ids)
        is_program = (ids >= self.program0) & (ids <= self.drums)
        last = np.maximum.accumulate(np.where(is_program, np.arange(len(ids)), -1))
        out = np.where(last >= 0, ids[np.maximum(last, 0)] - self.program0, -1)
        return out.astype(np.int16)

    def _pitched(self, ids: np.ndarray, programs: np.ndarray) -> np.ndarray:
        """Boolean (n,): on/off events of a pitched instrument."""
        notes = (ids >= self.on0) & (ids < self.off0 + 128)
        return notes & (programs != DRUMS)

    def pitch_bounds(self, ids: np.ndarray, programs: np.ndarray) -> tuple[int, int] | None:
        """(lowest, highest) pitch of the pitched events among `ids`, None when there are none."""
        ids = np.asarray(ids)
        pitched = self._pitched(ids, programs)
        if not pitched.any():
            return None
        pitches = (ids[pitched] - self.on0) % 128  # on:P and off:P blocks are 128 apart
        return int(pitches.min()), int(pitches.max())

    def transpose(self, ids: np.ndarray, programs: np.ndarray, semitones: int) -> np.ndarray:
        """`ids` with every pitched event moved by `semitones` (the caller keeps pitches in 0..127)."""
        ids = np.array(ids, dtype=np.int64)
        if semitones:
            ids[self._pitched(ids, programs)] += semitones
        return ids

    def stretch(self, ids: np.ndarray, factor: float) -> np.ndarray:
        """`ids` with the time before every token scaled by `factor` on the grid (see the docstring)."""
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= MIN_STRETCH):
            raise TokenizerError(f"stretch factor must be a number >= {MIN_STRETCH}, got {factor!r}")
        ids = np.asarray(ids, dtype=np.int64)
        if factor == 1:
            return ids.copy()
        is_shift = (ids >= self.shift0) & (ids < self.shift0 + self.max_shift)
        steps = np.where(is_shift, ids - self.shift0 + 1, 0)
        events = np.flatnonzero(~is_shift)
        before = np.cumsum(steps)[events] - steps[events]  # time before each event (0 for a shift)
        scaled = np.floor(before * factor + 0.5).astype(np.int64)
        gaps = np.diff(scaled, prepend=0)  # new time to move before each event
        trailing = int(np.floor(steps.sum() * factor + 0.5)) - (int(scaled[-1]) if len(scaled) else 0)
        out: list[int] = []
        for event, gap in zip(ids[events].tolist(), gaps.tolist(), strict=True):
            self._shifts(out, gap)
            out.append(event)
        self._shifts(out, trailing)
        return np.asarray(out, dtype=np.int64)

    def _shifts(self, out: list[int], gap: int) -> None:
        while gap > 0:
            k = min(gap, self.max_shift)
            out.append(self.shift0 + k - 1)
            gap -= k
