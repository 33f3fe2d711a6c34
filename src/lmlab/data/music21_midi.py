"""music21 scores -> MIDI bytes, with music21's own MIDI writer (`midi.translate`).

Two repairs make more of the corpus convert; neither changes a note:
- ABC tunes of one file can share one TimeSignature (or key, clef) object between measures, which
  the MIDI writer refuses ("already found in this Stream"): each measure gets its own copy.
- Repeats the writer cannot expand ("badly formed repeats") are removed and the written-out
  music converted as it stands, played once.
`convert_item` runs in worker processes: it returns (bytes, None) or (None, reason), never raises.
"""

from __future__ import annotations

import copy
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lmlab.errors import DataError

MUSIC21_VERSION = "10.5.1"  # pinned in pyproject.toml: the corpus contents and counts depend on it


def music21_version() -> str | None:
    try:
        return version("music21")
    except PackageNotFoundError:
        return None


def corpus_root() -> Path:
    """The folder of music21's core corpus; DataError when music21 is not installed."""
    try:
        import music21
    except ImportError:
        raise DataError(f"built-in music needs the music21 package: "
                        f"pip install music21=={MUSIC21_VERSION}") from None
    return Path(music21.__file__).parent / "corpus"


def _untangle(score) -> None:
    """Give every measure its own copy of a context object shared with another measure."""
    from music21 import clef, key, meter, stream

    seen: set[int] = set()
    for measure in score.recurse().getElementsByClass(stream.Measure):
        for el in list(measure.getElementsByClass((meter.TimeSignature, key.KeySignature, clef.Clef))):
            if id(el) in seen:
                measure.replace(el, copy.deepcopy(el))
            else:
                seen.add(id(el))


def _strip_repeats(score) -> None:
    from music21 import bar, repeat, spanner, stream

    for measure in score.recurse().getElementsByClass(stream.Measure):
        for side in ("leftBarline", "rightBarline"):
            if isinstance(getattr(measure, side), bar.Repeat):
                setattr(measure, side, None)
    for el in list(score.recurse().getElementsByClass((repeat.RepeatExpression, spanner.RepeatBracket))):
        el.activeSite.remove(el)


def score_to_midi(score) -> bytes:
    """MIDI bytes of a music21 Score (repaired as the module docstring says)."""
    from music21 import midi, repeat

    _untangle(score)
    try:
        return midi.translate.streamToMidiFile(score).writestr()
    except repeat.ExpanderException:
        _strip_repeats(score)
        return midi.translate.streamToMidiFile(score).writestr()


def convert_item(job: tuple[str, int | None]) -> tuple[bytes | None, str | None]:
    """(MIDI bytes, None) for a corpus file (relative path) and ABC tune number, or (None, reason)."""
    rel, number = job
    try:
        from music21 import converter, stream

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # music21 warns about every odd mark it meets
            parsed = converter.parseFile(corpus_root() / rel, number=number, forceSource=True,
                                         storePickle=False)
            if isinstance(parsed, stream.Opus):  # a multi-tune file asked for without a number
                parsed = parsed.scores[0]
            data = score_to_midi(parsed)
        import symusic

        if symusic.Score.from_midi(data).note_num() == 0:
            return None, "no notes"
        return data, None
    except Exception as e:  # noqa: BLE001 -- music21 raises many kinds; the piece is reported, not fatal
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
