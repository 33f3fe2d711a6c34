"""Helpers of the server tests: a server running in a thread of the test process (uvicorn on a free
loopback port) and a small HTTP client on the standard library.

(tests/serve/ is on sys.path when its tests run: `from serve_helpers import ...`.)
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

import lmlab


@contextmanager
def running(app):
    """Serve `app` on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    from lmlab.serve.server import listen

    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def served(model_dir, **options):
    """A running server for a model dir: a context manager yielding (base URL, app)."""
    model, tokenizer = lmlab.load(model_dir)
    return served_model(model, tokenizer, **options)


@contextmanager
def served_model(model, tokenizer, name="tiny", **options):
    from lmlab.serve.app import create_app

    app = create_app(model, tokenizer, name, **options)
    with running(app) as url:
        yield url, app


def request(url: str, method: str = "GET", body=None, headers: dict | None = None, raw: bytes | None = None,
            timeout: float = 60) -> tuple[int, dict, dict]:
    """(status, JSON body or {"text": ...}, headers) of one request."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    sent = {"Content-Type": "application/json"} if data is not None else {}
    sent.update(headers or {})
    try:
        conn.request(method, parts.path or "/", body=data, headers=sent)
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = {"text": payload.decode("utf-8", "replace")}
    return response.status, parsed, dict(response.getheaders())


def post(url: str, body, **kwargs):
    return request(url, "POST", body, **kwargs)


def stream(url: str, body: dict, headers: dict | None = None, timeout: float = 60) -> list:
    """The server-sent events of a streamed completion: JSON objects, then "[DONE]"."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        assert response.getheader("content-type").startswith("text/event-stream")
        events = []
        for event in response.read().decode("utf-8").split("\n\n"):
            if event:
                assert event.startswith("data: "), event
                data = event[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
        return events
    finally:
        conn.close()


def wait_until(condition, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
