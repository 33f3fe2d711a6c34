"""A choice's text as tokens arrive: never part of a character (byte-level tokens), never a stop string or
its beginning until it is known not to be one; event names for a MIDI tokenizer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_fake_midi import FakeMidiTokenizer

from lmlab.serve.codec import ChoiceText, EventNames, TextCodec, held_back
from lmlab.serve.protocol import ApiError

TEXT = "naïve café: 你好, wörld! ✓ 🎵 end"


def _bytes_as_ids(tok, text: str) -> list[int]:
    """One token per UTF-8 byte (the 256 byte tokens every byte-level BPE has)."""
    by_bytes = {tok.decode_bytes([i]): i for i in range(tok.vocab_size) if len(tok.decode_bytes([i])) == 1}
    return [by_bytes[bytes([b])] for b in text.encode()]


def test_streamed_pieces_never_split_a_character(byte_bpe):
    ids = _bytes_as_ids(byte_bpe, TEXT)
    assert len(ids) > len(TEXT) + 10  # many characters take several tokens
    choice = ChoiceText(TextCodec(byte_bpe), byte_bpe.encode("prompt "), ())
    pieces = [choice.push(i) for i in ids] + [choice.finish()]
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == TEXT
    assert sum(1 for p in pieces if p) >= len(TEXT) - 2  # released as soon as each character is whole


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abcé你 ", min_size=0, max_size=30), st.lists(st.text(alphabet="abé你", min_size=1,
                                                                               max_size=3), max_size=3))
def test_stop_strings_never_reach_the_client(byte_bpe, text, stops):
    ids = _bytes_as_ids(byte_bpe, text)
    choice = ChoiceText(TextCodec(byte_bpe), [], tuple(stops))
    sent = "".join([choice.push(i) for i in ids] + [choice.finish()])
    cut = min([text.find(s) for s in stops if s in text], default=len(text))
    assert sent == text[:cut]
    assert choice.cut == (cut < len(text))


def test_held_back():
    assert held_back("hello wo", ("world",)) == 2
    assert held_back("hello w", ("xyz", "wa")) == 1
    assert held_back("hello", ("world",)) == 0
    assert held_back("abab", ("abac",)) == 2


def test_event_names():
    tok = FakeMidiTokenizer()
    codec = EventNames(tok)
    ids = codec.encode("composer:bach  <start>\nnote:60 wait:2")
    assert ids == [4, 2, tok.token_to_id("note:60"), tok.token_to_id("wait:2")]
    assert codec.decode(ids) == "composer:bach <start> note:60 wait:2" and codec.piece(2) == "<start>"
    with pytest.raises(ApiError, match="unknown event token 'note:1'"):
        codec.encode("note:1")
    choice = ChoiceText(codec, ids[:2], ())
    assert choice.push(ids[2]) == " note:60" and choice.push(ids[3]) == " wait:2"
