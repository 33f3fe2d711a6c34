"""Id-level transposition and stretch (tokenizers/midi_augment.py) against the note-level ones of
midi_notes, which the tokenizer's own tests check: augmenting the ids of a piece gives the ids of
the augmented piece, up to the order of events inside one time step (compared as notes)."""

import numpy as np
import pytest

symusic = pytest.importorskip("symusic", reason="MIDI tests need symusic (pip install miditok==3.1.0)")

from lmlab.errors import TokenizerError  # noqa: E402
from lmlab.tokenizers.midi import MidiTokenizer  # noqa: E402
from lmlab.tokenizers.midi_augment import EventAugmenter  # noqa: E402
from lmlab.tokenizers.midi_notes import DRUMS  # noqa: E402


def piece(seed: int = 0, drums: bool = True) -> bytes:
    """Two pitched instruments with same-pitch overlaps and long gaps, and a drum track, 480 tpq."""
    rng = np.random.default_rng(seed)
    score = symusic.Score(480)
    programs = [(0, False), (40, False)] + ([(0, True)] if drums else [])
    for program, is_drum in programs:
        track = symusic.Track(program=program, is_drum=is_drum)
        for _ in range(40):
            start = int(rng.integers(0, 60)) * 120
            length = int(rng.integers(1, 12)) * 120
            pitch, velocity = int(rng.integers(40, 80)), int(rng.integers(20, 120))
            track.notes.append(symusic.Note(start, length, pitch, velocity))
        track.notes.append(symusic.Note(9600, 480, 60, 80))  # after a gap longer than the longest shift
        score.tracks.append(track)
    return score.dumps_midi()


@pytest.fixture(scope="module")
def tok():
    return MidiTokenizer("musenet")


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("semitones,factor", [(0, 1.0), (5, 1.0), (-7, 1.0), (0, 1.25), (3, 1.05),
                                              (-2, 2.0), (0, 0.95)])
def test_augmented_ids_decode_to_the_augmented_notes(tok, seed, semitones, factor):
    data = piece(seed)
    ids = np.asarray(tok.encode(data, composer="bach"))
    aug = EventAugmenter(tok)
    out = aug.stretch(aug.transpose(ids, aug.program_at(ids), semitones), factor)
    want = tok.notes(data, transpose=semitones, stretch=factor)
    assert tok.decode_notes(out.tolist()) == want
    # the conditioning prefix is not touched
    start = tok.start_token_id
    assert out[:list(out).index(start) + 1].tolist() == ids[:list(ids).index(start) + 1].tolist()


def test_transposition_leaves_drums_and_reports_pitch_bounds(tok):
    data = piece(1)
    ids = np.asarray(tok.encode(data))
    aug = EventAugmenter(tok)
    programs = aug.program_at(ids)
    notes = tok.notes(data)
    pitched = [n.pitch for n in notes if n.program != DRUMS]
    assert aug.pitch_bounds(ids, programs) == (min(pitched), max(pitched))
    up = tok.decode_notes(aug.transpose(ids, programs, 4).tolist())
    assert [n for n in up if n.program == DRUMS] == [n for n in notes if n.program == DRUMS]
    score = symusic.Score(480)
    track = symusic.Track(program=0, is_drum=True)
    track.notes.extend(symusic.Note(i * 240, 120, 36 + i % 3, 90) for i in range(8))
    score.tracks.append(track)
    drums_only = np.asarray(tok.encode(score))
    programs = aug.program_at(drums_only)
    assert aug.pitch_bounds(drums_only, programs) is None
    assert np.array_equal(aug.transpose(drums_only, programs, 5), drums_only)


def test_program_at_follows_program_tokens_across_pieces(tok):
    a, b = tok.encode(piece(0)), tok.encode(piece(1, drums=False))
    stream = np.asarray(a + [tok.eos_token_id] + b)
    programs = EventAugmenter(tok).program_at(stream)
    assert programs[0] == -1  # the composer token comes before any program
    for i, t in enumerate(stream.tolist()):
        name = tok.id_to_token(t)
        if name.startswith("program:"):
            want = DRUMS if name == "program:drums" else int(name.split(":")[1])
            assert programs[i] == want
        elif i and programs[i - 1] != -1 and not name.startswith("program:"):
            assert programs[i] == programs[i - 1]


def test_bad_inputs(tok):
    with pytest.raises(TokenizerError, match="needs the musenet encoding, not 'remi'"):
        EventAugmenter(MidiTokenizer("remi"))
    with pytest.raises(TokenizerError, match="stretch factor must be a number >= 0.5"):
        EventAugmenter(tok).stretch(np.asarray([5, 6]), 0.2)
