"""The HTTP side of `lmlab serve`: OpenAI's routes and the web page on Starlette (an ASGI app that
uvicorn runs).

    GET  /healthz              liveness and load (no key needed)
    GET  /v1/models[/ID]       the served model, with what it can do (`lmlab` field of the card)
    POST /v1/completions       OpenAI completions; `stream: true` sends server-sent events
    POST /v1/embeddings        mean-pooled hidden states of a layer (default the last)
    POST /v1/inspect           per-token loss, entropy and rank of a text (lmlab.eval.inspect)
    POST /v1/midi/prompt       music models: the conditioning prefix for a composer and instruments
    POST /v1/midi/render       music models: the notes and MIDI file of a sequence of event names
    GET  /                     the web page (plain HTML/JS/CSS shipped in the package, no CDN)

Safety: request bodies are read up to `max_body` bytes (413), must be JSON (400) sent as
application/json (415: a browser on another site cannot send that without asking first), and every
field is type- and range-checked (422, lmlab.serve.protocol); a full queue answers 429. With an API
key every route but /healthz needs `Authorization: Bearer KEY` (or HTTP Basic with the key as the
password, which a browser asks for on the page). A client that disconnects cancels its request.
Errors are one line of JSON in OpenAI's layout; a traceback goes to the server's log only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os
import re
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lmlab.errors import LmlabError
from lmlab.eval.embed import embed_texts, embeddable, parse_layers
from lmlab.eval.inspect import token_label, token_statistics
from lmlab.eval.scoring import context_length
from lmlab.generate.loop import check_generator
from lmlab.models.heads import TaskModel
from lmlab.models.registry import spec_of
from lmlab.serve import midi
from lmlab.serve.codec import TextCodec, codec_for
from lmlab.serve.completions import CompletionState, stream_chunks, whole_response
from lmlab.serve.engine import Busy, Capacity, Engine, Failure, Generation, Sampling
from lmlab.serve.protocol import (
    ApiError,
    Limits,
    completion_request,
    embedding_request,
    inspect_request,
    parse_json,
    string,
)

log = logging.getLogger("lmlab.serve")
STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}


@dataclass
class Served:
    """Everything the routes share: the model, what it can do, the engine and the limits."""

    model: object
    tokenizer: object
    name: str
    limits: Limits
    engine: Engine
    api_key: str | None = None
    codec: TextCodec = field(init=False)
    card: dict = field(init=False)

    def __post_init__(self):
        self.codec = codec_for(self.tokenizer)
        net = self.model.backbone if isinstance(self.model, TaskModel) else self.model
        spec = spec_of(net)
        self.net, self.spec = net, spec
        self.context = context_length(net)
        self.prompt_limit = min(self.limits.max_prompt_tokens, self.context)
        self.layers = net.config.n_layers + 1 if embeddable(spec) else 0
        endpoints = [name for name, ok in (("completions", self.engine.batch is not None),
                                           ("inspect", spec.kind == "causal_lm" and net is self.model),
                                           ("embeddings", self.layers > 0)) if ok]
        music = midi.capability(self.tokenizer)
        self.card = {"id": self.name, "object": "model", "created": int(time.time()), "owned_by": "lmlab",
                     "lmlab": {"family": net.family, "kind": spec.kind, "state": spec.state,
                               "tokenizer": self.tokenizer.kind, "vocab_size": net.config.vocab_size,
                               "context": self.context, "hidden_states": self.layers,
                               "endpoints": endpoints + (["midi"] if music else []), "midi": music,
                               "limits": {"max_tokens": self.limits.max_tokens,
                                          "max_prompt_tokens": self.prompt_limit, "max_n": self.limits.max_n}}}

    def needs(self, endpoint: str) -> None:
        if endpoint not in self.card["lmlab"]["endpoints"]:
            raise ApiError(400, f"model {self.name!r} ({self.spec.kind}, state {self.spec.state}) has no "
                                f"{endpoint}: it serves {', '.join(self.card['lmlab']['endpoints']) or 'nothing'}",
                           code="unsupported")

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(404, f"model {model[:80]!r} is not served here; this server serves {self.name!r}",
                           "model", "model_not_found")


def can_generate(model) -> bool:
    try:
        check_generator(model)
    except LmlabError:
        return False
    return spec_of(model).state != "none"


def create_app(model, tokenizer, name: str, limits: Limits = Limits(), capacity: Capacity = Capacity(),
               api_key: str | None = None) -> Starlette:
    """The server's ASGI app for a loaded model and its tokenizer (the engine starts with the app)."""
    model.eval()
    engine = Engine(model, capacity, generates=can_generate(model))
    served = Served(model, tokenizer, name, limits, engine, api_key)
    routes = [Route("/healthz", healthz), Route("/v1/models", models), Route("/v1/models/{name:path}", model_card),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/embeddings", embeddings, methods=["POST"]),
              Route("/v1/inspect", inspect, methods=["POST"]),
              Route("/v1/midi/prompt", midi_prompt, methods=["POST"]),
              Route("/v1/midi/render", midi_render, methods=["POST"]),
              Route("/", page), Route("/static/{file}", static)]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(KeyCheck, key=api_key)],
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.served = served
    return app


# ---------------------------------------------------------------- errors


def error_response(error: ApiError) -> JSONResponse:
    error.message = error.message.strip().splitlines()[0] if error.message.strip() else "error"
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def api_error(request: Request, error: ApiError) -> Response:
    return error_response(error)


async def http_error(request: Request, error: HTTPException) -> Response:
    what = {404: "no such route", 405: "method not allowed"}.get(error.status_code, "bad request")
    return error_response(ApiError(error.status_code, f"{what}: {request.method} {request.url.path[:100]}"))


async def server_error(request: Request, error: Exception) -> Response:
    log.error("lmlab serve: %s %s failed", request.method, request.url.path, exc_info=error)
    return error_response(ApiError(500, "internal error (the server's log has the details)", kind="server_error"))


class KeyCheck:
    """Every route but /healthz needs the key: `Authorization: Bearer KEY`, or Basic with KEY as password."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, None if key is None else key.encode()

    async def __call__(self, scope, receive, send):
        if self.key is None or scope["type"] != "http" or scope["path"] == "/healthz" or self._allowed(scope):
            return await self.app(scope, receive, send)
        api = scope["path"].startswith("/v1/")
        scheme = 'Bearer realm="lmlab"' if api else 'Basic realm="lmlab"'  # Basic: the browser asks for it
        error = ApiError(401, "this server needs an API key: send Authorization: Bearer KEY", code="invalid_api_key",
                         headers={"WWW-Authenticate": scheme})
        await error_response(error)(scope, receive, send)

    def _allowed(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name != b"authorization":
                continue
            scheme, _, credentials = value.partition(b" ")
            credentials = credentials.strip()
            if scheme.lower() == b"basic":
                try:
                    credentials = base64.b64decode(credentials, validate=True).partition(b":")[2]
                except ValueError:
                    return False
            elif scheme.lower() != b"bearer":
                return False
            return hmac.compare_digest(credentials, self.key)
        return False


# ---------------------------------------------------------------- request plumbing


async def read_body(request: Request, limit: int) -> dict:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {media[:60] or 'none'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body has {declared} bytes; this server takes at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body has more than {limit} bytes; this server takes at most {limit}")
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


async def disconnected(receive) -> None:
    """Returns once the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_done(request: Request, work, on_gone: Callable[[], None]):
    """Await `work` unless the client goes away first: then cancel it (on_gone) and answer nobody."""
    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not task.done():
        on_gone()
        task.cancel()
        raise ApiError(499, "the client went away")
    return task.result()


class EventStream:
    """A server-sent event stream of JSON objects, then `data: [DONE]`. A client that disconnects (seen
    while waiting as well as when writing) cancels the work behind it."""

    def __init__(self, events: AsyncIterator[dict], on_gone: Callable[[], None]):
        self.events, self.on_gone = events, on_gone

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                                (b"x-accel-buffering", b"no")]})
        watch = asyncio.ensure_future(disconnected(receive))
        watch.add_done_callback(lambda _: None if watch.cancelled() else self.on_gone())
        finished = False
        try:
            async for event in self.events:
                await send({"type": "http.response.body", "body": _sse(event), "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            finished = True
        except ApiError as e:
            if e.status != 499:  # an error after the stream began: one event, then the end
                await send({"type": "http.response.body", "body": _sse(e.body()), "more_body": False})
                finished = True
        except OSError:  # uvicorn's ClientDisconnected: the client closed the connection
            pass
        finally:
            watch.cancel()
            if not finished:
                self.on_gone()
            await self.events.aclose()


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def served_of(request: Request) -> Served:
    return request.app.state.served


def refuse_busy(busy: Busy) -> ApiError:
    return ApiError(429, str(busy), kind="rate_limit_error", code="busy", headers={"Retry-After": "1"})


async def run_job(request: Request, fn: Callable[[], object]):
    engine = served_of(request).engine
    try:
        job = engine.call(fn)
    except Busy as busy:
        raise refuse_busy(busy) from None

    def gone():
        job.cancel()
        engine.discard(job)

    try:
        return await until_done(request, job.future, gone)
    except Failure as f:
        raise ApiError(f.status, f.message, kind="server_error" if f.status >= 500 else "invalid_request_error") \
            from None


# ---------------------------------------------------------------- routes


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", **served_of(request).engine.status(), "rss_bytes": rss_bytes()})


def rss_bytes() -> int:
    try:
        text = Path(f"/proc/{os.getpid()}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(found.group(1)) * 1024 if found else 0


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [served_of(request).card]})


async def model_card(request: Request) -> Response:
    s = served_of(request)
    name = request.path_params["name"]
    s.check_model(name)
    return JSONResponse(s.card)


async def completions(request: Request) -> Response:
    s = served_of(request)
    s.needs("completions")
    req = completion_request(await read_body(request, s.limits.max_body), s.net.config.vocab_size, s.limits)
    s.check_model(req.model)
    ids = await prompt_ids(s, req.prompt)
    if len(ids) + req.max_tokens > s.context:
        raise ApiError(422, f"prompt ({len(ids)} tokens) + max_tokens ({req.max_tokens}) exceeds the model's "
                            f"context ({s.context}); ask for at most {max(0, s.context - len(ids))} tokens",
                       "max_tokens", "context_length_exceeded")
    eos = None if req.ignore_eos else s.tokenizer.eos_token_id
    sampling = Sampling(n=req.n, max_tokens=req.max_tokens, temperature=req.temperature, top_k=req.top_k,
                        top_p=req.top_p, repetition_penalty=req.repetition_penalty, seed=req.seed, stop=req.stop,
                        eos=eos, logprobs=req.logprobs)
    gen = Generation(s.engine, ids, sampling, s.codec)
    try:
        s.engine.submit(gen)
    except Busy as busy:
        raise refuse_busy(busy) from None
    state = CompletionState(gen, s.codec, s.name)
    if req.stream:
        return EventStream(stream_chunks(state, req.include_usage), gen.cancel)
    return JSONResponse(await until_done(request, whole_response(state), gen.cancel))


async def prompt_ids(s: Served, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        ids = await asyncio.to_thread(s.codec.encode, prompt)  # a long prompt never blocks the event loop
    else:
        ids = list(prompt)
    if not ids:
        if s.tokenizer.eos_token_id is None:
            raise ApiError(422, "the prompt gives no tokens", "prompt")
        ids = [s.tokenizer.eos_token_id]  # an empty prompt starts a new document, as GPT-2's <|endoftext|>
    if len(ids) > s.prompt_limit:
        raise ApiError(422, f"the prompt has {len(ids)} tokens; this server takes at most {s.prompt_limit}",
                       "prompt", "context_length_exceeded")
    return ids


async def embeddings(request: Request) -> Response:
    s = served_of(request)
    s.needs("embeddings")
    req = embedding_request(await read_body(request, s.limits.max_body), s.net.config.vocab_size, s.layers,
                            s.limits)
    s.check_model(req.model)
    width = s.net.config.d_model
    if req.dimensions is not None and req.dimensions != width:
        raise ApiError(422, f"dimensions must be {width} (the model's width) or absent", "dimensions")
    texts = [t if isinstance(t, str) else s.codec.decode(t) for t in req.inputs]
    counts = await asyncio.to_thread(lambda: [len(s.codec.encode(t)) for t in texts])
    extra = 2 if s.spec.kind == "masked_lm" else 0  # [CLS] ... [SEP]
    for i, n in enumerate(counts):
        if n == 0 or n + extra > s.net.config.max_seq_len:
            raise ApiError(422, f"input[{i}] gives {n} tokens; the model reads 1 to "
                                f"{s.net.config.max_seq_len - extra}", "input")
    layer = parse_layers([req.layer], s.layers)[0]
    tensors = await run_job(request, lambda: embed_texts(s.model, s.tokenizer, texts, [layer], pool="mean"))
    vectors = tensors[f"layer.{layer}"].float()  # (N, D)
    data = []
    for i, v in enumerate(vectors):
        value = base64.b64encode(struct.pack(f"<{v.numel()}f", *v.tolist())).decode() if req.base64 else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return JSONResponse({"object": "list", "data": data, "model": s.name,
                         "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}})


async def inspect(request: Request) -> Response:
    s = served_of(request)
    s.needs("inspect")
    req = inspect_request(await read_body(request, s.limits.max_body))
    s.check_model(req.model)
    prompt_part, ids = await asyncio.to_thread(lambda: (s.codec.encode(req.prompt), s.codec.encode(req.prompt + req.text)))
    if not 2 <= len(ids) <= s.limits.max_inspect_tokens:
        raise ApiError(422, f"the text gives {len(ids)} tokens; inspect takes 2 to {s.limits.max_inspect_tokens}",
                       "text")
    stats = await run_job(request, lambda: token_statistics(s.net, ids))
    scale = 1 / 0.6931471805599453 if req.bits else 1.0
    loss = (stats["loss"].double() * scale).tolist()
    labels = [token_label(s.tokenizer, i) for i in ids] if type(s.codec) is TextCodec else \
        [s.codec.piece(i) for i in ids]
    shared = next((k for k, (a, b) in enumerate(zip(prompt_part, ids, strict=False)) if a != b),
                  min(len(prompt_part), len(ids)))
    return JSONResponse({"model": s.name, "unit": "bits" if req.bits else "nats", "tokens": labels, "ids": ids,
                         "loss": [None, *loss], "entropy": [None, *(stats["entropy"].double() * scale).tolist()],
                         "rank": [None, *stats["rank"].tolist()], "mean_loss": sum(loss) / len(loss),
                         "prompt_tokens": shared})


async def midi_prompt(request: Request) -> Response:
    s = served_of(request)
    s.needs("midi")
    body = await read_body(request, s.limits.max_body)
    instruments = body.get("instruments") or []
    if not isinstance(instruments, list) or not all(isinstance(i, str) for i in instruments):
        raise ApiError(422, "instruments must be an array of instrument names", "instruments")
    return JSONResponse({"prompt": midi.prompt_text(s.tokenizer, string(body, "composer"), instruments)})


async def midi_render(request: Request) -> Response:
    s = served_of(request)
    s.needs("midi")
    body = await read_body(request, s.limits.max_body)
    ids = s.codec.encode(string(body, "text", required=True))
    return JSONResponse(await run_job(request, lambda: midi.render(s.tokenizer, ids)))


async def page(request: Request) -> Response:
    return static_file("index.html")


async def static(request: Request) -> Response:
    name = request.path_params["file"]
    if name not in STATIC:
        raise ApiError(404, f"no such file: {name[:60]}")
    return static_file(name)


def static_file(name: str) -> Response:
    body = (resources.files("lmlab.serve") / "static" / name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})
