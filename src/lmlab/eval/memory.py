"""Evaluation of models that carry state from call to call (declared state `memory`, Transformer-XL,
Dai et al. 2019; or `rnn`, LSTM LMs): the memory protocol, the paper's evaluation settings, and
eval-only overrides of tgt_len / mem_len / clamp_len / same_length.

A recurrent model (`rnn`) reads the stream the same way, in segments of `tgt_len` tokens (default
RNN_SEGMENT) carrying its (h, c) state: the state holds the whole history, so the segment length
changes the cost, never the numbers. Memory lengths and the other settings are Transformer-XL's.

Memory protocol. The stream is read in consecutive segments of `tgt_len` tokens; each segment is
scored given the memory the segments before it left (the last `mem_len` hidden states of every
layer, §3.2), then its own states enter the memory. Every target is scored exactly once, and
token t is predicted from mem_len + (1 .. tgt_len) positions of attention per layer, while its
effective context grows with depth (layer n's memory was computed from layer n-1's memory), up to
about n_layers x mem_len tokens. One segment costs O(tgt_len x (mem_len + tgt_len)) attention per
layer, so the cost per predicted token does not grow with the context a token gets.

The vanilla protocol of §3.3 / Table 9 ("sliding" with stride 1 in `lmlab.eval.perplexity`) gives
every token a window of W tokens too, but recomputes the whole window for each prediction: W
times the work per token. Fixed windows (no overlap) are cheap but give the first tokens of every
window almost no context. For a model with memory, fixed and sliding windows run each window
from an empty memory, so the three protocols differ only in the context each token gets.

With `streams` > 1 the stream is cut into that many contiguous parts scored side by side (the
batchify of the paper's eval.py, which uses 10 or 16): the first segment of every part starts
with no memory, which costs a little; the tail that does not divide evenly continues the last part.

Eval-only settings (`EvalSettings`): the paper evaluates with a shorter segment, a much longer
memory, clamped distances and `same_length` (every query sees exactly mem_len keys), e.g. its
WikiText-103 base model trains with tgt_len = mem_len = 150 but is evaluated with tgt 64, mem 640,
clamp 400. Relative positions make that possible: nothing in the weights depends on the length.
`EVAL_PRESETS` holds the settings of the released evaluation scripts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lmlab.errors import ConfigError, DataError
from lmlab.eval.perplexity import LN2, bits_per_character, model_device, perplexity, scored_text_size
from lmlab.models.registry import FAMILIES, spec_of
from lmlab.nn.state import state_rows

RNN_SEGMENT = 128  # tokens per call of the memory protocol for a recurrent model


@dataclass(frozen=True)
class EvalSettings:
    """Segment length, memory length, distance clamp (0 = none) and same_length for evaluation."""

    tgt_len: int
    mem_len: int
    clamp_len: int
    same_length: bool

    def __post_init__(self):
        for name, low in (("tgt_len", 1), ("mem_len", 0), ("clamp_len", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if self.same_length and self.mem_len == 0:
            raise ConfigError("--same-length needs --mem-len > 0 (the number of keys every query sees)")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# The evaluation settings of the paper's released scripts (kimiyoung/transformer-xl: pytorch/
# run_*.sh `eval` and tf/sota/*.sh TEST_* values). Names follow the model presets they evaluate.
EVAL_PRESETS: dict[str, EvalSettings] = {
    "wt103-base": EvalSettings(tgt_len=64, mem_len=640, clamp_len=400, same_length=True),
    "wt103-large": EvalSettings(tgt_len=128, mem_len=1600, clamp_len=1000, same_length=True),
    "enwik8-12l": EvalSettings(tgt_len=80, mem_len=2100, clamp_len=820, same_length=True),
    "enwik8-24l": EvalSettings(tgt_len=128, mem_len=3800, clamp_len=1000, same_length=True),
    "text8-24l": EvalSettings(tgt_len=128, mem_len=3800, clamp_len=1000, same_length=True),
    "lm1b": EvalSettings(tgt_len=32, mem_len=128, clamp_len=0, same_length=True),
}


def carries_state(model) -> bool:
    """True for models whose declared state continues across calls (`memory` or `rnn`)."""
    return spec_of(model).carries_state


def resolve_settings(model, preset: str | None = None, tgt_len: int | None = None,
                     mem_len: int | None = None, clamp_len: int | None = None,
                     same_length: bool | None = None) -> EvalSettings | None:
    """Flags given win over the preset, which wins over the model's own config.

    None for a model that carries no state, which takes none of these settings (ConfigError if
    given); a recurrent model takes tgt_len (the segment length) only."""
    spec = spec_of(model)
    flags = (("eval_preset", preset), ("tgt_len", tgt_len), ("mem_len", mem_len),
             ("clamp_len", clamp_len), ("same_length", same_length))
    given_flags = [f"--{n.replace('_', '-')}" for n, v in flags if v is not None]
    if spec.state == "rnn":
        extra = [f for f in given_flags if f != "--tgt-len"]
        if extra:
            raise ConfigError(f"{', '.join(extra)} apply to models with Transformer-XL memory; this "
                              f"model ({spec.name}) carries a recurrent state: only --tgt-len (the segment) "
                              f"applies")
        return EvalSettings(RNN_SEGMENT if tgt_len is None else tgt_len, 0, 0, False)
    if spec.state != "memory":
        if given_flags:
            raise ConfigError(f"{', '.join(given_flags)} apply to models with memory "
                              f"({_families('memory')}); this model ({spec.name}) has none")
        return None
    c = model.config
    base = EvalSettings(c.tgt_len, c.mem_len, c.clamp_len, c.same_length)
    if preset is not None:
        if preset not in EVAL_PRESETS:
            raise ConfigError(f"unknown --eval-preset {preset!r}; expected one of {', '.join(EVAL_PRESETS)}")
        base = EVAL_PRESETS[preset]
    given = {k: v for k, v in (("tgt_len", tgt_len), ("mem_len", mem_len), ("clamp_len", clamp_len),
                                ("same_length", same_length)) if v is not None}
    if given.get("mem_len") == 0 and "same_length" not in given:
        given["same_length"] = False  # --mem-len 0 alone means "no memory", not a config error
    return dataclasses.replace(base, **given)


def settings_dict(model, settings: EvalSettings) -> dict:
    """The settings a result reports: all four for memory, the segment length for a recurrent model."""
    return settings.as_dict() if spec_of(model).state == "memory" else {"tgt_len": settings.tgt_len}


@contextlib.contextmanager
def eval_settings(model, settings: EvalSettings):
    """Run a memory model with these tgt_len / mem_len / clamp_len / same_length; restore the config
    after. (A recurrent model has none of them in its config: nothing to change.)"""
    if spec_of(model).state != "memory":
        yield model
        return
    saved = model.config
    model.config = dataclasses.replace(saved, **settings.as_dict())  # validated by the config too
    try:
        yield model
    finally:
        model.config = saved


def _families(*states: str) -> str:
    return ", ".join(name for name, f in FAMILIES.items() if f.state in states)


def _no_state_error(model) -> ConfigError:
    return ConfigError(f"the memory protocol needs a model that carries memory or a recurrent state "
                       f"({_families('memory', 'rnn')}); {spec_of(model).name} has none: use --protocol "
                       f"fixed or sliding")


def _check_stream(model, ids: torch.Tensor, streams: int) -> None:
    if not carries_state(model):
        raise _no_state_error(model)
    if ids.dim() != 1:
        raise DataError(f"expected a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    if ids.numel() < 2:
        raise DataError(f"need at least 2 tokens to score one, got {ids.numel()}")
    if not isinstance(streams, int) or streams < 1:
        raise ConfigError(f"streams (--batch-size) must be a positive integer, got {streams!r}")
    vocab = model.config.vocab_size
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise DataError(f"token ids must be in [0, {vocab}), got [{int(ids.min())}, {int(ids.max())}]")


@torch.no_grad()
def memory_token_losses(model, ids: torch.Tensor, streams: int = 1, progress: bool = False,
                        segment: int | None = None) -> torch.Tensor:
    """Per-token NLL in nats, (len(ids) - 1,): entry t-1 is -ln p(ids[t] | state, segment so far).

    A memory model uses its current tgt_len / mem_len / clamp_len / same_length (wrap the call in
    `eval_settings` to change them); `segment` overrides the segment length (a recurrent model's
    default: RNN_SEGMENT). The model runs in eval mode; its mode is restored after.
    """
    ids = torch.as_tensor(ids).long()
    _check_stream(model, ids, streams)
    ids = ids.to(model_device(model))
    default = model.config.tgt_len if spec_of(model).state == "memory" else RNN_SEGMENT
    n, seg = ids.numel() - 1, segment or default
    B = min(streams, n)
    L = n // B  # targets per stream; stream b scores targets b*L+1 .. (b+1)*L
    index = (torch.arange(B, device=ids.device) * L)[:, None] + torch.arange(L, device=ids.device)  # (B, L)
    x, y = ids[index], ids[index + 1]
    tail = n - B * L  # < B targets after the last stream: the last stream goes on alone
    bar = tqdm(total=-(-L // seg) + -(-tail // seg), desc="evaluate", unit="segment", disable=not progress)
    was_training = model.training
    model.eval()
    try:
        pieces, state = [], None
        for s in range(0, L, seg):
            out = model(x[:, s:s + seg], state=state, targets=y[:, s:s + seg])
            pieces.append(out.nll.float())  # (B, seg)
            state = out.state
            bar.update(1)
        losses = [torch.cat(pieces, dim=1).reshape(-1)]  # row-major: stream order
        state = state_rows(state, slice(-1, None))  # the tail continues the last stream
        for s in range(B * L, n, seg):
            e = min(s + seg, n)
            out = model(ids[None, s:e], state=state, targets=ids[None, s + 1:e + 1])
            losses.append(out.nll.float().reshape(-1))
            state = out.state
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return torch.cat(losses)


def summarize(losses: torch.Tensor, ids: torch.Tensor, tokenizer=None, per_char: bool = False) -> dict:
    """loss, ppl, tokens (+ bpc for a char tokenizer, + per-character/byte bits with per_char)."""
    losses = losses.double()
    total = float(losses.sum())
    loss = total / losses.numel()
    out = {"loss": loss, "ppl": math.exp(min(loss, 700)), "tokens": int(losses.numel())}
    if tokenizer is not None and getattr(tokenizer, "kind", None) == "chars":
        out["bpc"] = loss / LN2
    if per_char and tokenizer is not None:
        chars, n_bytes = scored_text_size(tokenizer, ids)
        out.update(characters=chars, bits_per_character=bits_per_character(total, chars),
                   bits_per_byte=bits_per_character(total, n_bytes))
    return out


def memory_perplexity(model, ids: torch.Tensor, settings: EvalSettings | None = None, streams: int = 1,
                      tokenizer=None, per_char: bool = False, progress: bool = False) -> dict:
    """{"loss", "ppl", "tokens", "protocol": "memory", "streams", tgt_len, mem_len, clamp_len,
    same_length (a recurrent model: tgt_len only) (+ bpc / bits_per_character as `perplexity`)}.
    settings None = the model's own."""
    if not carries_state(model):
        raise _no_state_error(model)
    settings = settings or resolve_settings(model)
    with eval_settings(model, settings):
        losses = memory_token_losses(model, ids, streams, progress, segment=settings.tgt_len)
    streams = min(streams, torch.as_tensor(ids).numel() - 1)
    return {**summarize(losses, ids, tokenizer, per_char), "protocol": "memory", "streams": streams,
            **settings_dict(model, settings)}


def evaluate_stream(model, ids: torch.Tensor, protocol: str, settings: EvalSettings | None,
                    window: int, stride: int | None, batch_size: int, tokenizer=None,
                    per_char: bool = False, progress: bool = False) -> dict:
    """One of the three protocols; a memory model runs fixed / sliding windows from an empty memory
    each, with `settings` (clamp_len, same_length and its window mem_len) in force."""
    if protocol == "memory":
        return memory_perplexity(model, ids, settings, batch_size, tokenizer, per_char, progress)
    if settings is None:
        return perplexity(model, ids, window, stride, batch_size, tokenizer=tokenizer,
                          per_char=per_char, progress=progress)
    with eval_settings(model, settings):
        result = perplexity(model, ids, window, stride, batch_size, tokenizer=tokenizer,
                            per_char=per_char, progress=progress)
    return {**result, **{k: v for k, v in settings_dict(model, settings).items() if k != "tgt_len"}}


def check_protocol(model, protocol: str, window: int | None, stride: int | None) -> None:
    """Clear errors for the memory protocol, before any data is read."""
    if protocol != "memory":
        return
    if not carries_state(model):
        raise _no_state_error(model)
    if window is not None or stride is not None:
        raise ConfigError("--window and --stride apply to the fixed and sliding protocols; the memory "
                          "protocol reads segments of --tgt-len with --mem-len positions of memory")


def default_window(model, settings: EvalSettings | None) -> int:
    """The fixed / sliding window when none is given: the model's context, or for a model that carries
    state (no hard limit) the span of the memory protocol, tgt_len + mem_len (a recurrent model: its
    segment)."""
    if settings is None:
        return model.config.max_seq_len
    return settings.tgt_len + settings.mem_len
