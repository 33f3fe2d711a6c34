"""Music data: folders of MIDI files, the music21 built-ins (a few pieces), splits by piece, shards."""

import hashlib
import shutil

import numpy as np
import pytest

symusic = pytest.importorskip("symusic", reason="MIDI data needs symusic (pip install miditok==3.1.0)")

from lmlab.data import music  # noqa: E402
from lmlab.data.corpora import list_corpora, read_corpus  # noqa: E402
from lmlab.data.music import Piece, all_pieces, read_pieces, split_pieces  # noqa: E402
from lmlab.data.music_shards import prepare_music  # noqa: E402
from lmlab.errors import DataError  # noqa: E402
from lmlab.tokenizers.midi import DEFAULT_COMPOSERS, MidiTokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")


def midi_bytes(notes, program=0, drums=False) -> bytes:
    """A one-track MIDI file of (tick, duration, pitch) notes at 480 ticks per quarter."""
    score = symusic.Score(480)
    track = symusic.Track(program=program, is_drum=drums)
    for time, duration, pitch in notes:
        track.notes.append(symusic.Note(time, duration, pitch, 80))
    score.tracks.append(track)
    return score.dumps_midi()


def make_folder(root, files: dict):
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def tune(k):
    return midi_bytes([(i * 240, 240, 60 + (i + k) % 12) for i in range(16)])


# ---- folders ----------------------------------------------------------------------------------------
def test_folder_labels_bad_files_and_drums(tmp_path):
    folder = make_folder(tmp_path / "midi", {
        "a.mid": tune(0), "b.MID": tune(1), "bach/c.mid": tune(2), "bach/deep/d.midi": tune(3),
        "mozart/e.mid": tune(4), "drums.mid": midi_bytes([(i * 120, 60, 36) for i in range(8)], drums=True),
        "empty.mid": b"", "corrupt.mid": b"MThd\x00\x00\x00\x06garbage", "silent.mid": midi_bytes([]),
        "notes.txt": b"not music",
    })
    with pytest.warns(UserWarning) as record:
        pieces = all_pieces(str(folder))
    lines = sorted(str(w.message) for w in record)
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert lines[0].endswith("corrupt.mid: skipped, not a readable MIDI file (MiniMidi)")
    assert lines[1].endswith("empty.mid: skipped, empty file")
    assert lines[2].endswith("silent.mid: skipped, no notes")
    assert [(p.name, p.composer) for p in pieces] == [
        ("a.mid", None), ("b.MID", None), ("bach/c.mid", "bach"), ("bach/deep/d.midi", "bach"),
        ("drums.mid", None), ("mozart/e.mid", "mozart")]
    tok = MidiTokenizer("musenet", composers=music.composers_of(pieces))
    drums = next(p for p in pieces if p.name == "drums.mid")
    assert tok.id_to_token(tok.encode(drums.path)[1]) == "instrument:drums"


def test_folder_without_usable_music_is_a_data_error(tmp_path):
    make_folder(tmp_path / "bad", {"x.mid": b"", "y.mid": b"junk junk junk junk"})
    with pytest.warns(UserWarning), pytest.raises(DataError, match="none of its 2 MIDI files is usable"):
        all_pieces(str(tmp_path / "bad"))
    make_folder(tmp_path / "text", {"x.txt": b"hello"})
    with pytest.raises(DataError, match="folder holds no .mid or .midi files"):
        all_pieces(str(tmp_path / "text"))
    with pytest.raises(DataError, match="no such folder"):
        all_pieces(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="unknown music corpus 'builtin:bach'; built-in music: builtin"):
        all_pieces("builtin:bach")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        read_pieces(str(tmp_path / "text"), "dev")


# ---- splits -----------------------------------------------------------------------------------------
def test_split_by_piece_is_deterministic_and_follows_the_hash_rule(tmp_path):
    pieces = [Piece(f"p{i:02d}.mid", None, tmp_path / f"p{i:02d}.mid") for i in range(40)]
    splits = split_pieces(pieces)
    assert {k: len(v) for k, v in splits.items()} == {"train": 36, "valid": 2, "test": 2}
    by_hash = sorted(pieces, key=lambda p: hashlib.sha256(p.name.encode()).digest())
    assert {p.name for p in splits["test"]} == {p.name for p in by_hash[:2]}
    assert {p.name for p in splits["valid"]} == {p.name for p in by_hash[2:4]}
    assert splits["train"] == [p for p in pieces if p in splits["train"]]  # listing order kept
    assert split_pieces(list(pieces)) == splits
    # a piece keeps its split when pieces are added, unless it sits at the boundary
    more = split_pieces(pieces + [Piece(f"q{i}.mid", None, tmp_path / f"q{i}.mid") for i in range(10)])
    assert len({p.name for p in splits["train"]} - {p.name for p in more["train"]}) <= 1
    assert split_pieces(pieces[:2]) == {"train": pieces[:2], "valid": [], "test": []}


def test_two_pieces_have_no_valid_split(tmp_path):
    folder = make_folder(tmp_path / "two", {"a.mid": tune(0), "b.mid": tune(1)})
    assert len(read_pieces(str(folder), "train")) == 2
    with pytest.raises(DataError, match="the valid split holds no pieces"):
        read_pieces(str(folder), "valid")


# ---- built-ins (a few pieces) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def m21():
    return pytest.importorskip("music21", reason="built-in music needs music21 (pip install music21==10.5.1)")


def test_builtin_chorales_are_converted_once_and_cached(m21, monkeypatch, capsys):
    pieces = all_pieces("builtin:bach-chorales", max_pieces=3, workers=1)
    assert [p.name for p in pieces] == ["bach/bwv269.mxl", "bach/bwv347.mxl", "bach/bwv153.1.mxl"]
    assert {p.composer for p in pieces} == {"bach"} and all(p.path.stat().st_size > 1000 for p in pieces)
    assert "bach-chorales: music21 -> MIDI" in capsys.readouterr().err  # the progress bar
    assert pieces[0].path.is_relative_to(music.music_cache("bach-chorales"))

    def refuse(job):
        raise AssertionError("converted again")

    monkeypatch.setattr(music, "convert_item", refuse)
    assert all_pieces("builtin:bach-chorales", max_pieces=3) == pieces


def test_worker_processes_convert_the_same_bytes(m21):
    from lmlab.data.music21_midi import convert_item

    pieces = all_pieces("builtin:essen-folk", max_pieces=4, workers=2, progress=False)
    assert [p.name for p in pieces] == [f"essenFolksong/altdeu10.abc#{k}" for k in range(1, 5)]
    for k, p in enumerate(pieces, 1):
        assert p.path.read_bytes() == convert_item(("essenFolksong/altdeu10.abc", k))[0]


def test_builtin_listings(m21):
    files = music.chorale_files()
    assert len(files) == 371 and len(set(files)) == 349  # Riemenschneider numbers reusing a file
    essen = music._list_items("essen-folk")
    assert len(essen) == 8514 and essen[0].name == "essenFolksong/altdeu10.abc#1" and essen[0].number == 1
    assert {it.composer for it in essen} == {"folk"}
    composers = music._list_items("music21-composers")
    assert {it.composer for it in composers} == set(music.COMPOSER_FOLDERS)
    assert not any(it.file.endswith(".rntxt") for it in composers)
    assert any(it.name == "josquin/milleRegrets.abc#4" for it in composers)  # one piece per tune


def test_labels_are_known_to_the_default_tokenizer():
    assert set(DEFAULT_COMPOSERS) == set(music.COMPOSER_FOLDERS) | {music.FOLK_LABEL, "unknown"}


def test_conversion_failures_are_one_warning_and_left_out(m21, monkeypatch):
    shutil.rmtree(music.music_cache("essen-folk"), ignore_errors=True)  # convert afresh
    real = music.convert_item
    monkeypatch.setattr(music, "convert_item", lambda job: (None, "Boom") if job[1] == 2 else real(job))
    with pytest.warns(UserWarning, match=r"builtin:essen-folk: music21 could not convert 1 of 3 pieces, left "
                                         r"out: essenFolksong/altdeu10.abc#2 \(reasons in "):
        pieces = all_pieces("builtin:essen-folk", max_pieces=3, workers=1, progress=False)
    assert [p.name for p in pieces] == ["essenFolksong/altdeu10.abc#1", "essenFolksong/altdeu10.abc#3"]
    assert {p.composer for p in pieces} == {"folk"}


def test_music21_repairs_convert_what_its_writer_refuses(m21):
    """A tune whose measures share one TimeSignature object, and a chorale with repeats music21
    cannot expand: its writer raises on both, lmlab's repaired conversion keeps every note."""
    from music21 import converter, midi, repeat, stream

    from lmlab.data.music21_midi import convert_item, corpus_root

    for rel, number, error in [("essenFolksong/altdeu10.abc", 5, stream.StreamException),
                               ("bach/bwv277.krn", None, repeat.ExpanderException)]:
        score = converter.parseFile(corpus_root() / rel, number=number, forceSource=True, storePickle=False)
        with pytest.raises(error):
            midi.translate.streamToMidiFile(score)
        data, reason = convert_item((rel, number))
        assert reason is None
        written = symusic.Score.from_midi(data).note_num()
        parsed = converter.parseFile(corpus_root() / rel, number=number, forceSource=True, storePickle=False)
        # every sounding note (ties joined, rests and grace notes aside) reaches the MIDI file
        sounding = [n for n in parsed.stripTies().flatten().notes if n.duration.quarterLength]
        assert written == sum(len(n.pitches) for n in sounding)


# ---- shards, listing --------------------------------------------------------------------------------
def test_prepare_music_shards(tmp_path, monkeypatch):
    files = {f"{c}/{i}.mid": tune(i) for c in ("bach", "mozart") for i in range(4)}
    folder = make_folder(tmp_path / "lib", files)
    tok = MidiTokenizer("musenet")
    shards = prepare_music(str(folder), tok, splits=("train", "valid", "test"), progress=False)
    splits = split_pieces(all_pieces(str(folder)))
    for name, shard in shards.items():
        ids = np.asarray(shard[:])
        assert (ids == tok.eos_token_id).sum() == len(splits[name]) and ids[-1] == tok.eos_token_id
        first = splits[name][0]
        piece = ids[:ids.tolist().index(tok.eos_token_id)].tolist()
        assert piece == tok.encode(first.path, composer=first.composer)
        assert shard.vocab_size == tok.vocab_size
    monkeypatch.setattr("lmlab.data.music_shards.encode_pieces", lambda *a, **k: 1 / 0)  # cached now
    again = prepare_music(str(folder), tok, splits=("train", "valid", "test"), progress=False)
    assert all(np.array_equal(np.asarray(again[k][:]), np.asarray(shards[k][:])) for k in shards)
    with pytest.raises(DataError, match="fewer than seq_len"):
        prepare_music(str(folder), tok, seq_len=10_000, progress=False)


def test_prepare_music_refuses_unknown_labels_and_text_tokenizers(tmp_path):
    folder = make_folder(tmp_path / "lib", {f"rock/{i}.mid": tune(i) for i in range(4)})
    with pytest.raises(DataError, match=r"composer label 'rock' \(of rock/\d.mid\) is not one of the "
                                        r"tokenizer's composers \(unknown, bach, "):
        prepare_music(str(folder), MidiTokenizer("musenet"), progress=False)
    tok = MidiTokenizer("musenet", composers=music.composers_of(all_pieces(str(folder))))
    assert tok.composers == ["unknown", "rock"]
    assert len(prepare_music(str(folder), tok, progress=False)["train"]) > 0

    class Text:
        kind = "chars"

    with pytest.raises(DataError, match="needs a midi tokenizer, got a 'chars' tokenizer"):
        prepare_music(str(folder), Text())


def test_music_is_listed_with_the_corpora_and_refused_as_text():
    rows = {r["name"]: r for r in list_corpora()}
    for name in ("builtin:bach-chorales", "builtin:music21-composers", "builtin:essen-folk"):
        assert rows[name]["tokenizer"] == "midi" and rows[name]["size"]
    with pytest.raises(DataError, match="builtin:bach-chorales is MIDI music, not text"):
        read_corpus("builtin:bach-chorales", "train")
