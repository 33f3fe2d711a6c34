"""Generated music for eyes and ears: a piano-roll PNG and, where FluidSynth is installed, a WAV.

The piano roll draws every note as a bar (time in quarter notes across, MIDI pitch up), the
prompt's notes in grey and the continuation's in one colour per instrument, with a line where the
prompt ends; drum hits are crosses at their General MIDI key. The WAV is FluidSynth's rendering
of the MIDI file with a General MIDI soundfont (Debian: `apt-get install fluidsynth
fluid-soundfont-gm`); neither is a Python dependency, and `lmlab generate` says how to get them
when they are missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from lmlab.errors import GenerationError
from lmlab.tokenizers.midi_notes import DRUMS, INSTRUMENTS

# Where Debian/Ubuntu (fluid-soundfont-gm, musescore-general-soundfont), Fedora and Arch put a GM soundfont.
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2",
              "/usr/share/sounds/sf2/MuseScore_General.sf2", "/usr/share/soundfonts/FluidR3_GM.sf2",
              "/usr/share/soundfonts/default.sf2")
HOW_TO_GET = ("install FluidSynth and a General MIDI soundfont (Debian/Ubuntu: sudo apt-get install "
              "fluidsynth fluid-soundfont-gm), or pass --soundfont FILE.sf2")
RENDER_TIMEOUT_S = 300


def piano_roll(notes, path: str | Path, steps_per_quarter: int, prompt_end: int | None = None,
               title: str | None = None) -> Path:
    """Write a piano-roll PNG of `notes` (midi_notes.Note, times in grid steps). Notes that start
    before `prompt_end` are the prompt's (grey); a dashed line marks where it ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    colours = plt.get_cmap("tab10")
    programs = sorted({n.program for n in notes if n.program != DRUMS})
    for n in notes:
        prompt = prompt_end is not None and n.start < prompt_end
        x, width = n.start / steps_per_quarter, (n.end - n.start) / steps_per_quarter
        if n.program == DRUMS:
            ax.plot([x], [n.pitch], marker="x", markersize=3, color="0.55" if prompt else "black")
            continue
        colour = "0.7" if prompt else colours(programs.index(n.program) % 10)
        ax.broken_barh([(x, width)], (n.pitch - 0.4, 0.8), facecolors=colour)
    if prompt_end:
        ax.axvline(prompt_end / steps_per_quarter, color="0.3", linestyle="--", linewidth=0.8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10)) for i in range(len(programs))]
    if handles:
        ax.legend(handles, [INSTRUMENTS[p] for p in programs], fontsize=6, loc="upper right")
    pitches = [n.pitch for n in notes] or [60]
    ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    ax.set_xlim(0, max([n.end for n in notes] or [steps_per_quarter]) / steps_per_quarter)
    ax.set_xlabel("time (quarter notes)", fontsize=7)
    ax.set_ylabel("MIDI pitch", fontsize=7)
    ax.tick_params(labelsize=6)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as e:
        raise GenerationError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return path


def find_soundfont(given: str | Path | None = None) -> Path | None:
    """`given` (GenerationError if it is not a file), else the first GM soundfont found, else None."""
    if given is not None:
        if not Path(given).is_file():
            raise GenerationError(f"--soundfont {given}: no such file")
        return Path(given)
    return next((Path(p) for p in SOUNDFONTS if Path(p).is_file()), None)


def wav_renderer(soundfont: str | Path | None = None) -> tuple[str | None, Path | None, str]:
    """(fluidsynth executable, soundfont, "") when a WAV can be rendered, else (None, None, why)."""
    fluidsynth = shutil.which("fluidsynth")
    font = find_soundfont(soundfont)
    if fluidsynth is None or font is None:
        found = (("fluidsynth", fluidsynth), ("a GM soundfont", font))
        missing = " and ".join(name for name, path in found if path is None)
        return None, None, f"no WAV ({missing} not found): {HOW_TO_GET}"
    return fluidsynth, font, ""


def render_wav(midi: str | Path, wav: str | Path, fluidsynth: str, soundfont: Path,
               sample_rate: int = 44100) -> Path:
    """Render `midi` to `wav` with FluidSynth (no audio device: -F writes the file as fast as it can)."""
    cmd = [fluidsynth, "-ni", "-q", "-g", "0.8", "-r", str(sample_rate), "-F", str(wav), str(soundfont),
           str(midi)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GenerationError(f"fluidsynth could not render {midi} ({type(e).__name__})") from None
    if done.returncode != 0 or not Path(wav).is_file():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise GenerationError(f"fluidsynth could not render {midi}: {last[0][:200]}")
    return Path(wav)
