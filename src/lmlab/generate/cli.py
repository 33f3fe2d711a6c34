"""`lmlab generate`: load a model dir, encode the prompt, print tokens as they are sampled; for a music
model (a MIDI tokenizer) write the continuation of a MIDI prompt or of conditioning tokens to a MIDI
file (lmlab.generate.music)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from lmlab.checkpoints.io import load
from lmlab.errors import GenerationError, TokenizerError
from lmlab.generate.beam import translate
from lmlab.generate.loop import generate, stream
from lmlab.generate.music import check_music_flags, generate_music
from lmlab.generate.speculative import DRAFT_TOKENS, quantized_draft
from lmlab.models.heads import TaskModel
from lmlab.models.registry import spec_of
from lmlab.options import option


@dataclass(frozen=True)
class SampleOptions:
    """`lmlab generate`: a continuation of --prompt, printed as it is sampled; a music model (MIDI
    tokenizer) continues --prompt-midi and/or --composer / --instrument into --out OUT.mid (+ a
    piano-roll PNG, + a WAV where FluidSynth is installed)."""

    model_dir: str = option(help="an lmlab model dir (a run dir works)", positional=True)
    prompt: str | None = option(None, "text to continue (text models)")
    prompt_midi: str | None = option(None, "music: a MIDI file to continue", metavar="FILE")
    composer: str | None = option(None, "music: the composer to condition on, e.g. bach")
    instrument: tuple[str, ...] = option((), "music: an instrument to condition on, a General MIDI name "
                                             "(acoustic_grand_piano, violin, ...) or drums (repeatable)",
                                         repeat=True)
    out: str | None = option(None, "music: the MIDI file to write (OUT.png beside it, and OUT.wav)",
                             metavar="OUT.mid")
    soundfont: str | None = option(None, "music: a General MIDI .sf2 soundfont for the WAV (default: "
                                         "Debian's fluid-soundfont-gm where installed)")
    wav: bool = option(True, "music: no WAV rendering", flag="no-wav")
    max_new_tokens: int = option(50, "tokens to generate")
    greedy: bool = option(False, "always take the most likely token")
    temperature: float = option(1.0, "softmax temperature")
    top_k: int = option(40, "sample among the k most likely (0 = off)")
    top_p: float = option(1.0, "nucleus sampling mass in (0, 1]")
    repetition_penalty: float = option(1.0, "CTRL penalty, 1.0 = off")
    num_return_sequences: int = option(1, "continuations to sample")
    stop: tuple[str, ...] = option((), "stop once the text contains this string (repeatable)", repeat=True)
    stop_at_eos: bool = option(True, "keep going past end-of-text", flag="no-stop-at-eos")
    seed: int = option(0, "sampling seed")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    draft: str | None = option(None, "speculative greedy decoding (needs --greedy): 'int8' drafts with an "
                                     "int8 copy of the model (CPU), or name a smaller model dir with the "
                                     "same vocabulary", metavar="int8|MODEL_DIR")
    draft_tokens: int = option(DRAFT_TOKENS, "tokens the draft proposes per round")
    beam_size: int = option(1, "translation models (cove): the prompt is the source sentence, translated "
                               "greedily (1) or by beam search with this many hypotheses")
    length_penalty: float = option(1.0, "beam search: α of the length normalisation ((5 + |y|) / 6)^α "
                                        "(0 = raw log-probability)")
    replace_unk: bool = option(False, "translation models: write each <unk> as the source word the "
                                      "attention weighted most (Luong et al. 2015)")


class TextStreamer:
    """Turns a growing list of ids into printable text without splitting a character: the text of a
    byte-level token can end inside a UTF-8 sequence, so a trailing U+FFFD is held back."""

    def __init__(self, tokenizer, prompt_ids: list[int] | None = None):
        # Decoding prompt + new ids (not the new ids alone) keeps the separators a tokenizer puts
        # between tokens, e.g. the space before a word of a word-level vocabulary.
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids or [])
        self.shown = len(tokenizer.decode(self.ids)) if self.ids else 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        stable = len(text.rstrip("\ufffd"))
        piece = text[self.shown:stable]
        self.shown = max(self.shown, stable)
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        piece, self.shown = text[self.shown:], len(text)
        return piece


def generate_command(model_dir: str, prompt: str | None, max_new_tokens: int = 50, do_sample: bool = True,
                     temperature: float = 1.0, top_k: int = 40, top_p: float = 1.0,
                     repetition_penalty: float = 1.0, num_return_sequences: int = 1,
                     stop: list[str] | None = None, stop_at_eos: bool = True, seed: int = 0,
                     device: str = "cpu", draft: str | None = None, draft_tokens: int = DRAFT_TOKENS,
                     beam_size: int = 1, length_penalty: float = 1.0, replace_unk: bool = False,
                     out=None, music: dict | None = None) -> list:
    """draft: "int8" (the model with int8 layers, CPU) or a model dir: speculative greedy decoding.
    music: generate_music's options (prompt_midi, composer, instruments, out, soundfont, wav), used
    when the model's tokenizer is a MIDI one; returns the MIDI paths written then. A
    sequence-to-sequence model translates `prompt` (lmlab.generate.beam): greedy with beam_size 1,
    else beam search; the sampling options do not apply."""
    if draft is not None and do_sample:
        raise GenerationError("a draft speeds up greedy decoding only: add --greedy")
    out = out if out is not None else sys.stdout  # looked up now: the caller may have replaced it
    model, tokenizer = load(model_dir, device=device)
    if tokenizer is None:
        raise TokenizerError(f"{model_dir}: no tokenizer.json; generate needs text in and out")
    music = dict(music or {})
    is_music = tokenizer.kind == "midi"
    flags = {"--prompt-midi": music.get("prompt_midi"), "--composer": music.get("composer"),
             "--instrument": music.get("instruments"), "--out": music.get("out")}
    check_music_flags(is_music, prompt, flags, tokenizer.kind)
    if is_music:
        if draft is not None:
            raise GenerationError("--draft decodes text models only")
        return generate_music(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=do_sample,
                              temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=repetition_penalty,
                              num_return_sequences=num_return_sequences, seed=seed, stream=out, **music)
    if not isinstance(model, TaskModel) and spec_of(model).kind == "seq2seq":
        text = translate(model, tokenizer, [prompt], beam_size=beam_size, max_len=max_new_tokens,
                         length_penalty=length_penalty, replace_unk=replace_unk)[0]
        out.write(text + "\n")
        return [text]
    draft_model = None
    if draft == "int8":
        draft_model = quantized_draft(model)
    elif draft is not None:
        draft_model, _ = load(draft, device=device)
    ids = tokenizer.encode(prompt)
    options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                   top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
                   eos_token_id=tokenizer.eos_token_id if stop_at_eos else None,
                   stop_strings=stop, tokenizer=tokenizer if stop else None)
    if draft_model is not None:
        options.update(draft_model=draft_model, draft_tokens=draft_tokens)
    eos = options["eos_token_id"]
    if num_return_sequences == 1:
        streamer = TextStreamer(tokenizer, ids)
        out.write(prompt)
        for token in stream(model, [ids], **options):
            t = int(token[0])
            if eos is not None and t == eos:
                break
            out.write(streamer.push(t))
            out.flush()
        out.write(streamer.flush() + "\n")
        return [prompt + tokenizer.decode(streamer.ids)[len(tokenizer.decode(ids)):]]
    rows = generate(model, [ids], num_return_sequences=num_return_sequences, **options)
    texts = []
    for i, row in enumerate(rows[:, len(ids):].tolist()):
        if eos is not None and eos in row:
            row = row[:row.index(eos)]
        texts.append(prompt + tokenizer.decode(ids + row)[len(tokenizer.decode(ids)):])
        out.write(f"--- {i + 1} ---\n{texts[-1]}\n")
    return texts
