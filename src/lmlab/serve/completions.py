"""`/v1/completions` responses in OpenAI's layout, from a Generation's events: the streamed chunks
(server-sent events) and the whole response.

A chunk carries the text that became final since the previous one for each choice that has some
(several decoding steps' worth when the client reads slower than the model writes), its logprobs
when asked for, and `finish_reason` once the choice has ended: "stop" (end-of-text or a stop string;
neither is part of the text) or "length" (max_tokens).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator

from lmlab.serve.codec import ChoiceText, TextCodec
from lmlab.serve.engine import Failure, Generation
from lmlab.serve.protocol import ApiError

FLOOR = -9999.0  # a log-probability JSON can carry in place of -inf (vLLM's choice too)


class CompletionState:
    """The choices of one request as its events arrive."""

    def __init__(self, gen: Generation, codec: TextCodec, model: str):
        s = gen.sampling
        self.gen, self.codec, self.model = gen, codec, model
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.choices = [ChoiceText(codec, gen.prompt, s.stop) for _ in range(s.n)]
        self.logprobs = [_empty_logprobs() for _ in range(s.n)] if s.logprobs is not None else None
        self.reasons: list[str | None] = [None] * s.n
        self.generated = [0] * s.n

    def apply(self, event) -> dict[int, dict]:
        """Fold one event in: {choice index: {"text", "logprobs" (new entries), "finish_reason"}}."""
        kind = event[0]
        if kind == "error":
            failure: Failure = event[1]
            raise ApiError(failure.status, failure.message, kind="server_error")
        if kind == "gone":
            raise ApiError(499, "the client went away")
        out: dict[int, dict] = {}
        if kind == "step":
            _, tokens, logprobs = event
            for i, token in enumerate(tokens):
                if token is None:
                    continue
                choice = self.choices[i]
                offset = len(choice.text)
                text = choice.push(token)
                entry = out.setdefault(i, _delta())
                entry["text"] += text
                if self.logprobs is not None and not choice.cut:
                    chosen, top = logprobs[i]
                    new = entry["logprobs"]
                    new["tokens"].append(self.codec.piece(token))
                    new["token_logprobs"].append(_finite(chosen))
                    new["top_logprobs"].append({self.codec.piece(t): _finite(v) for t, v in top})
                    new["text_offset"].append(offset)
        else:  # done
            _, reasons, generated = event
            self.generated = generated
            for i, choice in enumerate(self.choices):
                entry = out.setdefault(i, _delta())
                entry["text"] += choice.finish()
                self.reasons[i] = "stop" if choice.cut else reasons[i]
                entry["finish_reason"] = self.reasons[i]
        if self.logprobs is not None:
            for i, entry in out.items():
                for key, values in entry["logprobs"].items():
                    self.logprobs[i][key] += values
        return out

    def usage(self) -> dict:
        prompt, completion = len(self.gen.prompt), sum(self.generated)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def chunk(self, deltas: dict[int, dict]) -> dict:
        choices = [{"index": i, "text": d["text"],
                    "logprobs": d["logprobs"] if self.logprobs is not None else None,
                    "finish_reason": d["finish_reason"]} for i, d in sorted(deltas.items())]
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices}

    def whole(self) -> dict:
        choices = [{"index": i, "text": c.text, "logprobs": self.logprobs[i] if self.logprobs else None,
                    "finish_reason": self.reasons[i]} for i, c in enumerate(self.choices)]
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}


def _delta() -> dict:
    return {"text": "", "logprobs": _empty_logprobs(), "finish_reason": None}


def _empty_logprobs() -> dict:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def _finite(value: float) -> float:
    return value if math.isfinite(value) else FLOOR


async def _events(gen: Generation):
    """The generation's events; several at once when they are already there."""
    while True:
        batch = [await gen.queue.get()]
        while not gen.queue.empty():
            batch.append(gen.queue.get_nowait())
        yield batch
        if batch[-1][0] in ("done", "error", "gone"):
            return


async def stream_chunks(state: CompletionState, include_usage: bool) -> AsyncIterator[dict]:
    """The streamed response: chunks as text becomes final, then (if asked) one with the usage."""
    async for batch in _events(state.gen):
        deltas: dict[int, dict] = {}
        for event in batch:
            for i, d in state.apply(event).items():
                entry = deltas.setdefault(i, _delta())
                entry["text"] += d["text"]
                entry["finish_reason"] = d["finish_reason"] or entry["finish_reason"]
                for key, values in d["logprobs"].items():
                    entry["logprobs"][key] += values
        deltas = {i: d for i, d in deltas.items()
                  if d["text"] or d["finish_reason"] or d["logprobs"]["tokens"]}
        if deltas:
            yield state.chunk(deltas)
    if include_usage:
        yield {**state.chunk({}), "usage": state.usage()}


async def whole_response(state: CompletionState) -> dict:
    async for batch in _events(state.gen):
        for event in batch:
            state.apply(event)
    return state.whole()
