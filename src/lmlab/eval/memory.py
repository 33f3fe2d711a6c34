"""Evaluation of models that carry memory (Transformer-XL, Dai et al. 2019): the memory protocol,
the paper's evaluation settings, and eval-only overrides of tgt_len / mem_len / clamp_len /
same_length.

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
from lmlab.eval.perplexity import LN2, bits_per_character, perplexity, scored_text_size


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


def uses_memory(model) -> bool:
    """True for models that carry memory across calls (they have `init_mems`)."""
    return callable(getattr(model, "init_mems", None))


def _name(model) -> str:
    return getattr(model, "family", None) or type(model).__name__


def resolve_settings(model, preset: str | None = None, tgt_len: int | None = None,
                     mem_len: int | None = None, clamp_len: int | None = None,
                     same_length: bool | None = None) -> EvalSettings | None:
    """Flags given win over the preset, which wins over the model's own config.

    None for a model without memory, which takes none of these settings (ConfigError if given)."""
    if not uses_memory(model):
        flags = (("eval_preset", preset), ("tgt_len", tgt_len), ("mem_len", mem_len),
                 ("clamp_len", clamp_len), ("same_length", same_length))
        given = [f"--{n.replace('_', '-')}" for n, v in flags if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to models with memory (transfo-xl); "
                              f"this model ({_name(model)}) has none")
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


@contextlib.contextmanager
def eval_settings(model, settings: EvalSettings):
    """Run `model` with these tgt_len / mem_len / clamp_len / same_length; restore the config after."""
    saved = model.config
    model.config = dataclasses.replace(saved, **settings.as_dict())  # validated by the config too
    try:
        yield model
    finally:
        model.config = saved


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _check_stream(model, ids: torch.Tensor, streams: int) -> None:
    if not uses_memory(model):
        raise ConfigError(f"the memory protocol needs a model that carries memory (transfo-xl); "
                          f"{_name(model)} has none: use --protocol fixed or sliding")
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
def memory_token_losses(model, ids: torch.Tensor, streams: int = 1, progress: bool = False) -> torch.Tensor:
    """Per-token NLL in nats, (len(ids) - 1,): entry t-1 is -ln p(ids[t] | memory, segment so far).

    Uses the model's current tgt_len / mem_len / clamp_len / same_length (wrap the call in
    `eval_settings` to change them). The model runs in eval mode; its mode is restored after.
    """
    ids = torch.as_tensor(ids).long()
    _check_stream(model, ids, streams)
    ids = ids.to(_device(model))
    n, seg = ids.numel() - 1, model.config.tgt_len
    B = min(streams, n)
    L = n // B  # targets per stream; stream b scores targets b*L+1 .. (b+1)*L
    index = (torch.arange(B, device=ids.device) * L)[:, None] + torch.arange(L, device=ids.device)  # (B, L)
    x, y = ids[index], ids[index + 1]
    tail = n - B * L  # < B targets after the last stream: the last stream goes on alone
    bar = tqdm(total=-(-L // seg) + -(-tail // seg), desc="evaluate", unit="segment", disable=not progress)
    was_training = model.training
    model.eval()
    try:
        pieces, mems = [], None
        for s in range(0, L, seg):
            out = model(x[:, s:s + seg], mems=mems, targets=y[:, s:s + seg])
            pieces.append(out.nll.float())  # (B, seg)
            mems = out.mems
            bar.update(1)
        losses = [torch.cat(pieces, dim=1).reshape(-1)]  # row-major: stream order
        mems = [m[-1:] for m in mems]
        for s in range(B * L, n, seg):
            e = min(s + seg, n)
            out = model(ids[None, s:e], mems=mems, targets=ids[None, s + 1:e + 1])
            losses.append(out.nll.float().reshape(-1))
            mems = out.mems
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
    same_length (+ bpc / bits_per_character as `perplexity`)}. settings None = the model's own."""
    if not uses_memory(model):
        _check_stream(model, torch.as_tensor(ids), streams)  # raises the clear error
    settings = settings or resolve_settings(model)
    with eval_settings(model, settings):
        losses = memory_token_losses(model, ids, streams, progress)
    streams = min(streams, torch.as_tensor(ids).numel() - 1)
    return {**summarize(losses, ids, tokenizer, per_char), "protocol": "memory", "streams": streams,
            **settings.as_dict()}


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
    return {**result, **{k: v for k, v in settings.as_dict().items() if k != "tgt_len"}}


def check_protocol(model, protocol: str, window: int | None, stride: int | None) -> None:
    """Clear errors for the memory protocol, before any data is read."""
    if protocol != "memory":
        return
    if not uses_memory(model):
        raise ConfigError(f"the memory protocol needs a model that carries memory (transfo-xl); "
                          f"{_name(model)} has none: use --protocol fixed or sliding")
    if window is not None or stride is not None:
        raise ConfigError("--window and --stride apply to the fixed and sliding protocols; the memory "
                          "protocol reads segments of --tgt-len with --mem-len positions of memory")


def default_window(model, settings: EvalSettings | None) -> int:
    """The fixed / sliding window when none is given: the model's context, or for a model with
    memory (no hard limit) the attention span of the memory protocol, tgt_len + mem_len."""
    if settings is None:
        return model.config.max_seq_len
    return settings.tgt_len + settings.mem_len
