"""What the API's strings are for a model's tokenizer, and a choice's text as its tokens arrive.

A text tokenizer's strings are its text. A MIDI tokenizer (kind `midi`, the music family's) has no
text: its strings are token names separated by spaces (`composer:bach instrument:violin <start> ...`),
so completions, stop strings and logprobs work the same way, and `/v1/midi/render` turns them
into notes and a MIDI file (lmlab.serve.midi).
"""

from __future__ import annotations

from lmlab.eval.inspect import token_label
from lmlab.generate.cli import TextStreamer
from lmlab.serve.protocol import ApiError


class TextCodec:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def piece(self, token: int) -> str:
        """One token's text, for logprobs (a byte-level token may be part of a character: U+FFFD)."""
        return self.tokenizer.decode([token])

    def label(self, token: int) -> str:
        """One token shown on its own (`lmlab inspect`'s labels: spaces as ␣, line breaks as ⏎)."""
        return token_label(self.tokenizer, token)


class EventNames(TextCodec):
    """A MIDI tokenizer: token names separated by spaces."""

    def encode(self, text: str) -> list[int]:
        ids = []
        for name in text.split():
            token = self.tokenizer.token_to_id(name)
            if token is None:
                raise ApiError(422, f"prompt: unknown event token {name[:40]!r} (a music model reads token "
                                    f"names such as composer:NAME, instrument:NAME, <start>)", "prompt")
            ids.append(token)
        return ids

    def decode(self, ids) -> str:
        return " ".join(self.tokenizer.id_to_token(int(i)) for i in ids)

    def piece(self, token: int) -> str:
        return self.tokenizer.id_to_token(token)

    label = piece


def codec_for(tokenizer) -> TextCodec:
    return EventNames(tokenizer) if tokenizer.kind == "midi" else TextCodec(tokenizer)


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that begins one of `stops` (it may still become one)."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class ChoiceText:
    """One choice's text as its tokens arrive: whole characters only (a trailing U+FFFD of a byte-level
    token is held back, as `lmlab generate` prints), cut before the first stop string, and holding
    back a tail that could still grow into one, so a stop string never reaches the client."""

    def __init__(self, codec: TextCodec, prompt: list[int], stops: tuple[str, ...]):
        self.streamer = TextStreamer(codec, prompt)
        self.stops = stops
        self.text, self.sent, self.cut = "", 0, False

    def push(self, token: int) -> str:
        """The new text to send after `token` (often "")."""
        if self.cut:
            return ""
        self.text += self.streamer.push(token)
        return self._release(final=False)

    def finish(self) -> str:
        if not self.cut:
            self.text += self.streamer.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stops and not self.cut:
            hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
            if hits:
                self.text, self.cut = self.text[:min(hits)], True
        end = len(self.text)
        if not (final or self.cut):
            end -= held_back(self.text, self.stops)
        piece = self.text[self.sent:max(end, self.sent)]
        self.sent += len(piece)
        return piece
