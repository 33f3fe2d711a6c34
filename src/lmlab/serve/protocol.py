"""The request bodies of the API, in OpenAI's layout, read and range-checked into small dataclasses.

Every problem is an `ApiError` with an HTTP status and a one-line message naming the field:
400 for a body that is not JSON, 413 for one over the size limit, 422 for a field of the wrong type
or out of range (NaN and infinities are out of every range), and 404 for a model this server does
not serve. Fields of OpenAI's API that lmlab does not implement are accepted only at their neutral
value (`echo: false`, `best_of: 1`, penalties 0, ...); an unknown field is an error, so a typo never
passes silently. lmlab's own extensions: `repetition_penalty` (CTRL, as `lmlab generate`),
`ignore_eos` (keep going past end-of-text, for load tests), and `layer` for embeddings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


class ApiError(Exception):
    """An error answered to the client as {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"the request body must be a JSON object, got {_type(body)}")
    return body


# ---------------------------------------------------------------- field readers


def _type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _check_fields(body: dict, known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r}", unknown[0])


def integer(body: dict, name: str, default, low: int, high: int):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, f"{name} must be an integer, got {_type(value)}", name)
    if not low <= value <= high:
        raise ApiError(422, f"{name} must be in [{low}, {high}], got {value}", name)
    return value


def number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(422, f"{name} must be a number, got {_type(value)}", name)
    above = value > low if low_open else value >= low
    if not (math.isfinite(value) and above and value <= high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ApiError(422, f"{name} must be a finite number in {interval}, got {value}", name)
    return float(value)


def boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(422, f"{name} must be true or false, got {_type(value)}", name)
    return value


def string(body: dict, name: str, default: str | None = None, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(422, f"{name} is required", name)
        return default
    if not isinstance(value, str):
        raise ApiError(422, f"{name} must be a string, got {_type(value)}", name)
    return value


def neutral(body: dict, name: str, allowed: tuple) -> None:
    """A field of OpenAI's API lmlab does not implement: accepted only at a value that changes nothing."""
    if name in body and body[name] not in allowed:
        shown = " or ".join(json.dumps(a) for a in allowed if a is not None)
        raise ApiError(422, f"{name} is not supported by lmlab (only {shown})", name)


def prompt_input(value, name: str, vocab_size: int, many: bool = False, limit: int = 1):
    """A string, or token ids; `many`: a list of them. Returns a list of str | list[int]."""
    def one(item, where):
        if isinstance(item, str):
            return item
        ints = isinstance(item, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in item)
        if ints and item:
            bad = next((i for i in item if not 0 <= i < vocab_size), None)
            if bad is not None:
                raise ApiError(422, f"{where} holds token id {bad}; ids must be in [0, {vocab_size})", name)
            return item
        raise ApiError(422, f"{where} must be a string or a non-empty array of token ids", name)

    if value is None:
        raise ApiError(422, f"{name} is required", name)
    if isinstance(value, list) and value and all(isinstance(v, (str, list)) for v in value):
        if len(value) > limit:
            what = f"at most {limit} inputs" if many else "one prompt per request"
            raise ApiError(422, f"{name} holds {len(value)} items; this server takes {what}", name)
        return [one(v, f"{name}[{i}]") for i, v in enumerate(value)]
    return [one(value, name)]


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (`lmlab serve` flags)."""

    max_tokens: int = 1024
    max_prompt_tokens: int = 4096
    max_n: int = 8
    max_stop: int = 4
    max_stop_chars: int = 64
    max_inputs: int = 64
    max_inspect_tokens: int = 4096
    max_body: int = 1 << 20


COMPLETION_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n",
                     "logprobs", "stream", "stream_options", "echo", "best_of", "frequency_penalty",
                     "presence_penalty", "logit_bias", "suffix", "user", "repetition_penalty", "ignore_eos"}


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompt: str | list[int]
    max_tokens: int
    temperature: float  # 0 = greedy
    top_p: float
    top_k: int  # 0 = off
    stop: tuple[str, ...]
    seed: int | None
    n: int
    logprobs: int | None
    stream: bool
    include_usage: bool
    repetition_penalty: float
    ignore_eos: bool


def completion_request(body: dict, vocab_size: int, limits: Limits) -> CompletionRequest:
    _check_fields(body, COMPLETION_FIELDS)
    for name, allowed in (("echo", (False, None)), ("frequency_penalty", (0, None)),
                          ("presence_penalty", (0, None)), ("logit_bias", ({}, None)), ("suffix", (None,))):
        neutral(body, name, allowed)
    n = integer(body, "n", 1, 1, limits.max_n)
    best_of = integer(body, "best_of", n, 1, limits.max_n)
    if best_of != n:
        raise ApiError(422, f"best_of must equal n ({n}); lmlab does not rank candidates", "best_of")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else ([] if stop is None else stop)
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(422, "stop must be a non-empty string or an array of them", "stop")
    if len(stop) > limits.max_stop or any(len(s) > limits.max_stop_chars for s in stop):
        raise ApiError(422, f"stop takes at most {limits.max_stop} strings of at most "
                            f"{limits.max_stop_chars} characters", "stop")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise ApiError(422, "stream_options must be an object with at most include_usage", "stream_options")
    string(body, "user")
    return CompletionRequest(
        model=string(body, "model"),
        prompt=prompt_input(body.get("prompt"), "prompt", vocab_size)[0],
        max_tokens=integer(body, "max_tokens", 16, 1, limits.max_tokens),
        temperature=number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=max(0, integer(body, "top_k", 0, -1, 1 << 20)),  # -1 (vLLM) and 0 both mean off; >= V keeps all
        stop=tuple(stop),
        seed=integer(body, "seed", None, 0, 2 ** 63 - 1),
        n=n,
        logprobs=integer(body, "logprobs", None, 0, 5),
        stream=boolean(body, "stream", False),
        include_usage=boolean(options or {}, "include_usage", False),
        repetition_penalty=number(body, "repetition_penalty", 1.0, 0.0, 10.0, low_open=True),
        ignore_eos=boolean(body, "ignore_eos", False),
    )


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str | None
    inputs: list  # str | list[int] each
    base64: bool
    layer: int  # into the hidden states: 0 = embeddings, -1 = last
    dimensions: int | None  # OpenAI's field: only the model's own width is served


def embedding_request(body: dict, vocab_size: int, layers: int, limits: Limits) -> EmbeddingRequest:
    _check_fields(body, {"model", "input", "encoding_format", "dimensions", "user", "layer"})
    fmt = string(body, "encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError(422, f"encoding_format must be float or base64, got {fmt!r}", "encoding_format")
    string(body, "user")
    inputs = prompt_input(body.get("input"), "input", vocab_size, True, limits.max_inputs)
    return EmbeddingRequest(model=string(body, "model"), inputs=inputs,
                            base64=fmt == "base64", layer=integer(body, "layer", -1, -layers, layers - 1),
                            dimensions=integer(body, "dimensions", None, 1, 1 << 20))


@dataclass(frozen=True)
class InspectRequest:
    model: str | None
    text: str
    prompt: str  # the text continues this prompt (scored as one text; its tokens are marked)
    bits: bool


def inspect_request(body: dict) -> InspectRequest:
    _check_fields(body, {"model", "text", "prompt", "unit"})
    unit = string(body, "unit", "nats")
    if unit not in ("nats", "bits"):
        raise ApiError(422, f"unit must be nats or bits, got {unit!r}", "unit")
    return InspectRequest(model=string(body, "model"), text=string(body, "text", required=True),
                          prompt=string(body, "prompt", ""), bits=unit == "bits")
