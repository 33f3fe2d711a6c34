"""A stand-in for the music family's MIDI tokenizer (kind "midi"), with the methods the server uses:
token names, the conditioning prompt, notes and a MIDI file. Its events: `note:P` (a note of pitch P
lasting one step, at the current time) and `wait:K` (K steps pass)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from lmlab.errors import TokenizerError


class Note(NamedTuple):
    start: int
    end: int
    pitch: int
    velocity: int
    program: int


@dataclass(frozen=True)
class Settings:
    steps_per_quarter: int = 4


class FakeMidiTokenizer:
    kind = "midi"

    def __init__(self):
        self.composers = ["unknown", "bach"]
        self.instruments = ["acoustic_grand_piano", "violin"]
        self.settings = Settings()
        self._tokens = (["<pad>", "<eos>", "<start>"] + [f"composer:{c}" for c in self.composers]
                        + [f"instrument:{i}" for i in self.instruments]
                        + [f"note:{p}" for p in range(60, 73)] + [f"wait:{k}" for k in (1, 2, 4)])
        self._ids = {t: i for i, t in enumerate(self._tokens)}

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def eos_token_id(self) -> int:
        return 1

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    def id_to_token(self, token_id: int) -> str:
        return self._tokens[token_id]

    def prompt(self, composer=None, instruments=()) -> list[int]:
        composer = composer or "unknown"
        if composer not in self.composers:
            raise TokenizerError(f"unknown composer {composer!r}; known: {', '.join(self.composers)}")
        bad = [i for i in instruments if i not in self.instruments]
        if bad:
            raise TokenizerError(f"unknown instrument {bad[0]!r}")
        return [self._ids[f"composer:{composer}"], *(self._ids[f"instrument:{i}"] for i in instruments), 2]

    def decode_notes(self, ids) -> list[Note]:
        time, notes = 0, []
        for name in map(self.id_to_token, ids):
            kind, _, value = name.partition(":")
            if kind == "note":
                notes.append(Note(time, time + 1, int(value), 80, 40))
            elif kind == "wait":
                time += int(value)
        return notes

    def write_midi(self, ids, path) -> Path:
        """A standard MIDI file of the notes (format 0, one track)."""
        events = b""
        for note in self.decode_notes(ids):
            events += bytes([0, 0x90, note.pitch, note.velocity, 8, 0x80, note.pitch, 0])
        events += b"\x00\xff\x2f\x00"
        data = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 4) + b"MTrk" + struct.pack(">I", len(events)) + events
        Path(path).write_bytes(data)
        return Path(path)
