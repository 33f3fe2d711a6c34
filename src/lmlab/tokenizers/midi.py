"""MIDI <-> token ids for the MuseNet-style music family (Payne 2019, "MuseNet").

    tok = MidiTokenizer("musenet")                 # or "remi" (miditok)
    ids = tok.encode("piece.mid", composer="bach", transpose=2, stretch=1.05)
    tok.decode(ids)                                # a symusic Score; .dump_midi(path) writes it
    tok.write_midi(ids, "out.mid")
    tok.prompt("bach", ["acoustic_grand_piano"])   # a conditioning prefix to generate from

A sequence is a conditioning prefix, as MuseNet's was ("composer and instrumentation tokens"),
then the piece: `composer:NAME instrument:A instrument:B ... <start> events...`. The instruments
are the ones the piece uses (GM program order, drums last); a piece without a composer gets
`composer:unknown`. `encode` adds no `<eos>`: the data pipeline puts one after every piece.

Encodings: "musenet", lmlab's own event stream (`midi_events`: program, velocity, note-on,
note-off, time shift) and "remi", miditok's REMI (`midi_remi`). Both read the same notes
(`midi_notes`): onsets and ends on a grid of `steps_per_quarter` steps per quarter note (default
12: sixteenths and eighth triplets exactly), velocities in `velocity_bins` bins, tracks of one
program merged, drums kept apart. OVERLAPPING NOTES OF THE SAME PITCH IN TWO VOICES ARE PAIRED
FIRST-IN, FIRST-OUT, when read and when decoded: a note-off ends the oldest sounding note of its
instrument and pitch. A naive pairing (a note-off ends the newest note, or the note-ons are
written in any order) swaps the durations of two voices that meet on one pitch, as in the Bach
chorales where alto and tenor often do. A note nested inside another of its pitch (A 0-4, B 1-2)
is the one case MIDI itself cannot tell from a crossing pair; it comes back as A 0-2, B 1-4.

Round trip: `decode_notes(encode(x)) == notes(x)` for every MIDI x: every note's pitch,
instrument (GM program, or drums), onset and end on the grid and velocity bin come back (REMI
also cuts a note longer than `max_duration_quarters`; `notes` does the same for it).
Not kept: tempo (the decoder writes `tempo_qpm`), time and key signatures, controllers, pitch
bends, a drum track's program number, track names (one track per instrument comes back).
Augmentation: `transpose` semitones (drums untouched, notes leaving 0..127 dropped) and `stretch`
(times scaled on the grid), both in `midi_notes`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lmlab.errors import TokenizerError
from lmlab.tokenizers import midi_notes
from lmlab.tokenizers.common import read_kind, string_list, write_text
from lmlab.tokenizers.midi_notes import INSTRUMENTS, Note, fifo_pairs, notes_to_score, read_notes

PAD, EOS, START = "<pad>", "<eos>", "<start>"
UNKNOWN_COMPOSER = "unknown"
ENCODINGS = ("musenet", "remi")
# The labels of lmlab's built-in music (lmlab.data.music): the music21 corpus's composer folders,
# "folk" for the Essen folk songs, and "unknown" for a piece without a label.
DEFAULT_COMPOSERS = (
    UNKNOWN_COMPOSER, "bach", "beach", "beethoven", "chopin", "ciconia", "corelli", "cpebach", "folk",
    "handel", "haydn", "johnson_j_r", "joplin", "josquin", "liliuokalani", "luca", "lusitano",
    "monteverdi", "mozart", "palestrina", "schoenberg", "schubert", "schumann_clara", "schumann_robert",
    "trecento", "verdi", "weber", "webern",
)


@dataclass(frozen=True)
class MidiSettings:
    """What fixes the ids, besides the encoding and the composer list (saved in tokenizer.json)."""

    steps_per_quarter: int = 12
    velocity_bins: int = 32
    max_shift_quarters: int = 4  # musenet: the longest single time-shift token
    max_duration_quarters: int = 16  # remi: the longest note duration token
    tempo_qpm: float = 120.0  # the tempo decode writes

    def check(self, where: str = "MidiTokenizer") -> None:
        for name in ("steps_per_quarter", "velocity_bins", "max_shift_quarters", "max_duration_quarters"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TokenizerError(f"{where}: {name} must be a positive integer, got {value!r}")
        if self.velocity_bins > 127:
            raise TokenizerError(f"{where}: velocity_bins must be at most 127, got {self.velocity_bins}")
        if not isinstance(self.tempo_qpm, (int, float)) or not 1 <= self.tempo_qpm <= 1000:
            raise TokenizerError(f"{where}: tempo_qpm must be a number in 1..1000, got {self.tempo_qpm!r}")


class MidiTokenizer:
    """MIDI <-> ids; `<pad>` = 0, `<eos>` = 1, `<start>` = 2, then composers, instruments, events."""

    kind = "midi"

    def __init__(self, encoding: str = "musenet", composers=DEFAULT_COMPOSERS,
                 settings: MidiSettings | None = None, **fields):
        if encoding not in ENCODINGS:
            raise TokenizerError(f"unknown MIDI encoding {encoding!r}; expected musenet or remi")
        self.encoding = encoding
        self.settings = settings if settings is not None else MidiSettings(**_known_fields(fields))
        self.settings.check()
        composers = list(composers)
        if not composers or not all(isinstance(c, str) and c and ":" not in c for c in composers):
            raise TokenizerError("composers must be a non-empty list of names without ':'")
        if UNKNOWN_COMPOSER not in composers:
            composers.insert(0, UNKNOWN_COMPOSER)
        if len(set(composers)) != len(composers):
            raise TokenizerError(f"composer {next(c for c in composers if composers.count(c) > 1)!r} "
                                 f"is listed twice")
        self.composers = composers
        s = self.settings
        if encoding == "musenet":
            from lmlab.tokenizers.midi_events import EventCodec

            self._codec = EventCodec(s.velocity_bins, s.max_shift_quarters * s.steps_per_quarter)
        else:
            from lmlab.tokenizers.midi_remi import RemiCodec

            self._codec = RemiCodec(s.steps_per_quarter, s.velocity_bins, s.max_duration_quarters)
        head = [PAD, EOS, START] + [f"composer:{c}" for c in composers]
        head += [f"instrument:{name}" for name in INSTRUMENTS]
        self._offset = len(head)
        self._tokens = head + list(self._codec.tokens)
        self._ids = {t: i for i, t in enumerate(self._tokens)}

    # ---- vocabulary ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def special_tokens(self) -> list[str]:
        return [PAD, EOS, START]

    @property
    def pad_token_id(self) -> int:
        return self._ids[PAD]

    @property
    def eos_token_id(self) -> int:
        return self._ids[EOS]

    @property
    def start_token_id(self) -> int:
        return self._ids[START]

    @property
    def instruments(self) -> list[str]:
        """The instrument names conditioning knows: the 128 General MIDI programs, then "drums"."""
        return list(INSTRUMENTS)

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < len(self._tokens):
            raise TokenizerError(f"token id {token_id} is not in the vocabulary (size {self.vocab_size})")
        return self._tokens[token_id]

    # ---- encode -------------------------------------------------------------------------------
    def notes(self, source, transpose: int = 0, stretch: float = 1.0) -> list[Note]:
        """The canonical grid notes of a MIDI path / bytes / symusic Score (or a list of Note),
        augmented: what `encode` writes and `decode_notes(encode(...))` gives back."""
        s = self.settings
        if isinstance(source, list) and all(isinstance(n, Note) for n in source):
            notes = fifo_pairs(source)
        else:
            notes = read_notes(source, s.steps_per_quarter, s.velocity_bins)
        notes = midi_notes.stretch(midi_notes.transpose(notes, transpose), stretch)
        if self.encoding == "remi":  # REMI has no duration token past max_duration_quarters
            longest = s.max_duration_quarters * s.steps_per_quarter
            notes = fifo_pairs([n._replace(end=min(n.end, n.start + longest)) for n in notes])
        return notes

    def prompt(self, composer: str | None = None, instruments=()) -> list[int]:
        """The conditioning prefix: composer, instrument names (GM names or "drums"), `<start>`."""
        composer = UNKNOWN_COMPOSER if composer is None else composer
        if composer not in self.composers:
            raise TokenizerError(f"unknown composer {composer!r}; known composers: "
                                 f"{', '.join(self.composers)}")
        ids = [self._ids[f"composer:{composer}"]]
        if isinstance(instruments, str):
            instruments = [instruments]
        for name in instruments:
            if name not in INSTRUMENTS:
                raise TokenizerError(f"unknown instrument {name!r}; known instruments: "
                                     f"{', '.join(INSTRUMENTS)}")
            ids.append(self._ids[f"instrument:{name}"])
        return ids + [self.start_token_id]

    def encode(self, source, composer: str | None = None, transpose: int = 0,
               stretch: float = 1.0) -> list[int]:
        """Ids of a piece: its conditioning prefix, then its events (no `<eos>`)."""
        self.prompt(composer)  # an unknown composer fails before the file is read
        notes = self.notes(source, transpose, stretch)
        used = [INSTRUMENTS[p] for p in sorted({n.program for n in notes})]
        return self.prompt(composer, used) + self._encode_events(notes)

    def _encode_events(self, notes: list[Note]) -> list[int]:
        return [self._offset + k for k in self._codec.encode(notes)]

    # ---- decode -------------------------------------------------------------------------------
    def decode_notes(self, ids) -> list[Note]:
        """The notes of a sequence: events after the first `<start>` (all of them when there is
        none) up to the first `<eos>`; other prefix tokens are skipped."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        n = len(self._tokens)
        bad = next((i for i in ids if not (isinstance(i, int) and 0 <= i < n)), None)
        if bad is not None:
            raise TokenizerError(f"token id {bad!r} is not in the vocabulary (size {n})")
        if self.start_token_id in ids:
            ids = ids[ids.index(self.start_token_id) + 1:]
        if self.eos_token_id in ids:
            ids = ids[:ids.index(self.eos_token_id)]
        return self._codec.decode([i - self._offset for i in ids if i >= self._offset])

    def decode(self, ids):
        """A symusic Score (one track per instrument, `steps_per_quarter` ticks per quarter)."""
        s = self.settings
        return notes_to_score(self.decode_notes(ids), s.steps_per_quarter, s.tempo_qpm)

    def write_midi(self, ids, path: str | Path) -> Path:
        """Decode `ids` and write a standard MIDI file at `path`."""
        path = Path(path)
        try:
            path.write_bytes(self.decode(ids).dumps_midi())
        except OSError as e:
            raise TokenizerError(f"{path}: cannot write ({e.strerror or e})") from None
        return path

    # ---- files --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        spec = {"kind": self.kind, "encoding": self.encoding, "settings": asdict(self.settings),
                "composers": self.composers, "tokens": self._tokens}
        if self.encoding == "remi":
            from lmlab.tokenizers.midi_remi import MIDITOK_VERSION

            spec["miditok"] = MIDITOK_VERSION
        write_text(d / "tokenizer.json", json.dumps(spec, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> MidiTokenizer:
        path = Path(directory) / "tokenizer.json"
        spec = read_kind(path, cls.kind)
        settings = spec.get("settings")
        if not isinstance(settings, dict):
            raise TokenizerError(f"{path}: 'settings' must be a JSON object")
        try:
            settings = MidiSettings(**_known_fields(settings, str(path)))
        except TypeError as e:
            raise TokenizerError(f"{path}: bad 'settings' ({e})") from None
        settings.check(str(path))
        tok = cls(spec.get("encoding"), string_list(spec.get("composers"), "composers", path), settings)
        saved = string_list(spec.get("tokens"), "tokens", path)
        if saved != tok._tokens:
            k = next((i for i, (a, b) in enumerate(zip(saved, tok._tokens, strict=False)) if a != b),
                     min(len(saved), tok.vocab_size))
            raise TokenizerError(f"{path}: the vocabulary rebuilt from its settings differs from the saved "
                                 f"one at id {k} (saved {len(saved)} tokens, rebuilt {tok.vocab_size}); "
                                 f"saved with miditok {spec.get('miditok')}?")
        return tok

    def __repr__(self) -> str:
        return f"MidiTokenizer(encoding={self.encoding!r}, vocab_size={self.vocab_size}, {self.settings})"


def _known_fields(fields: dict, where: str = "MidiTokenizer") -> dict:
    known = MidiSettings.__dataclass_fields__
    unknown = [k for k in fields if k not in known]
    if unknown:
        raise TokenizerError(f"{where}: unknown setting {unknown[0]!r}; expected one of {', '.join(known)}")
    return fields

