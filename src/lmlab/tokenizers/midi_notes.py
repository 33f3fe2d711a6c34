"""Notes on a time grid: what lmlab's MIDI tokenizer reads from a MIDI file and writes back.

A piece is a list of `Note(start, end, pitch, velocity, program)`: `start` and `end` in grid steps
(`steps_per_quarter` steps per quarter note), `velocity` the centre of its velocity bin, `program`
the General MIDI program 0..127, or `DRUMS` (128) for a percussion track (channel 10).

Reading a MIDI file (`read_notes`), on the grid:
- tracks with the same program are merged (one instrument, as a synthesizer hears them; a drum
  track's own program number is dropped);
- onsets and ends are rounded to the nearest step (halves up); a note shorter than half a step
  (a grace note) lasts one step, so no note is lost;
- notes of one instrument and pitch are paired FIRST-IN, FIRST-OUT: the k-th onset goes with the
  k-th end (onsets in order of time, then end). A MIDI file itself pairs them so (a note-off ends
  the oldest sounding note of that pitch, on one channel), and so do lmlab's note-off tokens. Two
  voices on one pitch that cross (A 0-2, B 1-3) keep their durations; a note nested inside another
  of the same pitch (A 0-4, B 1-2) cannot be told from the crossing pair once the voices share a
  channel and comes back as (A 0-2, B 1-4): same onsets, same ends.

Augmentation (MuseNet and the Music Transformer both transpose and stretch time):
- `transpose(notes, k)` moves every pitched note by k semitones; drums are untouched; a note
  that would leave MIDI's 0..127 is dropped (its instrument's other notes are kept);
- `stretch(notes, f)` multiplies onsets and ends by f on the grid (halves up), keeping every note
  at least one step long.
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from lmlab.errors import TokenizerError

DRUMS = 128  # the program number lmlab gives a percussion track
DEFAULT_VELOCITY = 64

# General MIDI level 1 program names, 0..127, in the order of the standard's table.
GM_PROGRAMS = (
    "acoustic_grand_piano", "bright_acoustic_piano", "electric_grand_piano", "honky_tonk_piano",
    "electric_piano_1", "electric_piano_2", "harpsichord", "clavinet",
    "celesta", "glockenspiel", "music_box", "vibraphone", "marimba", "xylophone", "tubular_bells", "dulcimer",
    "drawbar_organ", "percussive_organ", "rock_organ", "church_organ", "reed_organ", "accordion",
    "harmonica", "tango_accordion",
    "acoustic_guitar_nylon", "acoustic_guitar_steel", "electric_guitar_jazz", "electric_guitar_clean",
    "electric_guitar_muted", "overdriven_guitar", "distortion_guitar", "guitar_harmonics",
    "acoustic_bass", "electric_bass_finger", "electric_bass_pick", "fretless_bass", "slap_bass_1",
    "slap_bass_2", "synth_bass_1", "synth_bass_2",
    "violin", "viola", "cello", "contrabass", "tremolo_strings", "pizzicato_strings", "orchestral_harp",
    "timpani",
    "string_ensemble_1", "string_ensemble_2", "synth_strings_1", "synth_strings_2", "choir_aahs",
    "voice_oohs", "synth_voice", "orchestra_hit",
    "trumpet", "trombone", "tuba", "muted_trumpet", "french_horn", "brass_section", "synth_brass_1",
    "synth_brass_2",
    "soprano_sax", "alto_sax", "tenor_sax", "baritone_sax", "oboe", "english_horn", "bassoon", "clarinet",
    "piccolo", "flute", "recorder", "pan_flute", "blown_bottle", "shakuhachi", "whistle", "ocarina",
    "lead_1_square", "lead_2_sawtooth", "lead_3_calliope", "lead_4_chiff", "lead_5_charang", "lead_6_voice",
    "lead_7_fifths", "lead_8_bass_lead",
    "pad_1_new_age", "pad_2_warm", "pad_3_polysynth", "pad_4_choir", "pad_5_bowed", "pad_6_metallic",
    "pad_7_halo", "pad_8_sweep",
    "fx_1_rain", "fx_2_soundtrack", "fx_3_crystal", "fx_4_atmosphere", "fx_5_brightness", "fx_6_goblins",
    "fx_7_echoes", "fx_8_sci_fi",
    "sitar", "banjo", "shamisen", "koto", "kalimba", "bagpipe", "fiddle", "shanai",
    "tinkle_bell", "agogo", "steel_drums", "woodblock", "taiko_drum", "melodic_tom", "synth_drum",
    "reverse_cymbal",
    "guitar_fret_noise", "breath_noise", "seashore", "bird_tweet", "telephone_ring", "helicopter",
    "applause", "gunshot",
)
INSTRUMENTS = (*GM_PROGRAMS, "drums")  # index = lmlab program number (DRUMS = 128 is "drums")


class Note(NamedTuple):
    """One note on the grid; sorting a list of them gives lmlab's canonical order."""

    start: int
    end: int
    pitch: int
    velocity: int
    program: int


def symusic():
    """The symusic module (installed with miditok), or a one-line TokenizerError."""
    try:
        import symusic as module
    except ImportError:
        raise TokenizerError("MIDI needs the symusic package (installed with miditok): "
                             "pip install miditok==3.1.0") from None
    return module


def load_score(source):
    """A symusic Score in ticks from a MIDI path, MIDI bytes or a Score; TokenizerError if unreadable."""
    sm = symusic()
    if isinstance(source, sm.Score):
        return source if source.ttype == sm.TimeUnit.tick else source.to("tick")
    if isinstance(source, (bytes, bytearray, memoryview)):
        where, data = "MIDI data", bytes(source)
    elif isinstance(source, (str, Path)):
        where = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise TokenizerError(f"{where}: cannot read ({e.strerror or e})") from None
    else:
        raise TokenizerError(f"expected a MIDI file path, MIDI bytes or a symusic Score, "
                             f"got {type(source).__name__}")
    if not data:
        raise TokenizerError(f"{where}: empty file, not MIDI")
    try:
        return sm.Score.from_midi(data)
    except (RuntimeError, ValueError) as e:
        reason = str(e).split(":")[0] if str(e) else type(e).__name__
        raise TokenizerError(f"{where}: not a readable MIDI file ({reason})") from None


def _to_step(ticks: int, steps_per_quarter: int, tpq: int) -> int:
    """The nearest grid step to a tick, halves up (integer arithmetic: no float drift)."""
    return (2 * ticks * steps_per_quarter + tpq) // (2 * tpq)


def velocity_bin(velocity: int, bins: int) -> int:
    return min(max(velocity, 1), 127) * bins // 128


@lru_cache(maxsize=None)
def bin_velocities(bins: int) -> tuple[int, ...]:
    """The MIDI velocity that stands for each of `bins` bins: the middle one of the velocities
    1..127 in the bin (every bin holds one when bins <= 127)."""
    members: list[list[int]] = [[] for _ in range(bins)]
    for v in range(1, 128):
        members[velocity_bin(v, bins)].append(v)
    return tuple(m[len(m) // 2] for m in members)


def read_notes(source, steps_per_quarter: int, velocity_bins: int) -> list[Note]:
    """The canonical notes of a MIDI path / bytes / symusic Score (see the module docstring)."""
    score = load_score(source)
    tpq = score.ticks_per_quarter
    centres = bin_velocities(velocity_bins)
    notes = []
    for track in score.tracks:
        program = DRUMS if track.is_drum else int(track.program)
        for n in track.notes:
            start = _to_step(n.time, steps_per_quarter, tpq)
            end = max(_to_step(n.time + n.duration, steps_per_quarter, tpq), start + 1)
            vel = centres[velocity_bin(n.velocity, velocity_bins)]
            notes.append(Note(start, end, int(n.pitch), vel, program))
    return fifo_pairs(notes)


def fifo_pairs(notes: list[Note]) -> list[Note]:
    """`notes` re-paired first-in, first-out per (program, pitch), in canonical (sorted) order.

    The k-th onset (by time, then end) gets the k-th end. The k notes with the earliest ends all
    start before the k-th end, so the k-th onset is before it too: every note keeps a positive
    length. Notes that never overlap another of their pitch are unchanged.
    """
    groups: dict[tuple[int, int], list[Note]] = defaultdict(list)
    for n in notes:
        groups[(n.program, n.pitch)].append(n)
    out = []
    for (program, pitch), group in groups.items():
        onsets = sorted((n.start, n.end, n.velocity) for n in group)
        ends = sorted(n.end for n in group)
        out.extend(Note(s, e, pitch, v, program) for (s, _, v), e in zip(onsets, ends, strict=True))
    return sorted(out)


def transpose(notes: list[Note], semitones: int) -> list[Note]:
    """Pitched notes moved by `semitones`; drums untouched; notes leaving 0..127 dropped."""
    if not isinstance(semitones, int) or isinstance(semitones, bool):
        raise TokenizerError(f"transpose must be a whole number of semitones, got {semitones!r}")
    moved = [n if n.program == DRUMS else n._replace(pitch=n.pitch + semitones) for n in notes]
    return sorted(n for n in moved if 0 <= n.pitch <= 127)


def stretch(notes: list[Note], factor: float) -> list[Note]:
    """Onsets and ends times `factor` on the grid (halves up); every note stays >= one step."""
    if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise TokenizerError(f"stretch must be a positive number, got {factor!r}")
    if factor == 1:
        return list(notes)
    out = []
    for n in notes:
        start = math.floor(n.start * factor + 0.5)
        out.append(n._replace(start=start, end=max(math.floor(n.end * factor + 0.5), start + 1)))
    return fifo_pairs(out)


def notes_to_score(notes: list[Note], steps_per_quarter: int, tempo_qpm: float):
    """A symusic Score (ticks, one step = one tick) with one track per instrument.

    Notes are written sorted by (onset, length) so that a MIDI reader, pairing note-offs first-in
    first-out, gives back the same notes (with their velocities) even where they overlap.
    """
    sm = symusic()
    score = sm.Score(steps_per_quarter)
    score.tempos.append(sm.Tempo(0, qpm=float(tempo_qpm)))
    by_program: dict[int, list[Note]] = defaultdict(list)
    for n in notes:
        by_program[n.program].append(n)
    for program in sorted(by_program):
        drums = program == DRUMS
        track = sm.Track(name=INSTRUMENTS[program], program=0 if drums else program, is_drum=drums)
        for n in sorted(by_program[program], key=lambda n: (n.start, n.end - n.start, n.pitch, n.velocity)):
            track.notes.append(sm.Note(n.start, n.end - n.start, n.pitch, n.velocity))
        score.tracks.append(track)
    return score


def score_notes(score, steps_per_quarter: int) -> list[Note]:
    """The notes of a Score written by `notes_to_score` (or decoded by miditok), exactly as stored:
    no quantization, no re-pairing (a round trip compares these with `read_notes`)."""
    tpq = score.ticks_per_quarter
    if tpq != steps_per_quarter:
        raise TokenizerError(f"score has {tpq} ticks per quarter, expected {steps_per_quarter}")
    notes = []
    for track in score.tracks:
        program = DRUMS if track.is_drum else int(track.program)
        notes.extend(Note(n.time, n.time + n.duration, int(n.pitch), int(n.velocity), program)
                     for n in track.notes)
    return sorted(notes)
