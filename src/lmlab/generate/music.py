"""`lmlab generate` for a model with a MIDI tokenizer: notes and conditioning in, a MIDI file out.

    lmlab generate RUN --composer bach --out chorale.mid --max-new-tokens 512
    lmlab generate RUN --prompt-midi opening.mid --composer bach --instrument acoustic_grand_piano --out x.mid

The prompt is MuseNet's (Payne 2019): the conditioning prefix `composer:C instrument:A ... <start>`,
then the events of the --prompt-midi file, if any. With --composer alone (no instruments, no MIDI)
the prompt is the composer token only and the model picks the instrumentation itself, as it learned
from the pieces of that composer. A prompt longer than the context keeps its prefix and its last
events. The output MIDI file holds the whole prompt and the continuation; beside it go OUT.png
(a piano roll: the prompt grey, the continuation in colour) and OUT.wav when FluidSynth and a GM
soundfont are installed (otherwise one line says how to get them). With several samples the files
are OUT-1.mid, OUT-2.mid, ...

Which of --prompt (text) and --prompt-midi/--composer/--instrument applies is decided by the model's
tokenizer kind: "midi" is music, every other kind text; the wrong one is refused in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lmlab.errors import GenerationError
from lmlab.generate.loop import generate
from lmlab.generate.music_render import piano_roll, render_wav, wav_renderer
from lmlab.tokenizers.midi_notes import DRUMS


def music_prompt(tokenizer, prompt_midi: str | None = None, composer: str | None = None,
                 instruments=()) -> list[int]:
    """The prompt's ids: conditioning prefix (+ the MIDI file's events). TokenizerError names an
    unknown composer or instrument (listing the known ones) and an empty or unreadable MIDI file."""
    instruments = list(instruments or ())
    if prompt_midi is None:
        if composer is None and not instruments:
            raise GenerationError(f"a music model needs --prompt-midi FILE, --composer NAME or --instrument "
                                  f"NAME; composers: {', '.join(tokenizer.composers)}")
        ids = tokenizer.prompt(composer, instruments)
        return ids[:1] if not instruments else ids  # composer alone: the model picks the instruments
    tokenizer.prompt(composer, instruments)  # unknown names fail before the file is read
    notes = tokenizer.notes(prompt_midi)
    if not notes:
        raise GenerationError(f"{prompt_midi}: the MIDI file has no notes to continue; leave --prompt-midi "
                              f"out to start from --composer / --instrument alone")
    ids = tokenizer.encode(prompt_midi, composer=composer)
    if instruments:  # the instruments asked for replace the file's own in the prefix
        ids = tokenizer.prompt(composer, instruments) + ids[ids.index(tokenizer.start_token_id) + 1:]
    return ids


def fit_context(ids: list[int], start_id: int, context: int, max_new_tokens: int) -> tuple[list[int], int]:
    """(ids that fit with max_new_tokens in the context, events dropped): the prefix and the last events."""
    room = context - max_new_tokens
    cut = ids.index(start_id) + 1 if start_id in ids else 0
    if room < cut + (1 if cut < len(ids) else 0):
        raise GenerationError(f"--max-new-tokens {max_new_tokens} leaves no room for the {len(ids)}-token "
                              f"prompt in the model's context ({context}); ask for at most "
                              f"{context - len(ids[:cut + 1])}")
    if len(ids) <= room:
        return ids, 0
    dropped = len(ids) - room
    return ids[:cut] + ids[cut + dropped:], dropped


def generate_music(model, tokenizer, out: str | None, prompt_midi: str | None = None,
                   composer: str | None = None, instruments=(), max_new_tokens: int = 512,
                   num_return_sequences: int = 1, soundfont: str | None = None, wav: bool = True,
                   stream=None, **sampling) -> list[Path]:
    """Sample continuations and write OUT.mid (+ .png, + .wav) for each; returns the MIDI paths.
    `sampling`: lmlab.generate's options (do_sample, temperature, top_k, top_p, seed, ...)."""
    if not out:
        raise GenerationError("a music model writes MIDI: give --out OUT.mid")
    stream = stream if stream is not None else sys.stdout
    out_path = Path(out)
    if out_path.suffix.lower() not in (".mid", ".midi"):
        raise GenerationError(f"--out {out}: expected a .mid file name")
    fluidsynth, font, why = wav_renderer(soundfont) if wav else (None, None, "")
    full = music_prompt(tokenizer, prompt_midi, composer, instruments)
    if prompt_midi is not None and all(n.program == DRUMS for n in tokenizer.decode_notes(full)):
        print(f"note: {prompt_midi} holds drums only (MIDI channel 10); they are continued as drums",
              file=sys.stderr)
    ids, dropped = fit_context(full, tokenizer.start_token_id, model.config.max_seq_len, max_new_tokens)
    if dropped:
        kept = len(ids) - full.index(tokenizer.start_token_id) - 1
        print(f"note: the prompt is {len(full)} tokens; the model reads its prefix and its last {kept} "
              f"events (context {model.config.max_seq_len})", file=sys.stderr)
    rows = generate(model, [ids], max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, num_return_sequences=num_return_sequences,
                    **sampling)
    spq = tokenizer.settings.steps_per_quarter
    prompt_notes = tokenizer.decode_notes(full)
    prompt_end = max((n.end for n in prompt_notes), default=0)
    written = []
    for i, row in enumerate(rows[:, len(ids):].tolist(), 1):
        if tokenizer.eos_token_id in row:
            row = row[:row.index(tokenizer.eos_token_id)]
        path = out_path if num_return_sequences == 1 else out_path.with_name(f"{out_path.stem}-{i}.mid")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GenerationError(f"{path.parent}: cannot create ({e.strerror or e})") from None
        tokenizer.write_midi(full + row, path)
        notes = tokenizer.decode_notes(full + row)
        title = f"{path.name}: {len(prompt_notes)} prompt notes (grey), {len(notes) - len(prompt_notes)} new"
        files = [path, piano_roll(notes, path.with_suffix(".png"), spq, prompt_end, title)]
        if fluidsynth is not None:
            files.append(render_wav(path, path.with_suffix(".wav"), fluidsynth, font))
        seconds = max((n.end for n in notes), default=0) / spq * 60 / tokenizer.settings.tempo_qpm
        stream.write(f"wrote {', '.join(map(str, files))}: {len(notes)} notes ({len(prompt_notes)} from the "
                     f"prompt, {len(row)} new tokens), {seconds:.1f} s at {tokenizer.settings.tempo_qpm:g} "
                     f"quarter notes/min\n")
        written.append(path)
    if wav and why:
        print(why, file=sys.stderr)
    return written


def check_music_flags(is_music: bool, prompt: str | None, music_flags: dict, kind: str) -> None:
    """The one-line refusal when a text prompt meets a music model or music flags a text model."""
    given = [name for name, value in music_flags.items() if value]
    if is_music and prompt is not None:
        raise GenerationError("this is a music model (midi tokenizer): give --prompt-midi FILE and/or "
                              "--composer NAME / --instrument NAME, and --out OUT.mid, not --prompt TEXT")
    if not is_music and given:
        raise GenerationError(f"{', '.join(given)} are for music models; this model's tokenizer is {kind}: "
                              f"give --prompt TEXT")
    if not is_music and prompt is None:
        raise GenerationError("generate needs --prompt TEXT (a music model: --prompt-midi / --composer)")
