"""The routes of `lmlab serve` (lmlab.serve.app lists them): OpenAI's API, lmlab's inspect and music
routes, health, and the page's files. Model work runs on the engine's thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import struct
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lmlab.eval.embed import embed_texts, parse_layers
from lmlab.eval.inspect import token_statistics
from lmlab.serve import midi
from lmlab.serve.completions import CompletionState, stream_chunks, whole_response
from lmlab.serve.engine import Busy, Failure, Generation, Sampling
from lmlab.serve.http import EventStream, read_body, refuse_busy, until_done
from lmlab.serve.protocol import ApiError, completion_request, embedding_request, inspect_request, string
from lmlab.serve.served import Served

STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}


def served_of(request: Request) -> Served:
    return request.app.state.served


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
        kind = "server_error" if f.status >= 500 else "invalid_request_error"
        raise ApiError(f.status, f.message, kind=kind) from None


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
                        top_p=req.top_p, repetition_penalty=req.repetition_penalty, seed=req.seed,
                        stop=req.stop, eos=eos, logprobs=req.logprobs)
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
    if req.dimensions is not None and req.dimensions != vectors.shape[1]:
        raise ApiError(422, f"dimensions must be {vectors.shape[1]} (the model's width) or absent",
                       "dimensions")
    data = []
    for i, v in enumerate(vectors):
        value = v.tolist()
        if req.base64:  # float32, little-endian, as OpenAI's clients decode it
            value = base64.b64encode(struct.pack(f"<{len(value)}f", *value)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return JSONResponse({"object": "list", "data": data, "model": s.name,
                         "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}})


async def inspect(request: Request) -> Response:
    s = served_of(request)
    s.needs("inspect")
    req = inspect_request(await read_body(request, s.limits.max_body))
    s.check_model(req.model)
    prompt_part, ids = await asyncio.to_thread(
        lambda: (s.codec.encode(req.prompt), s.codec.encode(req.prompt + req.text)))
    most = s.limits.max_inspect_tokens
    if not 2 <= len(ids) <= most:
        raise ApiError(422, f"the text gives {len(ids)} tokens; inspect takes 2 to {most}", "text")
    stats = await run_job(request, lambda: token_statistics(s.net, ids))
    scale = 1 / 0.6931471805599453 if req.bits else 1.0
    loss = (stats["loss"].double() * scale).tolist()
    labels = [s.codec.label(i) for i in ids]
    shared = next((k for k, (a, b) in enumerate(zip(prompt_part, ids, strict=False)) if a != b),
                  min(len(prompt_part), len(ids)))
    entropy = (stats["entropy"].double() * scale).tolist()
    return JSONResponse({"model": s.name, "unit": "bits" if req.bits else "nats", "tokens": labels,
                         "ids": ids, "loss": [None, *loss], "entropy": [None, *entropy],
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
