"""MIDI tokenizer: MIDI -> tokens -> MIDI keeps every note, in both encodings.

The reference is an independent reader written here with mido: it pairs note-on/off per track and
channel, quantizes to the grid and merges the tracks of one program, pairing first-in first-out,
as the tokenizer's docstring says a MIDI synthesizer does. Files go MIDI -> lmlab encode -> ids ->
lmlab decode -> written .mid -> mido again, so neither end is read by the code under test.
"""

import time
from collections import defaultdict, deque

import pytest

pytest.importorskip("symusic", reason="MIDI tests need symusic (pip install miditok==3.1.0)")
mido = pytest.importorskip("mido", reason="the MIDI reference reader needs mido (pip install mido==1.3.3)")

from lmlab.errors import TokenizerError  # noqa: E402
from lmlab.tokenizers import load_tokenizer  # noqa: E402
from lmlab.tokenizers.midi import DEFAULT_COMPOSERS, MidiTokenizer  # noqa: E402
from lmlab.tokenizers.midi_notes import GM_PROGRAMS, Note, stretch, transpose  # noqa: E402

SPQ, BINS = 12, 32


def encodings():
    """Both encodings; remi only where miditok is installed."""
    try:
        import miditok  # noqa: F401

        return ["musenet", "remi"]
    except ImportError:
        return ["musenet"]


# ---- the independent reference reader ------------------------------------------------------------
def mido_notes(path, spq=SPQ, bins=BINS, merge=True):
    """Notes as (start, end, pitch, velocity bin, program or 128 for drums), sorted, on the grid."""
    mid = mido.MidiFile(path)
    tpq = mid.ticks_per_beat
    q = lambda t: (2 * t * spq + tpq) // (2 * tpq)  # noqa: E731  nearest step, halves up
    per_voice = []
    for track in mid.tracks:
        now, program, sounding = 0, defaultdict(int), defaultdict(deque)
        for msg in track:
            now += msg.time
            if msg.type == "program_change":
                program[msg.channel] = msg.program
            elif msg.type in ("note_on", "note_off"):
                key = (msg.channel, msg.note)
                if msg.type == "note_on" and msg.velocity > 0:
                    sounding[key].append((now, msg.velocity))
                elif sounding[key]:
                    start, vel = sounding[key].popleft()
                    prog = 128 if msg.channel == 9 else program[msg.channel]
                    s = q(start)
                    per_voice.append((s, max(q(now), s + 1), msg.note, vel * bins // 128, prog))
    if not merge:
        return sorted(per_voice)
    groups = defaultdict(list)  # one instrument hears all its tracks: pair first-in first-out again
    for n in per_voice:
        groups[(n[4], n[2])].append(n)
    out = []
    for (prog, pitch), group in groups.items():
        ons = sorted((s, e, v) for s, e, _, v, _ in group)
        ends = sorted(e for _, e, _, _, _ in group)
        out += [(s, e, pitch, v, prog) for (s, _, v), e in zip(ons, ends, strict=True)]
    return sorted(out)


def as_tuples(notes, bins=BINS):
    return sorted((n.start, n.end, n.pitch, n.velocity * bins // 128, n.program) for n in notes)


def write_mid(path, tracks, tpq=480):
    """tracks: [(channel, program, [(on_tick, off_tick, pitch, velocity), ...])], one MIDI track each."""
    mid = mido.MidiFile(ticks_per_beat=tpq)
    for channel, program, notes in tracks:
        events = [(on, 1, pitch, vel) for on, off, pitch, vel in notes]
        events += [(off, 0, pitch, 0) for on, off, pitch, vel in notes]
        track = mido.MidiTrack([mido.Message("program_change", channel=channel, program=program, time=0)])
        now = 0
        for t, is_on, pitch, vel in sorted(events, key=lambda e: (e[0], e[1])):
            kind = "note_on" if is_on else "note_off"
            track.append(mido.Message(kind, channel=channel, note=pitch, velocity=vel, time=t - now))
            now = t
        mid.tracks.append(track)
    mid.save(path)
    return path


def round_trip(tok, path, tmp_path, **kw):
    """(reference notes of the file, notes of the .mid written from the ids, the ids)."""
    ids = tok.encode(path, **kw)
    out = tok.write_midi(ids, tmp_path / f"out-{tok.encoding}.mid")
    return mido_notes(path), mido_notes(out), ids


# ---- hand-built MIDI -------------------------------------------------------------------------------
@pytest.fixture
def crossing(tmp_path):
    """Two voices (tracks, one program) meeting on E4 with crossing notes, plus two notes of one
    onset and different lengths in one track: the cases a naive note-off pairing swaps."""
    soprano = [(0, 960, 64, 100), (960, 1920, 67, 100)]
    alto = [(480, 1440, 64, 40), (1440, 1920, 60, 40)]  # E4 480-1440 crosses the soprano's 0-960
    chord = [(1920, 2400, 72, 90), (1920, 3360, 72, 30)]  # same onset, 1 and 3 beats
    return write_mid(tmp_path / "crossing.mid", [(0, 52, soprano + chord), (1, 52, alto)])


@pytest.mark.parametrize("encoding", encodings())
def test_same_pitch_overlaps_keep_their_durations(encoding, crossing, tmp_path):
    tok = MidiTokenizer(encoding)
    ref, back, ids = round_trip(tok, crossing, tmp_path, composer="bach")
    assert back == ref and len(ref) == 6
    assert (0, 24, 64, 100 * BINS // 128, 52) in back and (12, 36, 64, 40 * BINS // 128, 52) in back
    assert (48, 60, 72, 90 * BINS // 128, 52) in back and (48, 84, 72, 30 * BINS // 128, 52) in back
    assert ids[:3] == [tok.token_to_id(t) for t in ("composer:bach", "instrument:choir_aahs", "<start>")]


def test_naive_note_off_pairing_would_swap_durations(crossing):
    """The FIFO rule matters: pairing each note-off with the NEWEST note of its pitch, on the same
    tokens, swaps the crossing voices' durations (so the test above can fail)."""
    tok = MidiTokenizer("musenet")
    tokens = [tok.id_to_token(i) for i in tok.encode(crossing)]
    time, sounding, lifo = 0, defaultdict(list), []
    for t in tokens:
        kind, _, value = t.partition(":")
        if kind == "shift":
            time += int(value)
        elif kind == "on":
            sounding[int(value)].append(time)
        elif kind == "off":
            lifo.append((sounding[int(value)].pop(), time, int(value)))
    fifo = sorted((n.start, n.end, n.pitch) for n in tok.decode_notes(tok.encode(crossing)))
    assert sorted(lifo) != fifo
    assert (0, 36, 64) in lifo and (0, 24, 64) in fifo


@pytest.mark.parametrize("encoding", encodings())
def test_instruments_drums_and_pitch_extremes(encoding, tmp_path):
    path = write_mid(tmp_path / "band.mid", [
        (0, 0, [(0, 240, 0, 10), (240, 480, 127, 127), (0, 480 * 20, 60, 64)]),  # 20 beats: past bars
        (1, 40, [(100, 600, 76, 80), (600, 700, 77, 81)]),  # 2.5 and 17.5 steps: round halves up
        (9, 0, [(0, 60, 36, 100), (480, 540, 38, 90), (480, 540, 42, 70)]),  # drums on channel 10
    ])
    tok = MidiTokenizer(encoding, max_duration_quarters=32)
    ref, back, ids = round_trip(tok, path, tmp_path, composer="beethoven")
    assert back == ref and {n[4] for n in back} == {0, 40, 128}
    names = [tok.id_to_token(i) for i in ids[:ids.index(tok.start_token_id)]]
    assert names == ["composer:beethoven", "instrument:acoustic_grand_piano", "instrument:violin",
                     "instrument:drums"]
    score = tok.decode(ids)
    assert sorted((t.program, t.is_drum) for t in score.tracks) == [(0, False), (0, True), (40, False)]


@pytest.mark.parametrize("encoding", encodings())
def test_drums_only(encoding, tmp_path):
    hits = [(i * 240, i * 240 + 120, 35 + i % 12, 100) for i in range(40)]
    path = write_mid(tmp_path / "drums.mid", [(9, 0, hits)])
    tok = MidiTokenizer(encoding)
    ref, back, ids = round_trip(tok, path, tmp_path)
    assert back == ref and len(back) == 40 and {n[4] for n in back} == {128}
    assert tok.id_to_token(ids[1]) == "instrument:drums"


def test_remi_cuts_notes_longer_than_its_longest_duration(tmp_path):
    pytest.importorskip("miditok", reason="the remi encoding needs miditok")
    path = write_mid(tmp_path / "long.mid", [(0, 0, [(0, 480 * 6, 60, 64), (480, 960, 62, 64)])])
    tok = MidiTokenizer("remi", max_duration_quarters=4)
    notes = tok.notes(path)
    assert [(n.start, n.end) for n in notes] == [(0, 48), (12, 24)]  # 6 beats cut to 4
    assert tok.decode_notes(tok.encode(path)) == notes
    assert MidiTokenizer("musenet", max_duration_quarters=4).notes(path)[0].end == 72  # no cut


def test_encode_takes_a_path_bytes_a_score_or_notes(crossing):
    import symusic

    tok = MidiTokenizer("musenet")
    ids = tok.encode(crossing, "bach")
    score = symusic.Score(str(crossing))
    assert tok.encode(str(crossing), "bach") == ids and tok.encode(crossing.read_bytes(), "bach") == ids
    assert tok.encode(score, "bach") == ids and tok.encode(score.to("quarter"), "bach") == ids
    assert tok.encode(tok.notes(crossing), "bach") == ids


# ---- real music: a few chorales (all 371 in the slow test) ----------------------------------------
@pytest.fixture(scope="module")
def chorales(tmp_path_factory):
    pytest.importorskip("music21", reason="the chorales need music21 (pip install music21==10.5.1)")
    from lmlab.data.music21_midi import convert_item

    folder = tmp_path_factory.mktemp("chorales")
    paths = []
    for rel in ("bach/bwv269.mxl", "bach/bwv347.mxl", "bach/bwv153.1.mxl"):
        data, error = convert_item((rel, None))
        assert error is None
        paths.append(folder / (rel.split("/")[1] + ".mid"))
        paths[-1].write_bytes(data)
    return paths


def check_pieces(paths, tmp_path):
    """Round trip of every file in both encodings; returns (notes checked, nested same-pitch notes)."""
    toks = [MidiTokenizer(e) for e in encodings()]
    checked = nested = 0
    for path in paths:
        ref = mido_notes(path)
        for tok in toks:
            ids = tok.encode(path, composer="bach")
            back = mido_notes(tok.write_midi(ids, tmp_path / "back.mid"))
            assert back == ref, f"{path.name} ({tok.encoding})"
            assert as_tuples(tok.decode_notes(ids)) == ref
        per_track = mido_notes(path, merge=False)
        # only the notes nested in another of their pitch (merged voices) differ from the tracks' own
        nested += len(set(per_track) - set(ref))
        assert sorted((s, p, g) for s, _, p, _, g in per_track) == sorted((s, p, g) for s, _, p, _, g in ref)
        assert sorted((e, p, g) for _, e, p, _, g in per_track) == sorted((e, p, g) for _, e, p, _, g in ref)
        checked += len(ref)
    return checked, nested


def test_chorales_round_trip(chorales, tmp_path):
    checked, _ = check_pieces(chorales, tmp_path)
    assert checked > 600


def test_both_encodings_decode_the_same_notes(chorales):
    if len(encodings()) < 2:
        pytest.skip("the remi encoding needs miditok")
    musenet, remi = MidiTokenizer("musenet"), MidiTokenizer("remi")
    for path in chorales:
        assert musenet.decode_notes(musenet.encode(path)) == remi.decode_notes(remi.encode(path))


@pytest.mark.slow
def test_all_371_chorales_round_trip(tmp_path):
    pytest.importorskip("music21", reason="the chorales need music21 (pip install music21==10.5.1)")
    from lmlab.data.music import all_pieces, chorale_files

    t0 = time.perf_counter()
    by_file = {p.name: p.path for p in all_pieces("builtin:bach-chorales", progress=False)}  # cached
    files = chorale_files()
    t1 = time.perf_counter()
    checked, nested = check_pieces([by_file[f] for f in files], tmp_path)
    t2 = time.perf_counter()
    print(f"\n371 chorales ({len(by_file)} files): {checked} notes x {len(encodings())} encodings "
          f"round-trip; {nested} notes nested in another of their pitch; convert/list {t1 - t0:.1f} s, "
          f"check {t2 - t1:.1f} s")
    assert len(files) == 371 and checked > 80_000


# ---- augmentation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", encodings())
def test_transposition_moves_pitched_notes_and_keeps_drums(encoding, tmp_path):
    path = write_mid(tmp_path / "t.mid", [(0, 0, [(0, 480, 60, 64), (0, 480, 125, 64), (480, 960, 2, 64)]),
                                          (9, 0, [(0, 240, 36, 100)])])
    tok = MidiTokenizer(encoding)
    base = tok.notes(path)
    up = tok.decode_notes(tok.encode(path, transpose=3))
    # 125 + 3 leaves MIDI's range: dropped; the drum stays on 36
    assert as_tuples(up) == sorted([(0, 12, 63, 16, 0), (12, 24, 5, 16, 0), (0, 6, 36, 25, 128)])
    down = tok.decode_notes(tok.encode(path, transpose=-4))
    assert [n.pitch for n in down if n.program == 0] == [56, 121]  # 2 - 4 dropped
    assert transpose(base, 0) == base
    with pytest.raises(TokenizerError, match="whole number of semitones"):
        tok.encode(path, transpose=1.5)


@pytest.mark.parametrize("encoding", encodings())
def test_tempo_stretch_scales_times_on_the_grid(encoding, tmp_path):
    path = write_mid(tmp_path / "s.mid", [(0, 0, [(0, 40, 60, 64), (480, 960, 62, 64), (960, 2000, 64, 64)])])
    tok = MidiTokenizer(encoding)
    base = tok.notes(path)  # (0, 1), (12, 24), (24, 50)
    slow = tok.decode_notes(tok.encode(path, stretch=2.0))
    assert [(n.start, n.end) for n in slow] == [(2 * n.start, 2 * n.end) for n in base]
    fast = tok.decode_notes(tok.encode(path, stretch=0.5))
    # halves up; the one-step note keeps one step
    assert [(n.start, n.end) for n in fast] == [(0, 1), (6, 12), (12, 25)]
    assert stretch(base, 1.0) == base and fast == stretch(base, 0.5)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(TokenizerError, match="stretch must be a positive number"):
            tok.encode(path, stretch=bad)


# ---- vocabulary, files ----------------------------------------------------------------------------
def test_vocabulary_layout():
    tok = MidiTokenizer("musenet")
    head = 3 + len(DEFAULT_COMPOSERS) + 129
    assert tok.vocab_size == head + 129 + BINS + 128 + 128 + 4 * SPQ
    assert (tok.pad_token_id, tok.eos_token_id, tok.start_token_id) == (0, 1, 2)
    assert tok.special_tokens == ["<pad>", "<eos>", "<start>"] and tok.kind == "midi"
    assert tok.instruments[:2] == ["acoustic_grand_piano", "bright_acoustic_piano"]
    assert tok.instruments[-1] == "drums" and len(tok.instruments) == 129
    assert tok.token_to_id("on:60") is not None and tok.token_to_id("on:128") is None
    small = MidiTokenizer("musenet", composers=["a", "b"], steps_per_quarter=4, velocity_bins=8)
    assert small.composers == ["unknown", "a", "b"]
    assert small.vocab_size == 3 + 3 + 129 + 129 + 8 + 256 + 16


def test_gm_names_match_miditok():
    pytest.importorskip("miditok", reason="the oracle list is miditok's")
    import re

    from miditok.constants import MIDI_INSTRUMENTS

    def letters(name):  # "Acoustic Guitar (nylon)" -> "acousticguitarnylon"; first name of a list
        return re.sub(r"[^a-z0-9]", "", name.split(",")[0].lower())

    # where miditok spells GM differently: "Clavi", "String Ensembles 1/2"
    spelled = {7: "clavi", 48: "stringensembles1", 49: "stringensembles2"}
    assert len(GM_PROGRAMS) == len(MIDI_INSTRUMENTS) == 128
    for program, (ours, theirs) in enumerate(zip(GM_PROGRAMS, MIDI_INSTRUMENTS, strict=True)):
        assert spelled.get(program, ours.replace("_", "")) == letters(theirs["name"]), (program, ours)


@pytest.mark.parametrize("encoding", encodings())
def test_save_load_gives_identical_ids(encoding, crossing, tmp_path):
    tok = MidiTokenizer(encoding, composers=["bach", "folk"], steps_per_quarter=24, velocity_bins=16)
    tok.save(tmp_path / "tok")
    import json

    spec = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert spec["kind"] == "midi" and spec["encoding"] == encoding
    assert spec["settings"]["steps_per_quarter"] == 24 and spec["composers"] == ["unknown", "bach", "folk"]
    back = load_tokenizer(tmp_path / "tok")
    assert isinstance(back, MidiTokenizer) and back.vocab_size == tok.vocab_size
    assert back.encode(crossing, "folk", transpose=2) == tok.encode(crossing, "folk", transpose=2)
    spec["tokens"][5] = "composer:zzz"
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="differs from the saved one at id 5"):
        load_tokenizer(tmp_path / "tok")
    spec["settings"]["steps_per_quarter"] = 0
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="steps_per_quarter must be a positive integer"):
        load_tokenizer(tmp_path / "tok")


# ---- bad input ------------------------------------------------------------------------------------
def test_bad_files_are_one_line_errors(tmp_path):
    tok = MidiTokenizer("musenet")
    (tmp_path / "empty.mid").write_bytes(b"")
    (tmp_path / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\xff\xff")
    (tmp_path / "text.mid").write_text("not midi at all, just some text that is long enough")
    cases = [("empty.mid", "empty file, not MIDI"), ("corrupt.mid", "not a readable MIDI file"),
             ("text.mid", "not a readable MIDI file"), ("missing.mid", "cannot read")]
    for name, message in cases:
        with pytest.raises(TokenizerError, match=message) as e:
            tok.encode(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value)
    with pytest.raises(TokenizerError, match="expected a MIDI file path, MIDI bytes or a symusic Score"):
        tok.encode(12)


def test_unknown_composer_or_instrument_lists_the_known_ones(crossing):
    tok = MidiTokenizer("musenet")
    with pytest.raises(TokenizerError, match="unknown composer 'Bach'; known composers: unknown, bach,") as e:
        tok.encode(crossing, composer="Bach")
    assert "palestrina" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TokenizerError, match="unknown instrument 'piano'; known instruments: acoustic_gr"):
        tok.prompt("bach", ["piano"])
    ids = tok.prompt("bach", ["violin", "drums"])
    assert [tok.id_to_token(i) for i in ids] == ["composer:bach", "instrument:violin", "instrument:drums",
                                                 "<start>"]
    with pytest.raises(TokenizerError, match="unknown MIDI encoding 'tsd'"):
        MidiTokenizer("tsd")
    with pytest.raises(TokenizerError, match="unknown setting 'grid'"):
        MidiTokenizer("musenet", grid=8)


def test_decode_is_lenient_with_generated_streams():
    tok = MidiTokenizer("musenet")
    t = tok.token_to_id
    ids = [t("composer:bach"), t("<start>"), t("off:60"),  # an off with nothing sounding: ignored
           t("program:40"), t("on:60"), t("on:62"), t("shift:12"), t("off:60"), t("on:64"), t("shift:6"),
           t("on:65"),  # ends where the stream ends: zero length, dropped
           t("<eos>"), t("on:70"), t("shift:12")]  # after <eos>: not this piece
    notes = tok.decode_notes(ids)
    vel = notes[0].velocity
    assert notes == [Note(0, 12, 60, vel, 40), Note(0, 18, 62, vel, 40), Note(12, 18, 64, vel, 40)]
    assert tok.decode_notes([]) == [] and len(tok.decode([t("<start>")]).tracks) == 0
    with pytest.raises(TokenizerError, match=f"token id {tok.vocab_size} is not in the vocabulary"):
        tok.decode([tok.vocab_size])
