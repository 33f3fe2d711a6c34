"""Limits and safety: every bad request gets its status and a one-line reason (never a traceback), keys
are enforced, a client that goes away frees its rows, 200 requests at once are each answered once, and
afterwards the server is healthy with its memory back at the idle level."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from serve_helpers import post, request, served, stream, wait_until

from lmlab.serve.engine import Capacity
from lmlab.serve.protocol import Limits

LIMITS = Limits(max_tokens=100, max_prompt_tokens=64, max_body=4096)


@pytest.fixture(scope="module")
def server(gpt2_dir):
    with served(gpt2_dir, limits=LIMITS, capacity=Capacity(max_running=4, max_rows=20, max_queue=8)) as s:
        yield s


def one_line_error(status: int, out: dict, expected: int, *needles: str) -> str:
    assert status == expected, (status, out)
    message = out["error"]["message"]
    assert "\n" not in message and "Traceback" not in message and "File \"" not in message
    for needle in needles:
        assert needle in message, message
    return message


def completion(url, **body):
    return post(url + "/v1/completions", {"prompt": "the cat", **body})


@pytest.mark.parametrize("body, needles", [
    (dict(max_tokens=-1), ["max_tokens", "[1, 100]"]),
    (dict(max_tokens=101), ["max_tokens", "[1, 100]"]),
    (dict(max_tokens="5"), ["max_tokens must be an integer", "a string"]),
    (dict(max_tokens=5.0), ["max_tokens must be an integer"]),
    (dict(max_tokens=True), ["max_tokens must be an integer", "a boolean"]),
    (dict(temperature=-0.5), ["temperature", "finite"]),
    (dict(temperature=1e999), ["temperature", "inf"]),
    (dict(top_p=0), ["top_p", "(0, 1]"]),
    (dict(top_p=float("nan")), ["top_p", "nan"]),
    (dict(top_k=-2), ["top_k"]),
    (dict(top_k=1 << 21), ["top_k"]),
    (dict(top_k=[3]), ["top_k must be an integer", "an array"]),
    (dict(n=0), ["n must be in"]),
    (dict(n=9), ["n must be in"]),
    (dict(seed=-1), ["seed"]),
    (dict(logprobs=6), ["logprobs"]),
    (dict(repetition_penalty=0), ["repetition_penalty"]),
    (dict(stop=[""]), ["stop"]),
    (dict(stop=["a", "b", "c", "d", "e"]), ["stop takes at most 4"]),
    (dict(stream="yes"), ["stream must be true or false"]),
    (dict(prompt=5), ["prompt must be a string"]),
    (dict(prompt=[]), ["prompt"]),
    (dict(prompt=[1, 99999]), ["token id 99999"]),
    (dict(prompt=["a", "b"]), ["one prompt per request"]),
    (dict(prompt=None), ["prompt is required"]),
    (dict(prompt="x" * 65), ["the prompt has", "at most 64"]),
    (dict(prompt="the " * 30, max_tokens=100), ["exceeds the model's context (128)"]),
    (dict(echo=True), ["echo is not supported"]),
    (dict(best_of=2), ["best_of must equal n"]),
    (dict(frequency_penalty=0.5), ["frequency_penalty is not supported"]),
    (dict(tempreature=0.5), ["unknown field 'tempreature'"]),
])
def test_bad_fields_are_422_with_one_line(server, body, needles):
    url, _ = server
    status, out, _ = completion(url, **body)
    message = one_line_error(status, out, 422, *needles)
    assert out["error"]["type"] == "invalid_request_error" and len(message) < 200


def test_malformed_bodies(server):
    url, _ = server
    cases = [(b"{bad", 400, "not valid JSON"), (b"[1, 2]", 422, "JSON object"),
             (b"\xff\xfe", 400, "not valid"), (b"[" * 50000 + b"]" * 50000, 413, "at most 4096"),
             (b"", 400, "not valid JSON"), (b"[" * 2000 + b"]" * 2000, 400, "not valid JSON")]
    for raw, code, needle in cases:
        status, out, _ = request(url + "/v1/completions", "POST", raw=raw)
        one_line_error(status, out, code, needle)
    status, out, _ = request(url + "/v1/completions", "POST", raw=b'{"prompt": "a"}',
                             headers={"Content-Type": "text/plain"})
    one_line_error(status, out, 415, "application/json")
    status, out, _ = request(url + "/v1/nothing")
    one_line_error(status, out, 404, "no such route")
    status, out, _ = request(url + "/v1/completions")
    one_line_error(status, out, 405, "method not allowed")
    status, out, _ = completion(url, model="gpt-4")
    one_line_error(status, out, 404, "'gpt-4' is not served here")
    assert out["error"]["code"] == "model_not_found"
    one_line_error(*request(url + "/v1/models/gpt-4")[:2], 404, "not served here")


def test_huge_bodies_are_413_announced_or_not(server):
    url, _ = server
    huge = json.dumps({"prompt": "a" * 1_000_000}).encode()
    status, out, _ = request(url + "/v1/completions", "POST", raw=huge)
    one_line_error(status, out, 413, "at most 4096")
    # Chunked (no Content-Length): cut off while reading.
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
    conn.request("POST", "/v1/completions", body=iter([huge[i:i + 1000] for i in range(0, 20_000, 1000)]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    one_line_error(response.status, json.loads(response.read()), 413, "more than 4096")
    conn.close()


def test_keys(gpt2_dir):
    with served(gpt2_dir, api_key="sekrit") as (url, _):
        assert request(url + "/healthz")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"},
                        {"Authorization": "Basic !!!"}):
            status, out, got = request(url + "/v1/models", headers=headers)
            one_line_error(status, out, 401, "API key")
            assert got["www-authenticate"].startswith("Bearer")
        status, out, got = request(url + "/")
        assert status == 401 and got["www-authenticate"].startswith("Basic")  # the browser asks for it
        assert request(url + "/v1/models", headers={"Authorization": "Bearer sekrit"})[0] == 200
        basic = {"Authorization": "Basic dXNlcjpzZWtyaXQ="}  # user:sekrit
        assert request(url + "/", headers=basic)[0] == 200
        status, _, _ = post(url + "/v1/completions", {"prompt": "a", "max_tokens": 2},
                            headers={"Authorization": "Bearer sekrit"})
        assert status == 200


def test_a_loopback_server_answers_only_to_loopback_names(server):
    """No DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 gets nothing."""
    url, _ = server
    port = url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert request(url + "/v1/models", headers={"Host": host})[0] == 200, host
    for host in (f"evil.example:{port}", "127.0.0.1.evil.example", "", f"[::2]:{port}"):
        status, out, _ = request(url + "/v1/models", headers={"Host": host})
        one_line_error(status, out, 421, "this server answers to")


def slow_steps(engine, seconds: float):
    """Make every decoding step of `engine` take `seconds` longer (a model big enough to watch)."""
    step = engine.batch.step

    def slow(feed):
        time.sleep(seconds)
        return step(feed)

    engine.batch.step = slow


def test_a_client_that_disconnects_frees_its_rows(gpt2_dir):
    with served(gpt2_dir) as (url, app):
        engine = app.state.served.engine
        slow_steps(engine, 0.01)
        port = int(url.rsplit(":", 1)[1])
        # Mid-stream: read a little, then close the socket.
        sock = socket.create_connection(("127.0.0.1", port))
        body = {"prompt": "the cat", "max_tokens": 100, "stream": True, "ignore_eos": True}
        body = json.dumps(body).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        wait_until(lambda: engine.status()["rows"] == 1, what="the stream to run")
        sock.close()
        wait_until(lambda: engine.status()["cancelled"] == 1, what="the cancellation")
        status = engine.status()
        assert status["running"] == 0 and status["rows"] == 0 and status["cache_bytes"] == 0
        # Waiting for a whole (non-streamed) response, then gone.
        sock = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"prompt": "the cat", "max_tokens": 100, "ignore_eos": True}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: engine.status()["rows"] == 1, what="the request to run")
        sock.close()
        wait_until(lambda: engine.status()["cancelled"] == 2, what="the second cancellation")
        assert engine.status()["rows"] == 0 and engine.status()["completed"] == 0
        assert post(url + "/v1/completions", {"prompt": "a", "max_tokens": 3})[0] == 200  # still serving


def test_200_requests_at_once(server):
    """4 decode, 8 wait, the rest are refused with 429 at once; each request gets exactly one answer, and
    the server ends healthy, with no rows, no cache and its memory back at the idle level."""
    url, app = server
    engine = app.state.served.engine
    for _ in range(3):  # warm up: the allocator's pools reach their working size
        post(url + "/v1/completions", {"prompt": "the cat", "max_tokens": 40, "n": 4})
    idle = request(url + "/healthz")[1]["rss_bytes"]
    slow_steps(engine, 0.005)
    results: list = [None] * 200
    barrier = threading.Barrier(200)

    def client(i):
        body = {"prompt": f"the cat {i}", "max_tokens": 10, "seed": i}
        barrier.wait()
        try:
            if i % 2:
                results[i] = ("stream", stream(url + "/v1/completions", {**body, "stream": True}))
            else:
                results[i] = ("json",) + post(url + "/v1/completions", body)[:2]
        except AssertionError as e:  # stream() asserts 200: keep the refusal
            results[i] = ("refused", str(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    del engine.batch.step
    assert all(r is not None for r in results)  # none lost
    served_ok = [r for r in results if (r[0] == "json" and r[1] == 200) or r[0] == "stream"]
    refused = [r for r in results if (r[0] == "json" and r[1] == 429) or r[0] == "refused"]
    assert len(served_ok) + len(refused) == 200 and len(served_ok) >= 12 and refused
    for r in refused:
        if r[0] == "json":
            one_line_error(429, r[2], 429, "busy")
    ids = [r[2]["id"] if r[0] == "json" else r[1][0]["id"] for r in served_ok]
    assert len(set(ids)) == len(ids)  # no request answered twice
    wait_until(lambda: engine.status()["running"] == 0, what="the engine to drain")
    health = request(url + "/healthz")[1]
    assert health["status"] == "ok" and health["waiting"] == 0 and health["rows"] == 0
    assert health["cache_bytes"] == 0
    assert health["completed"] + health["refused"] >= 200
    assert health["rss_bytes"] < idle + (64 << 20), (idle, health["rss_bytes"])
    assert post(url + "/v1/completions", {"prompt": "the cat", "max_tokens": 5})[0] == 200


def test_an_internal_failure_is_one_line_and_the_server_recovers(gpt2_dir):
    with served(gpt2_dir) as (url, app):
        engine = app.state.served.engine

        def broken(feed):
            raise RuntimeError("simulated bug\nwith a second line")

        engine.batch.step = broken
        status, out, _ = post(url + "/v1/completions", {"prompt": "the cat", "max_tokens": 5})
        one_line_error(status, out, 500, "internal error")
        assert engine.batch.step != broken  # a new, empty batch replaced the broken one
        engine.batch.step = broken
        events = stream(url + "/v1/completions", {"prompt": "the cat", "max_tokens": 5, "stream": True})
        assert "internal error" in events[-1]["error"]["message"] and "simulated" not in json.dumps(events)
        assert post(url + "/v1/completions", {"prompt": "the cat", "max_tokens": 5})[0] == 200
        assert request(url + "/healthz")[1]["failed"] == 2
