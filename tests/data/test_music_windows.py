"""Conditioned music windows (data/music_windows.py): every training window starts with its piece's
prefix, the prefix and the join are not scored, batches are pure functions of (seed, step, rank),
and the evaluation windows score every event of every piece exactly once."""

import numpy as np
import pytest
import torch

pytest.importorskip("symusic", reason="MIDI tests need symusic (pip install miditok==3.1.0)")

from lmlab.data.music_windows import IGNORE_INDEX, MusicWindows, PieceIndex, piece_windows  # noqa: E402
from lmlab.errors import ConfigError, DataError  # noqa: E402
from lmlab.tokenizers.midi import MidiTokenizer  # noqa: E402

TOK = MidiTokenizer("musenet")
S, E = TOK.start_token_id, TOK.eos_token_id
EVENTS = TOK.vocab_size - 200  # ids far above the prefix ids: stand-ins for events


def stream(lengths=(40, 7, 90, 25), prefix=3, seed=0) -> np.ndarray:
    """Pieces `composer instrument(s) <start> events <eos>`, prefixes of `prefix` tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(lengths):
        head = [TOK.token_to_id("composer:bach" if k % 2 else "composer:mozart")]
        head += [TOK.token_to_id("instrument:violin")] * (prefix - 2) + [S]
        out += head + rng.integers(EVENTS, EVENTS + 150, size=n).tolist() + [E]
    return np.asarray(out, dtype=np.int64)


def test_piece_index():
    tokens = stream()
    index = PieceIndex(tokens, S, E)
    assert len(index) == 4
    ends = np.flatnonzero(tokens == E)
    assert index.ends.tolist() == ends.tolist()
    assert index.starts.tolist() == [0, *(ends[:-1] + 1).tolist()]
    assert (tokens[index.prefix_ends - 1] == S).all()
    assert [index.piece_of(o) for o in (0, int(ends[0]), int(ends[0]) + 1)] == [0, 0, 1]
    # a stream not ending with <eos>, and a piece without <start>
    odd = PieceIndex(np.asarray([5, 6, E, 7, S, 8]), S, E)
    assert odd.starts.tolist() == [0, 3] and odd.prefix_ends.tolist() == [0, 5]
    assert odd.ends.tolist() == [2, 5]


def test_every_window_starts_with_its_pieces_prefix_and_scores_only_the_piece():
    tokens = stream(prefix=4)
    index = PieceIndex(tokens, S, E)
    sampler = MusicWindows(tokens, 16, 32, TOK, seed=3)
    for step in range(5):
        x, y = sampler.batch(step)
        assert x.shape == y.shape == (32, 16)
        for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
            assert TOK.id_to_token(row_x[0]).startswith("composer:") and row_x[3] == S
            # the prefix, then a contiguous run of the stream
            body = row_x[4:] if row_y[3] == IGNORE_INDEX else row_x
            found = [i for i in range(len(tokens) - len(body) + 1)
                     if tokens[i:i + len(body)].tolist() == body]
            assert found
            if row_y[3] == IGNORE_INDEX:  # prepended: prefix and join unscored, the rest scored in order
                assert row_y[:4] == [IGNORE_INDEX] * 4
                start = found[0]
                assert row_y[4:] == tokens[start + 1:start + 13].tolist()
                assert index.prefix_ends[index.piece_of(start)] <= start  # cut after the prefix
            else:  # a window at a piece's start: every target scored
                assert row_y == row_x[1:] + [tokens[found[0] + 16]]


def test_plain_windows_without_prefix():
    tokens = stream()
    x, y = MusicWindows(tokens, 16, 8, TOK, seed=0, prefix=False).batch(0)
    offsets = np.random.Generator(np.random.PCG64(np.random.SeedSequence([0, 0]))).integers(
        0, len(tokens) - 16, size=8, dtype=np.int64)
    for r, o in enumerate(offsets):
        assert x[r].tolist() == tokens[o:o + 16].tolist() and y[r].tolist() == tokens[o + 1:o + 17].tolist()


def test_batches_are_pure_functions_of_seed_and_step_and_split_over_ranks():
    tokens = stream(lengths=(300, 200, 250))
    a = MusicWindows(tokens, 32, 8, TOK, seed=5, transpose=3, stretch=0.1)
    b = MusicWindows(tokens, 32, 8, TOK, seed=5, transpose=3, stretch=0.1)
    first = [next(a) for _ in range(4)]
    b.load_state_dict({**a.state_dict(), "step": 2})
    assert all(torch.equal(u, v) for u, v in zip(next(b), first[2], strict=True))
    halves = [MusicWindows(tokens, 32, 8, TOK, seed=5, rank=r, world_size=2, transpose=3,
                           stretch=0.1).batch(1) for r in range(2)]
    assert torch.equal(torch.cat([h[0] for h in halves]), first[1][0])
    assert torch.equal(torch.cat([h[1] for h in halves]), first[1][1])
    assert not torch.equal(MusicWindows(tokens, 32, 8, TOK, seed=6).batch(1)[0], first[1][0])


def test_augmented_windows_decode_to_augmented_notes():
    """A window at a real piece's start, transposed and stretched, decodes to the notes midi_notes gives."""
    import symusic

    score = symusic.Score(480)
    track = symusic.Track(program=0)
    track.notes.extend(symusic.Note(i * 240, 360, 48 + (5 * i) % 24, 80) for i in range(60))
    score.tracks.append(track)
    ids = TOK.encode(score, composer="bach")
    tokens = np.asarray(ids + [E] + ids + [E])
    sampler = MusicWindows(tokens, 64, 1, TOK, transpose=4, stretch=0.2)
    window, scored = sampler.window(1, semitones=-3, factor=1.2)  # offset 1: inside the prefix
    assert scored.all()
    notes = TOK.decode_notes(window.tolist())
    want = TOK.notes(score, transpose=-3, stretch=1.2)
    # the window holds the first notes; the last ones it reaches are cut where it ends
    assert notes and all(n in want for n in notes[:-4])
    high = MusicWindows(tokens, 64, 1, TOK, transpose=24).window(1, semitones=100)[0]  # cut back to 127
    pitches = [n.pitch for n in TOK.decode_notes(high.tolist())]
    assert max(pitches) == 127


def test_piece_windows_score_every_event_once_with_the_prefix_in_front():
    tokens = stream(lengths=(40, 7, 90, 25), prefix=3)
    index = PieceIndex(tokens, S, E)
    events = {int(i) for s, p, e in zip(index.starts, index.prefix_ends, index.ends, strict=True)
              for i in range(p, e + 1)}
    for stride in (None, 5):
        scored = []
        for x, y in piece_windows(tokens, 16, TOK, stride=stride, batch_size=3):
            for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
                assert row_x[1] == TOK.token_to_id("instrument:violin") and row_x[2] == S
                targets = [(t, v) for t, v in enumerate(row_y) if v != IGNORE_INDEX]
                # locate the window's body in the stream: the scored target follows its input
                for t, v in targets:
                    scored.append((row_x[t], v))
        want = [(int(tokens[i - 1]), int(tokens[i])) for i in sorted(events)]
        assert sorted(scored) == sorted(want)
        assert len(scored) == len(events)


def test_bad_settings():
    tokens = stream()
    with pytest.raises(ConfigError, match="transpose must be"):
        MusicWindows(tokens, 16, 4, TOK, transpose=30)
    with pytest.raises(ConfigError, match="stretch must be"):
        MusicWindows(tokens, 16, 4, TOK, stretch=0.9)
    with pytest.raises(DataError, match="fewer than seq_len"):
        MusicWindows(tokens, 10_000, 4, TOK)
    with pytest.raises(DataError, match="too long for windows of 4"):
        list(piece_windows(tokens, 4, TOK))
