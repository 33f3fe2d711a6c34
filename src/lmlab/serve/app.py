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

The routes are in `routes.py`, the plumbing (errors, key, bodies, event streams) in `http.py`, request
checks in `protocol.py`, the model's thread in `engine.py`. Every field is type- and range-checked
(422), bodies are bounded (413), a full queue answers 429, a client that goes away cancels its request,
and errors are one line of JSON in OpenAI's layout.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from lmlab.errors import ConfigError
from lmlab.serve import routes as r
from lmlab.serve.engine import Capacity, Engine
from lmlab.serve.http import LOOPBACK, HostCheck, KeyCheck, api_error, http_error, server_error
from lmlab.serve.protocol import ApiError, Limits
from lmlab.serve.served import Served, can_generate


def create_app(model, tokenizer, name: str, limits: Limits = Limits(), capacity: Capacity = Capacity(),
               api_key: str | None = None, hosts: tuple[str, ...] | None = LOOPBACK) -> Starlette:
    """The server's ASGI app for a loaded model and its tokenizer (the engine starts with the app).
    `hosts`: the Host names it answers to (None: any, for a server on a public interface)."""
    if capacity.max_rows < limits.max_n:
        raise ConfigError(f"the batch holds {capacity.max_rows} rows; one request may ask for {limits.max_n}")
    model.eval()
    engine = Engine(model, capacity, generates=can_generate(model))
    served = Served(model, tokenizer, name, limits, engine, api_key)
    post = ["POST"]
    routes = [Route("/healthz", r.healthz), Route("/v1/models", r.models),
              Route("/v1/models/{name:path}", r.model_card),
              Route("/v1/completions", r.completions, methods=post),
              Route("/v1/embeddings", r.embeddings, methods=post),
              Route("/v1/inspect", r.inspect, methods=post),
              Route("/v1/midi/prompt", r.midi_prompt, methods=post),
              Route("/v1/midi/render", r.midi_render, methods=post),
              Route("/", r.page), Route("/static/{file}", r.static)]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    handlers = {ApiError: api_error, HTTPException: http_error, Exception: server_error}
    middleware = [Middleware(HostCheck, hosts=hosts), Middleware(KeyCheck, key=api_key)]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware, exception_handlers=handlers)
    app.state.served = served
    return app
