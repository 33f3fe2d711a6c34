"""The HTTP plumbing of `lmlab serve`: errors as one line of JSON in OpenAI's layout, the API key, bodies
read within a size limit, and server-sent event streams that notice a client going away.

Safety: a body is read up to `limit` bytes (413, before reading when Content-Length says so), must be
sent as application/json (415: a page on another site cannot send that without asking first) and
parse as a JSON object (400/422). With a key, every route but /healthz needs
`Authorization: Bearer KEY`, or HTTP Basic with the key as the password (what a browser asks for on
the page). On the loopback interface the server answers only to loopback host names (421 otherwise:
no DNS rebinding). A client that disconnects, while it waits or while it reads, cancels the work
behind its request. A traceback goes to the server's log only.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lmlab.serve.engine import Busy
from lmlab.serve.protocol import ApiError, parse_json

log = logging.getLogger("lmlab.serve")


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
    return error_response(ApiError(500, "internal error (the server's log has the details)",
                                   kind="server_error"))


class KeyCheck:
    """Every route but /healthz needs the key: `Authorization: Bearer KEY`, or Basic with KEY as password."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, None if key is None else key.encode()

    async def __call__(self, scope, receive, send):
        if self.key is None or scope["type"] != "http" or scope["path"] == "/healthz" or self._allowed(scope):
            return await self.app(scope, receive, send)
        api = scope["path"].startswith("/v1/")
        scheme = 'Bearer realm="lmlab"' if api else 'Basic realm="lmlab"'  # Basic: the browser asks for it
        error = ApiError(401, "this server needs an API key: send Authorization: Bearer KEY",
                         code="invalid_api_key", headers={"WWW-Authenticate": scheme})
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


LOOPBACK = ("localhost", "127.0.0.1", "::1")


class HostCheck:
    """Requests must name one of `hosts` in their Host header (any host when None). A server on the
    loopback interface answers only to loopback names: a web page whose own name an attacker points
    at 127.0.0.1 (DNS rebinding) would otherwise talk to it as its own origin."""

    def __init__(self, app, hosts: tuple[str, ...] | None):
        self.app, self.hosts = app, None if hosts is None else {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send):
        if self.hosts is None or scope["type"] != "http" or host_name(scope) in self.hosts:
            return await self.app(scope, receive, send)
        error = ApiError(421, f"this server answers to {', '.join(sorted(self.hosts))}, not to the Host "
                              f"{host_name(scope)[:60]!r}")
        await error_response(error)(scope, receive, send)


def host_name(scope) -> str:
    """The Host header without its port ("[::1]:8000" -> "::1")."""
    value = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1").strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def refuse_busy(busy: Busy) -> ApiError:
    return ApiError(429, str(busy), kind="rate_limit_error", code="busy", headers={"Retry-After": "1"})


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
            raise ApiError(413, f"the request body has more than {limit} bytes; this server takes at most "
                                f"{limit}")
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
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        watch = asyncio.ensure_future(disconnected(receive))
        watch.add_done_callback(lambda _: None if watch.cancelled() else self.on_gone())
        finished = False
        try:
            async for event in self.events:
                await send({"type": "http.response.body", "body": sse(event), "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            finished = True
        except ApiError as e:
            if e.status != 499:  # an error after the stream began: one event, then the end
                await send({"type": "http.response.body", "body": sse(e.body()), "more_body": False})
                finished = True
        except OSError:  # uvicorn's ClientDisconnected: the client closed the connection
            pass
        finally:
            watch.cancel()
            if not finished:
                self.on_gone()
            await self.events.aclose()


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
