"""`lmlab serve DIR`: load a model dir and serve it over HTTP with uvicorn (lmlab.serve.app)."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from lmlab.errors import ConfigError, TokenizerError
from lmlab.options import option

KEY_ENV = "LMLAB_API_KEY"


@dataclass(frozen=True)
class ServeOptions:
    """`lmlab serve`: an OpenAI-compatible API (completions streamed with continuous batching, embeddings,
    per-token inspection) and a web page for one model dir, on localhost unless --host says otherwise."""

    model_dir: str = option(help="an lmlab model dir (a run dir works)", positional=True)
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface, reachable by other "
                                    "machines; give --api-key then)")
    port: int = option(8000, "TCP port (0: any free port; the address is printed)")
    api_key: str | None = option(None, f"require 'Authorization: Bearer KEY' on every route but /healthz "
                                       f"(default: ${KEY_ENV} if set; on the command line it shows in ps)")
    name: str | None = option(None, "the model's id in the API (default: the dir's name)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    max_running: int = option(32, "requests decoding at once (they share one batch)")
    max_queue: int = option(64, "requests waiting beyond those; more are answered 429")
    max_tokens: int = option(1024, "the largest max_tokens a request may ask for")
    max_prompt_tokens: int = option(4096, "the longest prompt in tokens (and at most the model's context)")
    max_body: int = option(1 << 20, "the largest request body in bytes; larger ones are answered 413")
    log_requests: bool = option(False, "log every request (uvicorn's access log)")


def check_options(o: ServeOptions) -> None:
    for name in ("max_running", "max_queue", "max_tokens", "max_prompt_tokens", "max_body"):
        if getattr(o, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(o, name)}")
    if not 0 <= o.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {o.port}")


def listen(host: str, port: int) -> socket.socket:
    """A bound socket, so that port 0 picks a free port and the address is known before serving."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def serve_command(o: ServeOptions, out=sys.stdout) -> int:
    """Load the model, then serve until interrupted."""
    import uvicorn  # here, not at the top: `lmlab --help` builds every command's parser from this file

    from lmlab.checkpoints.io import load
    from lmlab.devices import resolve_device
    from lmlab.serve.app import create_app
    from lmlab.serve.engine import Capacity
    from lmlab.serve.http import LOOPBACK
    from lmlab.serve.protocol import Limits

    check_options(o)
    model, tokenizer = load(o.model_dir, device=resolve_device(o.device))
    if tokenizer is None:
        raise TokenizerError(f"{o.model_dir}: no tokenizer.json; the server reads and writes text")
    name = o.name or Path(o.model_dir).resolve().name
    limits = Limits(max_tokens=o.max_tokens, max_prompt_tokens=o.max_prompt_tokens, max_body=o.max_body)
    capacity = Capacity(max_running=o.max_running, max_queue=o.max_queue,
                        max_rows=max(o.max_running, 2 * Limits.max_n))
    sock = listen(o.host, o.port)
    host, port = sock.getsockname()[:2]
    # On loopback, answer only to loopback names (no DNS rebinding); elsewhere, to any name.
    hosts = (*LOOPBACK, o.host) if ipaddress.ip_address(host).is_loopback else None
    app = create_app(model, tokenizer, name, limits, capacity, o.api_key or os.environ.get(KEY_ENV) or None,
                     hosts)
    shown = f"[{host}]" if ":" in host else host
    print(f"lmlab serve: {name} on http://{shown}:{port}/ (API: /v1, page: /)", file=out, flush=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = uvicorn.Config(app, log_level="info" if o.log_requests else "warning", access_log=o.log_requests,
                            timeout_keep_alive=5, limit_concurrency=4 * (o.max_running + o.max_queue) + 64,
                            h11_max_incomplete_event_size=64 * 1024)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
