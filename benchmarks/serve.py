"""`lmlab serve` under load: 1, 4, 16 and 64 concurrent streaming clients on loopback, continuous batching.

The server is the real command (`python -m lmlab serve DIR --port 0 --max-running 64`) in its own
process, with one torch thread; the clients are one asyncio process, each client a loop of streamed
`/v1/completions` requests (64 new tokens, `ignore_eos`, temperature 1 with a seed per request,
`stream_options.include_usage`), one after another, over plain HTTP/1.1 connections. The model is
the benchmarks' "small" GPT-2 shape (4 layers, width 256, 4 heads, 512 positions) with random
weights over a character vocabulary, so one token is one character and the first streamed text is
the first token.

Per level: tokens/s (completion tokens of the level's requests / its wall seconds; the median of
`--repeats` rounds run interleaved, 1, 4, 16, 64, 1, 4, ..., so that a busy patch of this shared
machine hits every level), time to first token (request sent -> first chunk with text) and request
latency (sent -> `data: [DONE]`), p50 and p99 over every request of the level. Request i has prompt
and seed i at every level, and each must come back exactly once: a 200, an id no other response of
the whole run has, a final chunk with finish_reason "length", the usage chunk with 64 completion
tokens, and [DONE]; "lost" and "dup" count the failures (both 0 is a pass). "same" counts the
requests whose text equals the text request i got when it ran alone (one client, first), showing
that sharing a batch does not change what a request gets. The server's /healthz after each level:
nothing running, no cache held, and the resident memory.

    python benchmarks/serve.py [--levels 1,4,16,64] [--requests N] [--tokens 64] [--repeats 3]
                               [--out NAME|PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity.\n")
SMALL = dict(n_layers=4, d_model=256, n_heads=4, d_ff=1024, max_seq_len=512, dropout=0.0)


def make_model(directory: Path) -> Path:
    import torch

    import lmlab
    from lmlab.tokenizers.chars import CharTokenizer

    tok = CharTokenizer.train([TEXT])
    torch.manual_seed(0)
    lmlab.save(lmlab.build("gpt2", "tiny", **SMALL, vocab_size=tok.vocab_size), tok, directory)
    return directory


def start_server(model_dir: Path, running: int) -> tuple[subprocess.Popen, str, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", "serve", str(model_dir), "--port", "0",
                             "--max-running", str(running), "--max-queue", str(4 * running)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    found = re.search(r"http://([\d.]+):(\d+)/", proc.stdout.readline())
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start: {proc.stderr.read()}")
    return proc, found.group(1), int(found.group(2))


async def http(host: str, port: int, method: str, path: str, body: dict | None = None):
    """(status, reader, writer) after the response headers; the body is chunked or read to EOF."""
    reader, writer = await asyncio.open_connection(host, port)
    data = b"" if body is None else json.dumps(body).encode()
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, "transfer-encoding: chunked" in head.decode().lower(), reader, writer


async def chunks(reader, chunked: bool):
    """The body's pieces as they arrive."""
    if not chunked:
        yield await reader.read()
        return
    while True:
        size = int((await reader.readline()).strip(), 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)


async def get_json(host, port, path) -> dict:
    status, chunked, reader, writer = await http(host, port, "GET", path)
    body = b"".join([c async for c in chunks(reader, chunked)])
    writer.close()
    return json.loads(body)


async def one(host, port, i: int, tokens: int) -> dict:
    body = {"prompt": f"Request {i}: it was the", "max_tokens": tokens, "temperature": 1.0, "seed": i,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    status, chunked, reader, writer = await http(host, port, "POST", "/v1/completions", body)
    out = {"i": i, "status": status, "ttft": None, "text": "", "ids": set(), "finish": None, "usage": None,
           "done": False}
    buffer = b""
    async for piece in chunks(reader, chunked):
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = event.decode()[len("data: "):]
            if data == "[DONE]":
                out["done"] = True
                continue
            chunk = json.loads(data)
            out["ids"].add(chunk.get("id"))
            if chunk.get("usage"):
                out["usage"] = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice["text"] and out["ttft"] is None:
                    out["ttft"] = time.perf_counter() - sent
                out["text"] += choice["text"]
                out["finish"] = choice["finish_reason"] or out["finish"]
    out["latency"] = time.perf_counter() - sent
    writer.close()
    return out


async def level(host, port, clients: int, requests: int, tokens: int) -> tuple[float, list[dict]]:
    """Requests 0 .. requests-1 through `clients` concurrent clients: (wall seconds, results by number)."""
    queue = list(range(requests))
    results: list[dict] = []

    async def client():
        while queue:
            results.append(await one(host, port, queue.pop(0), tokens))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, sorted(results, key=lambda r: r["i"])


def summary(clients: int, runs: list[tuple[float, list[dict]]], tokens: int, alone: dict) -> dict:
    """A table row from the level's repeats: tokens/s of the median repeat, percentiles of every request."""
    good, rates, sent, same = [], [], 0, 0
    for wall, results in runs:
        ok = [r for r in results if r["status"] == 200 and r["done"] and r["finish"] == "length"
              and r["usage"] == tokens and len(r["ids"]) == 1]
        good += ok
        sent += len(results)
        rates.append(sum(r["usage"] for r in ok) / wall)
        same += sum(r["text"] == alone.get(r["i"]) for r in results)
    ttft = sorted(r["ttft"] for r in good)
    latency = sorted(r["latency"] for r in good)
    ids = [next(iter(r["ids"])) for r in good]
    return {"clients": clients, "requests": sent, "tokens": sum(r["usage"] for r in good),
            "tokens_per_s": round(statistics.median(rates), 1),
            "tokens_per_s_repeats": [round(x, 1) for x in rates],
            "ttft_p50_ms": round(1000 * _quantile(ttft, 0.5), 1),
            "ttft_p99_ms": round(1000 * _quantile(ttft, 0.99), 1),
            "latency_p50_ms": round(1000 * _quantile(latency, 0.5), 1),
            "latency_p99_ms": round(1000 * _quantile(latency, 0.99), 1),
            "lost": sent - len(good), "dup": len(ids) - len(set(ids)), "same": same, "ids": ids}


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


async def run(host, port, levels, requests, tokens, repeats) -> list[dict]:
    """Every level `repeats` times, interleaved (1, 4, 16, 64, 1, 4, ...): a busy patch of a shared
    machine then hits every level instead of one."""
    await level(host, port, 4, 8, tokens)  # warm-up: the first requests pay for lazy imports
    runs: dict[int, list] = {c: [] for c in levels}
    _, first = await level(host, port, 1, max(requests, 2 * max(levels)), tokens)  # each request alone
    alone = {r["i"]: r["text"] for r in first}
    after = {}
    for repeat in range(repeats):
        for clients in levels:
            runs[clients].append(await level(host, port, clients, max(requests, 2 * clients), tokens))
            health = await get_json(host, port, "/healthz")
            after[clients] = {k: health[k] for k in ("running", "waiting", "rows", "cache_bytes",
                                                     "rss_bytes")}
            wall, results = runs[clients][-1]
            rate = sum(r["usage"] or 0 for r in results) / wall
            common.log(f"repeat {repeat + 1}: {clients:>3} clients, {rate:,.0f} tok/s")
    rows = [summary(c, runs[c], tokens, alone) | {"after": after[c]} for c in levels]
    everything = [i for row in rows for i in row.pop("ids")]
    for row in rows:
        row["speedup_ratio"] = round(row["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
    if len(set(everything)) != len(everything):
        rows[-1]["dup"] += len(everything) - len(set(everything))  # an id answered in two levels
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=16, help="requests per level (at least 2 per client)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the levels (interleaved)")
    parser.add_argument("--out", default="serve", help="benchmarks/results/NAME.json, or a path with a /")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    start_load = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "small-chars")
        proc, host, port = start_server(model_dir, max(levels))
        try:
            idle = asyncio.run(get_json(host, port, "/healthz"))["rss_bytes"]
            rows = asyncio.run(run(host, port, levels, args.requests, args.tokens, args.repeats))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    columns = [("clients", "clients"), ("requests", "requests"), ("tokens_per_s", "tok/s"),
               ("speedup_ratio", "vs 1 client"), ("ttft_p50_ms", "TTFT p50 ms"),
               ("ttft_p99_ms", "TTFT p99 ms"), ("latency_p50_ms", "latency p50 ms"),
               ("latency_p99_ms", "latency p99 ms"), ("lost", "lost"), ("dup", "dup"),
               ("same", "same as alone")]
    print(common.table(rows, columns))
    env = {"python": platform.python_version(), "cpu": common.cpu_model(), "cpu_count": os.cpu_count(),
           "server_torch_threads": 1, "loadavg_at_start": start_load,
           "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    model = {"family": "gpt2", **SMALL, "tokenizer": "chars"}
    payload = {"benchmark": "serve", "doc": __doc__, "model": model,
               "new_tokens": args.tokens, "env": env, "server_rss_idle_bytes": idle, "levels": rows,
               "pass": all(r["lost"] == 0 and r["dup"] == 0 for r in rows)
               and all(r["after"]["running"] == 0 and r["after"]["cache_bytes"] == 0 for r in rows)}
    if "/" in args.out:
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
        common.log(f"wrote {args.out}")
    else:
        common.log(f"wrote {common.write_results(args.out, payload)}")
    sixteen = next((r for r in rows if r["clients"] == 16), None)
    if sixteen is not None:
        common.log(f"16 clients: {sixteen['speedup_ratio']}x the tokens/s of one (target >= 3x)")
    return 0 if payload["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
