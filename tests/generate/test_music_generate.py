"""Music end to end: `lmlab pretrain --model music` on chorales, `lmlab generate` to MIDI (read back
by music21, an independent reader), the piano roll and the WAV, bad prompts, exact resume, and
`lmlab evaluate` (NLL per event) against a hand computation."""

import json
import math
import shutil

import pytest
import torch

symusic = pytest.importorskip("symusic", reason="MIDI tests need symusic (pip install miditok==3.1.0)")
music21 = pytest.importorskip("music21", reason="the chorales come from music21 (music21==10.5.1)")

import lmlab  # noqa: E402
from lmlab.cli import main  # noqa: E402
from lmlab.data.music import all_pieces  # noqa: E402
from lmlab.generate.music_render import wav_renderer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")
PNG = b"\x89PNG\r\n\x1a\n"
TRAIN = dict(steps=30, batch_size=8, seq_len=64, lr=3e-3, warmup=3, log_every=1, eval_every=0,
             eval_batches=2, save_every=0)


def args(command: list[str], **flags) -> list[str]:
    out = list(command)
    for name, value in flags.items():
        if name == "set":
            for item in value:
                out += ["--set", item]
        elif value is True:
            out.append("--" + name.replace("_", "-"))
        elif value is not None and value is not False:
            out += ["--" + name.replace("_", "-"), str(value)]
    return out


@pytest.fixture(scope="module")
def chorales(tmp_path_factory):
    """Six Bach chorales from music21's corpus (converted to MIDI) in a folder labelled bach."""
    folder = tmp_path_factory.mktemp("chorales") / "bach"
    folder.mkdir()
    for piece in all_pieces("builtin:bach-chorales", max_pieces=6, progress=False, workers=1):
        shutil.copy(piece.path, folder / piece.path.name)
    return folder.parent


@pytest.fixture(scope="module")
def run(chorales, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "music"
    assert main(args(["pretrain", "--no-progress"], model="music", data=chorales, out=out, device="cpu",
                     transpose=2, stretch=0.05, **TRAIN)) == 0
    return out


def midi_file(tmp_path, name, notes, drums=False):
    score = symusic.Score(480)
    track = symusic.Track(program=0, is_drum=drums)
    track.notes.extend(symusic.Note(t, d, p, 80) for t, d, p in notes)
    score.tracks.append(track)
    path = tmp_path / name
    path.write_bytes(score.dumps_midi())
    return path


def test_training_on_chorales_lowers_the_loss(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[0] > math.log(600) - 0.5 and losses[-1] < losses[0] - 1.0


def test_generated_midi_reads_back_in_music21_with_a_piano_roll_and_a_wav(run, tmp_path, capsys):
    out = tmp_path / "chorale.mid"
    assert main(["generate", str(run), "--composer", "bach", "--out", str(out), "--max-new-tokens", "120",
                 "--seed", "1"]) == 0
    _, tokenizer = lmlab.load(run)
    notes = tokenizer.decode_notes(tokenizer.encode(out))
    assert len(notes) > 5
    # music21 reads it: as a score (its quantizer splits and ties notes across bars), and as MIDI events
    assert len(music21.converter.parse(str(out)).flatten().notes) > 0
    midi = music21.midi.MidiFile()
    midi.open(str(out))
    midi.read()
    midi.close()
    onsets = [e.pitch for track in midi.tracks for e in track.events
              if e.type == music21.midi.ChannelVoiceMessages.NOTE_ON and e.velocity > 0]
    assert sorted(onsets) == sorted(n.pitch for n in notes)  # every note, by an independent reader
    assert out.with_suffix(".png").read_bytes()[:8] == PNG
    text = capsys.readouterr()
    assert f"wrote {out}, {out.with_suffix('.png')}" in text.out
    fluidsynth, _, why = wav_renderer()
    if fluidsynth is None:
        assert "apt-get install fluidsynth fluid-soundfont-gm" in text.err
        assert not out.with_suffix(".wav").exists()
        pytest.skip(why)
    wav = out.with_suffix(".wav").read_bytes()
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) > 10_000


def test_a_midi_prompt_is_continued_after_its_notes(run, chorales, tmp_path, capsys):
    prompt = sorted(chorales.rglob("*.mid"))[0]
    out = tmp_path / "more.mid"
    assert main(["generate", str(run), "--prompt-midi", str(prompt), "--out", str(out),
                 "--max-new-tokens", "20", "--num-return-sequences", "2", "--no-wav"]) == 0
    _, tokenizer = lmlab.load(run)
    want = tokenizer.notes(prompt)
    for k in (1, 2):
        got = tokenizer.decode_notes(tokenizer.encode(tmp_path / f"more-{k}.mid"))
        end = max(n.end for n in want)
        assert [n for n in got if n.start < end - 12] == [n for n in want if n.start < end - 12]
        assert (tmp_path / f"more-{k}.png").exists()
    assert "the model reads its prefix and its last" in capsys.readouterr().err  # a chorale > 64 tokens


def test_a_drum_only_prompt_is_continued_as_drums(run, tmp_path, capsys):
    drums = midi_file(tmp_path, "drums.mid", [(i * 240, 120, 36 + i % 2) for i in range(6)], drums=True)
    out = tmp_path / "d.mid"
    assert main(["generate", str(run), "--prompt-midi", str(drums), "--out", str(out), "--max-new-tokens",
                 "10", "--no-wav"]) == 0
    assert f"{drums} holds drums only" in capsys.readouterr().err
    _, tokenizer = lmlab.load(run)
    assert [n.program for n in tokenizer.notes(out)][:6] == [128] * 6


@pytest.mark.parametrize("case,expected", [
    ("empty", "empty.mid: empty file, not MIDI"),
    ("corrupt", "corrupt.mid: not a readable MIDI file"),
    ("silent", "silent.mid: the MIDI file has no notes to continue"),
    ("composer", "unknown composer 'bahc'; known composers: unknown, bach, beach,"),
    ("instrument", "unknown instrument 'piano'; known instruments: acoustic_grand_piano, "),
    ("text", "this is a music model (midi tokenizer): give --prompt-midi FILE"),
    ("no-out", "a music model writes MIDI: give --out OUT.mid"),
    ("nothing", "a music model needs --prompt-midi FILE, --composer NAME or --instrument NAME; composers:"),
])
def test_bad_music_prompts_are_one_line_errors(run, tmp_path, capsys, case, expected):
    (tmp_path / "empty.mid").write_bytes(b"")
    (tmp_path / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    midi_file(tmp_path, "silent.mid", [])
    out = ["--out", str(tmp_path / "x.mid")]
    flags = {"empty": ["--prompt-midi", str(tmp_path / "empty.mid"), *out],
             "corrupt": ["--prompt-midi", str(tmp_path / "corrupt.mid"), *out],
             "silent": ["--prompt-midi", str(tmp_path / "silent.mid"), *out],
             "composer": ["--composer", "bahc", *out],
             "instrument": ["--composer", "bach", "--instrument", "piano", *out],
             "text": ["--prompt", "hello", *out], "no-out": ["--composer", "bach"], "nothing": out}[case]
    assert main(["generate", str(run), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "x.mid").exists()


def test_music_flags_on_a_text_model_and_no_prompt_are_refused(tiny_model_dir, capsys):
    from lmlab.tokenizers.chars import CharTokenizer

    text_model = tiny_model_dir("gpt2", CharTokenizer.train(["abc def"]))
    assert main(["generate", str(text_model), "--composer", "bach"]) == 2
    assert "--composer are for music models; this model's tokenizer is chars" in capsys.readouterr().err
    assert main(["generate", str(text_model)]) == 2
    assert "generate needs --prompt TEXT" in capsys.readouterr().err


def test_stopped_and_resumed_music_run_logs_bitwise_the_same_losses(chorales, tmp_path):
    flags = dict(model="music", data=chorales, device="cpu", transpose=3, stretch=0.1, schedule="constant",
                 set=["dropout=0.1"], **{**TRAIN, "steps": 8, "save_every": 4, "eval_every": 4})
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(args(["pretrain", "--no-progress", "--out", str(reference)], **flags)) == 0
    assert main(args(["pretrain", "--no-progress", "--out", str(run)], **{**flags, "steps": 4})) == 0
    assert main(["pretrain", "--no-progress", "--out", str(run), "--resume", "--steps", "8"]) == 0

    def rows(d):
        return [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"}
                for x in (d / "metrics.jsonl").read_text().splitlines()]

    assert rows(run) == rows(reference)
    from safetensors.torch import load_file

    want, got = load_file(str(reference / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_evaluate_gives_nll_per_event_as_computed_by_hand(run, chorales, capsys):
    assert main(["evaluate", str(run), "--data", str(chorales), "--split", "valid", "--window", "64",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    model, tokenizer = lmlab.load(run)
    from lmlab.data.music import read_pieces

    # by hand: each piece from its prefix, every event after <start> scored once, the context of a
    # later window being the prefix and the 64 - prefix tokens before
    total, events = 0.0, 0
    for piece in read_pieces(str(chorales), "valid"):
        ids = tokenizer.encode(piece.path, composer=piece.composer) + [tokenizer.eos_token_id]
        p = ids.index(tokenizer.start_token_id) + 1
        for i in range(p, len(ids)):
            if i <= 64:
                context = ids[:i]
            else:  # windows of 64 after the first: scored in blocks of 64 - p
                block_end = 65 + ((i - 65) // (64 - p) + 1) * (64 - p)
                block_end = min(block_end, len(ids))
                context = ids[:p] + ids[block_end - 1 - (64 - p):i]
            with torch.no_grad():
                logits = model(torch.tensor([context])).logits[0, -1]
            total -= float(torch.log_softmax(logits.double(), -1)[ids[i]])
            events += 1
    assert result["events"] == events and result["pieces"] == 1
    assert result["nll_per_event"] == pytest.approx(total / events, rel=1e-5)
    assert result["tokens"] == events  # the events scored, the key other causal LMs report too
    # max_tokens (lmlab zoo's cap) stops after the batch that reaches it: the first window here
    assert main(["evaluate", str(run), "--data", str(chorales), "--split", "valid", "--window", "64",
                 "--batch-size", "1", "--max-tokens", "10", "--device", "cpu"]) == 0
    capped = json.loads(capsys.readouterr().out)
    assert capped["tokens"] == capped["events"] == min(len(ids), 65) - p and capped["windows"] == 1


@pytest.mark.slow
def test_pretrain_on_builtin_bach_chorales_and_generate(tmp_path, capsys):
    """The documented command on the whole built-in (converts the 349 chorales on first use: minutes)."""
    out = tmp_path / "chorales"
    assert main(args(["pretrain", "--no-progress"], model="music", data="builtin:bach-chorales", out=out,
                     device="cpu", **{**TRAIN, "steps": 3})) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    midi = tmp_path / "x.mid"
    assert main(["generate", str(out), "--composer", "bach", "--out", str(midi), "--max-new-tokens", "40",
                 "--no-wav"]) == 0
    assert len(music21.converter.parse(str(midi)).flatten().notes) > 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", "builtin:bach-chorales", "--split", "test",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pieces"] == 17 and result["nll_per_event"] > 0
