"""REMI (Huang & Yang 2020, "Pop Music Transformer") through miditok: grid notes <-> tokens.

REMI writes a piece bar by bar: `Bar`, then for each onset `Position_i` (step in the bar), and per
note `Program_p`, `Pitch_n`, `Velocity_v`, `Duration_b.s.r`. lmlab sets miditok up so that its
grid is lmlab's: `steps_per_quarter` positions per beat for every duration up to
`max_duration_quarters` (longer notes are cut there: `MidiTokenizer.notes` does it first, so the
round trip is exact on what it returns), all 128 pitches (drums too), `velocity_bins` velocities,
every program in one stream (drums as program -1), no time-signature, tempo, chord or rest tokens
(bars are therefore 4/4 bars, whatever the meter: onsets still come back exactly).

Velocity: miditok's velocity k (k-th of its `velocity_bins` values) stands for lmlab's bin k, so
both encodings keep the same bin. miditok's own PAD token is left out: lmlab has `<pad>`.
"""

from __future__ import annotations

import numpy as np

from lmlab.errors import TokenizerError
from lmlab.tokenizers.midi_notes import DRUMS, Note, bin_velocities, notes_to_score, velocity_bin

MIDITOK_VERSION = "3.1.0"  # the version pinned in pyproject.toml; vocabularies are checked on load


def miditok():
    try:
        import miditok as module
    except ImportError:
        raise TokenizerError(f"the remi encoding needs miditok: "
                             f"pip install miditok=={MIDITOK_VERSION}") from None
    return module


class RemiCodec:
    """Grid notes <-> indices into `self.tokens` (the MidiTokenizer adds its offset)."""

    def __init__(self, steps_per_quarter: int, velocity_bins: int, max_duration_quarters: int):
        mt = miditok()
        config = mt.TokenizerConfig(
            pitch_range=(0, 127), drums_pitch_range=(0, 127),
            beat_res={(0, max_duration_quarters): steps_per_quarter},
            num_velocities=velocity_bins, special_tokens=["PAD"], use_programs=True,
            one_token_stream_for_programs=True, programs=list(range(-1, 128)), use_time_signatures=False,
            use_tempos=False, use_chords=False, use_rests=False, remove_duplicated_notes=False,
        )
        self._tok = mt.REMI(config)
        self.steps_per_quarter, self.velocity_bins = steps_per_quarter, velocity_bins
        velocities = [int(v) for v in self._tok.velocities]
        if len(velocities) != velocity_bins or velocities != sorted(set(velocities)):
            raise TokenizerError(f"miditok gives {len(set(velocities))} distinct velocities for "
                                 f"{velocity_bins} bins; use fewer velocity bins")
        self._velocities = np.asarray(velocities)
        ordered = sorted(self._tok.vocab.items(), key=lambda kv: kv[1])
        kept = [(token, i) for token, i in ordered if token != "PAD_None"]
        self.tokens = [token for token, _ in kept]
        self._local = {i: k for k, (_, i) in enumerate(kept)}  # miditok id -> local index
        self._miditok_ids = [i for _, i in kept]

    def encode(self, notes: list[Note]) -> list[int]:
        if not notes:
            return []
        # miditok's k-th velocity for lmlab's bin k, so the bin survives miditok's own rounding.
        vel = [int(self._velocities[velocity_bin(n.velocity, self.velocity_bins)]) for n in notes]
        score = notes_to_score([n._replace(velocity=v) for n, v in zip(notes, vel, strict=True)],
                               self.steps_per_quarter, 120.0)
        seq = self._tok.encode(score)
        ids = seq.ids if hasattr(seq, "ids") else [i for s in seq for i in s.ids]
        return [self._local[i] for i in ids]

    def decode(self, indices: list[int]) -> list[Note]:
        if not indices:
            return []
        try:
            score = self._tok.decode([self._miditok_ids[k] for k in indices])
        except (ValueError, KeyError, IndexError, RuntimeError) as e:
            raise TokenizerError(f"miditok cannot decode this REMI sequence ({e})") from None
        if score.ticks_per_quarter != self.steps_per_quarter:  # the config makes them equal
            raise TokenizerError(f"miditok decoded {score.ticks_per_quarter} ticks per quarter, "
                                 f"expected {self.steps_per_quarter}")
        centres = bin_velocities(self.velocity_bins)
        notes = []
        for track in score.tracks:
            program = DRUMS if track.is_drum else int(track.program)
            for n in track.notes:
                k = int(np.abs(self._velocities - int(n.velocity)).argmin())
                notes.append(Note(n.time, n.time + n.duration, int(n.pitch), centres[k], program))
        return sorted(notes)
