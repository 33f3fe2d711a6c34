"""lmlab's MuseNet-style event stream: grid notes <-> event tokens.

MuseNet (Payne 2019) and the Music Transformer (Huang et al. 2019, after the performance encoding
of Oore et al. 2018) write music as note-on, note-off, time-shift and velocity events. lmlab keeps
that event set, on a musical grid, with factored instrument tokens:

    program:N / program:drums   the instrument of the next note-on / note-off events
    velocity:B                  the velocity bin (0..bins-1) of the next note-on events
    on:P / off:P                note-on / note-off of MIDI pitch P (0..127) on that instrument
    shift:K                     move time forward K grid steps (1..max_shift); longer gaps chain

Deviations from MuseNet: its tokens fused instrument, velocity and pitch ("piano:v72:G1", velocity
0 ending a note) and its prefix held a tempo token; lmlab writes the instrument and velocity only
when they change, encodes no tempo, and counts time in grid steps of a quarter note (the decoder
writes one tempo).

Order inside one time step, per instrument: note-offs, then note-ons (a note ending where the next
of its pitch starts closes first); note-ons by pitch, then by end. Decoding pairs a note-off with
the OLDEST sounding note of its instrument and pitch (first-in, first-out), the pairing
`midi_notes.fifo_pairs` gives the notes before encoding; see `midi_notes` for why.
"""

from __future__ import annotations

from collections import defaultdict, deque

from lmlab.errors import TokenizerError
from lmlab.tokenizers.midi_notes import DEFAULT_VELOCITY, DRUMS, Note, bin_velocities, velocity_bin

_PROGRAM, _VELOCITY, _ON, _OFF, _SHIFT = range(5)


class EventCodec:
    """Grid notes <-> indices into `self.tokens` (the MidiTokenizer adds its offset)."""

    def __init__(self, velocity_bins: int, max_shift: int):
        if max_shift < 1:
            raise TokenizerError(f"max_shift must be at least one grid step, got {max_shift}")
        self.velocity_bins, self.max_shift = velocity_bins, max_shift
        meaning = [(_PROGRAM, p) for p in range(DRUMS + 1)]
        meaning += [(_VELOCITY, b) for b in range(velocity_bins)]
        meaning += [(_ON, p) for p in range(128)] + [(_OFF, p) for p in range(128)]
        meaning += [(_SHIFT, k) for k in range(1, max_shift + 1)]
        names = {_PROGRAM: "program", _VELOCITY: "velocity", _ON: "on", _OFF: "off", _SHIFT: "shift"}
        self.tokens = [f"{names[kind]}:{'drums' if kind == _PROGRAM and v == DRUMS else v}"
                       for kind, v in meaning]
        self._meaning = meaning
        self._index = {m: i for i, m in enumerate(meaning)}

    def encode(self, notes: list[Note]) -> list[int]:
        """Event indices of canonical notes (sorted, paired first-in first-out)."""
        index = self._index
        # (time, program, 0 = off / 1 = on, pitch, end, velocity): sorting gives the order above.
        events = [(n.end, n.program, 0, n.pitch, 0, 0) for n in notes]
        events += [(n.start, n.program, 1, n.pitch, n.end, n.velocity) for n in notes]
        events.sort()
        out: list[int] = []
        time, program, vbin = 0, None, None
        for t, prog, is_on, pitch, _, velocity in events:
            while t > time:
                k = min(t - time, self.max_shift)
                out.append(index[(_SHIFT, k)])
                time += k
            if prog != program:
                out.append(index[(_PROGRAM, prog)])
                program = prog
            if is_on:
                b = velocity_bin(velocity, self.velocity_bins)
                if b != vbin:
                    out.append(index[(_VELOCITY, b)])
                    vbin = b
                out.append(index[(_ON, pitch)])
            else:
                out.append(index[(_OFF, pitch)])
        return out

    def decode(self, indices: list[int]) -> list[Note]:
        """Notes of an event stream; lenient with generated streams: a note-off with no sounding
        note is ignored, a note still sounding at the end ends there, a zero-length note is dropped."""
        centres = bin_velocities(self.velocity_bins)
        time, program = 0, 0
        velocity = centres[velocity_bin(DEFAULT_VELOCITY, self.velocity_bins)]
        sounding: dict[tuple[int, int], deque] = defaultdict(deque)
        notes = []
        for i in indices:
            kind, value = self._meaning[i]
            if kind == _SHIFT:
                time += value
            elif kind == _PROGRAM:
                program = value
            elif kind == _VELOCITY:
                velocity = centres[value]
            elif kind == _ON:
                sounding[(program, value)].append((time, velocity))
            elif sounding[(program, value)]:  # _OFF: the oldest sounding note of this pitch ends
                start, vel = sounding[(program, value)].popleft()
                if time > start:
                    notes.append(Note(start, time, value, vel, program))
        for (prog, pitch), queue in sounding.items():
            notes.extend(Note(start, time, pitch, vel, prog) for start, vel in queue if time > start)
        return sorted(notes)
