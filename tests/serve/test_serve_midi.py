"""Music models (a MIDI tokenizer): the card says so, prompts are spelled by the tokenizer, completions
stream event names, and /v1/midi/render gives the notes and a MIDI file. Checked with a stand-in
tokenizer that has the music family's interface (tests/serve/serve_fake_midi.py), and with the music
family's own MIDI tokenizer (lmlab.tokenizers.midi) from a saved model dir."""

from __future__ import annotations

import base64

import pytest
import torch
from serve_fake_midi import FakeMidiTokenizer
from serve_helpers import post, request, served, served_model

import lmlab


@pytest.fixture(scope="module")
def music():
    tok = FakeMidiTokenizer()
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", vocab_size=tok.vocab_size, init_std=0.4)
    with served_model(model, tok, name="music-tiny") as (url, _):
        yield url, tok, model


def test_the_card_offers_the_music_parts(music):
    url, tok, _ = music
    card = request(url + "/v1/models")[1]["data"][0]["lmlab"]
    assert card["tokenizer"] == "midi" and "midi" in card["endpoints"]
    assert card["midi"] == {"composers": tok.composers, "instruments": tok.instruments}


def test_prompt_complete_render(music):
    url, tok, model = music
    status, out, _ = post(url + "/v1/midi/prompt", {"composer": "bach", "instruments": ["violin"]})
    assert status == 200 and out["prompt"] == "composer:bach instrument:violin <start>"
    prompt = out["prompt"]
    status, out, _ = post(url + "/v1/completions", {"prompt": prompt, "max_tokens": 30, "temperature": 0,
                                                    "ignore_eos": True})
    text = out["choices"][0]["text"]
    names = text.split()
    assert status == 200 and len(names) == 30 and text.startswith(" ")
    ids = [tok.token_to_id(n) for n in prompt.split() + names]
    want = lmlab.generate(model, [ids[:3]], max_new_tokens=30)[0].tolist()
    assert ids == want  # the names are the greedy tokens
    status, out, _ = post(url + "/v1/midi/render", {"text": prompt + text})
    assert status == 200 and out["steps_per_quarter"] == 4
    assert out["notes"] == [list(n) for n in tok.decode_notes(ids)]
    assert base64.b64decode(out["midi"]).startswith(b"MThd")


def test_music_errors(music, gpt2_chars_dir):
    url, _, _ = music
    status, out, _ = post(url + "/v1/midi/prompt", {"composer": "mozart"})
    assert status == 422 and "unknown composer 'mozart'" in out["error"]["message"]
    status, out, _ = post(url + "/v1/completions", {"prompt": "composer:bach note:99"})
    assert status == 422 and "unknown event token 'note:99'" in out["error"]["message"]
    status, out, _ = post(url + "/v1/midi/render", {"text": "bogus"})
    assert status == 422

    with served(gpt2_chars_dir) as (text_url, _):
        status, out, _ = post(text_url + "/v1/midi/render", {"text": "a"})
        assert status == 400 and "has no midi" in out["error"]["message"]


def test_the_music_familys_own_tokenizer(tiny_model_dir):
    """The MIDI tokenizer lmlab ships (kind midi, MuseNet-style events), from a saved model dir."""
    midi_module = pytest.importorskip("lmlab.tokenizers.midi")
    tok = midi_module.MidiTokenizer("musenet")
    model_dir = tiny_model_dir("gpt2", tok, init_std=0.4)
    with served(model_dir) as (url, _):
        card = request(url + "/v1/models")[1]["data"][0]["lmlab"]
        assert card["midi"]["composers"] == tok.composers and "violin" in card["midi"]["instruments"]
        prompt = post(url + "/v1/midi/prompt", {"composer": "bach", "instruments": ["violin"]})[1]["prompt"]
        assert prompt == "composer:bach instrument:violin <start>"
        body = {"prompt": prompt, "max_tokens": 60, "temperature": 1.0, "seed": 0, "ignore_eos": True}
        out = post(url + "/v1/completions", body)[1]
        ids = [tok.token_to_id(name) for name in (prompt + out["choices"][0]["text"]).split()]
        assert len(ids) == 63 and None not in ids
        status, rendered, _ = post(url + "/v1/midi/render", {"text": prompt + out["choices"][0]["text"]})
        assert status == 200 and rendered["steps_per_quarter"] == tok.settings.steps_per_quarter
        assert rendered["notes"] == [list(n) for n in tok.decode_notes(ids)] and rendered["notes"]
        assert base64.b64decode(rendered["midi"]).startswith(b"MThd")
