"""The model's thread: continuous batching of the completion requests, and the server's other model work.

One thread owns the model (torch work never runs on the event loop). Each turn of its loop:
1. waiting requests join the running batch (`lmlab.generate.batching.BatchDecoder`), their prompts
   read together in one forward (a KV-cache model; one by one otherwise), within a budget of prompt
   tokens per turn so that running requests keep stepping; queued jobs (`/v1/inspect`,
   `/v1/embeddings`) run;
2. every running request picks its next tokens from its logits with its own
   `lmlab.generate.sampling.DecodeRule` (its sampling settings, seed and stop rules: `lmlab.generate`'s
   rule, row for row); the events of all requests go to their asyncio queues in one call;
3. finished and cancelled requests leave the batch (their rows are freed at once);
4. one `BatchDecoder.step` feeds every remaining request's tokens back: the next turn's logits.

Limits: at most `max_running` requests and `max_rows` rows (n per request) decode at once and at most
`max_queue` requests or jobs wait; one more is refused at once (`Busy`, HTTP 429), so nothing queues
without bound. A request whose client went away is cancelled: it leaves at the next turn.

A failure inside one request (non-finite logits: a broken model) ends that request with an error event;
any other failure of a turn (the batch step) ends every running request with one and starts a new,
empty batch, so the engine outlives its bugs. The traceback goes to the server's log, never to a
client.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError
from lmlab.generate.batching import BatchDecoder
from lmlab.generate.sampling import DecodeRule

log = logging.getLogger("lmlab.serve")


@dataclass(frozen=True)
class Capacity:
    max_running: int = 32  # requests decoding at once
    max_rows: int = 64  # rows decoding at once (a request with n choices has n rows)
    max_queue: int = 64  # requests and jobs waiting beyond those
    prefill_tokens: int = 2048  # prompt tokens read per turn before the running rows step again


class Busy(Exception):
    """The queue is full: answer 429."""


class Failure(Exception):
    """A request or job failed inside the engine: `status` and a one-line message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Sampling:
    """What a completion request asks of the decoding rule."""

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    eos: int | None = None
    logprobs: int | None = None  # with the chosen token's log-probability, the top `logprobs` ones


class Generation:
    """One completion request inside the engine. Its events arrive on `queue`, in order:
    ("step", tokens, logprobs) per decoding step (a token per row, None for a row that emits nothing
    this step: stopped earlier, or this token is end-of-text), then ("done", reasons, generated) or
    ("error", Failure); ("gone",) after `cancel`."""

    def __init__(self, engine: Engine, prompt: list[int], sampling: Sampling, codec=None):
        self.engine, self.prompt, self.sampling, self.codec = engine, prompt, sampling, codec
        self.key = next(engine.keys)
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        # the engine's side
        self.rule: DecodeRule | None = None
        self.logits: torch.Tensor | None = None
        self.steps = 0
        n = sampling.n
        self.stopped, self.reasons, self.generated = [False] * n, [None] * n, [0] * n

    def cancel(self) -> None:
        """The client went away: the request leaves the batch at the engine's next turn."""
        self.cancelled = True
        self.engine.discard(self)
        self.queue.put_nowait(("gone",))  # wakes whoever waits for the next event


@dataclass(eq=False)  # found in the queue by identity
class Job:
    """Other model work (inspect, embeddings, MIDI rendering), run on the model's thread between turns."""

    run: Callable[[], object]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    def __init__(self, model, capacity: Capacity = Capacity(), generates: bool = True):
        self.model, self.capacity = model, capacity
        self.batch = BatchDecoder(model) if generates else None
        self.device = next(model.parameters()).device
        self.keys = itertools.count()
        self._lock = threading.Condition()
        self._waiting: deque[Generation | Job] = deque()
        self._running: dict[int, Generation] = {}
        self._rows = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "refused": 0, "jobs": 0}

    # ---- the event loop's side -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lmlab-serve-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, work: Generation | Job) -> None:
        with self._lock:
            if len(self._waiting) >= self.capacity.max_queue:
                self.counts["refused"] += 1
                raise Busy(f"the server is busy: {len(self._running)} requests running and "
                           f"{len(self._waiting)} waiting; try again later")
            self._waiting.append(work)
            self._lock.notify()

    def call(self, fn: Callable[[], object]) -> Job:
        """Run fn() on the model's thread between decoding steps; await `job.future` for its result."""
        loop = asyncio.get_running_loop()
        job = Job(fn, loop.create_future(), loop)
        self.submit(job)
        return job

    def discard(self, work: Generation | Job) -> None:
        with self._lock:
            if work in self._waiting:
                self._waiting.remove(work)
                self.counts["cancelled"] += 1
            self._lock.notify()

    def status(self) -> dict:
        with self._lock:
            return {"running": len(self._running), "waiting": len(self._waiting), "rows": self._rows,
                    "cache_bytes": self.batch.nbytes if self.batch is not None else 0, **self.counts}

    # ---- the model's thread ----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._stopping or self._waiting or self._running):
                        self._lock.wait()
                    if self._stopping:
                        break
                    work = self._admit()
                try:
                    self._turn(work)
                except Exception as e:  # noqa: BLE001 - a bug must not stop the engine: fail, start afresh
                    self._reset(e)
        events = []
        for gen in list(self._running.values()):
            self._fail(gen, Failure(503, "the server is shutting down"), events)
        self._deliver(events)

    def _turn(self, work: list) -> None:
        events: list = []
        for job in (item for item in work if isinstance(item, Job)):
            self._run_job(job)
        self._start([item for item in work if isinstance(item, Generation)], events)
        feed = self._pick_all(events)
        self._deliver(events)
        if feed:
            logits = self.batch.step(feed)
            for key, value in logits.items():
                self._running[key].logits = value

    def _reset(self, error: Exception) -> None:
        """The batch's state is unknown: every running request fails (one line), a new batch starts."""
        self.batch = BatchDecoder(self.model) if self.batch is not None else None
        failure, events = _failure(error), []
        for gen in list(self._running.values()):
            self._fail(gen, failure, events)
        self._deliver(events)

    def _admit(self) -> list:
        """Waiting work that may start now (called under the lock)."""
        out, budget, cap = [], self.capacity.prefill_tokens, self.capacity
        while self._waiting:
            work = self._waiting[0]
            if isinstance(work, Generation):
                n = work.sampling.n
                if out and budget < len(work.prompt):
                    break
                if len(self._running) >= cap.max_running or self._rows + n > cap.max_rows:
                    break
                budget -= len(work.prompt)
                self._running[work.key] = work
                self._rows += n
            self._waiting.popleft()
            out.append(work)
        return out

    def _run_job(self, job: Job) -> None:
        if job.cancelled:
            return
        try:
            result, error = job.run(), None
        except LmlabError as e:
            result, error = None, Failure(422, str(e))
        except Exception:  # noqa: BLE001 - a bug: logged here, one line to the client
            log.exception("lmlab serve: a job failed")
            result, error = None, Failure(500, "internal error (the server's log has the details)")
        self.counts["jobs"] += 1
        job.loop.call_soon_threadsafe(_resolve, job.future, result, error)

    def _start(self, gens: list[Generation], events: list) -> None:
        """Read the prompts of the requests that join the batch (in one forward where the model allows);
        their first tokens are picked with the others'."""
        prompts = {}
        for gen in gens:
            if gen.cancelled:
                self._leave(gen, "cancelled")
                continue
            s = gen.sampling
            ids = torch.tensor([gen.prompt] * s.n, device=self.device)
            generator = None
            if s.temperature > 0:
                generator = torch.Generator(device=self.device)
                generator.seed() if s.seed is None else generator.manual_seed(s.seed)
            gen.rule = DecodeRule(ids, None, s.temperature > 0, s.temperature or 1.0, s.top_k or None,
                                  s.top_p, s.repetition_penalty, s.eos, generator, list(s.stop) or None,
                                  gen.codec, pad=s.eos if s.eos is not None else 0)
            prompts[gen.key] = ids
        if not prompts:
            return
        try:
            logits = self.batch.add_many(prompts)
        except Exception as e:  # noqa: BLE001
            for gen in gens:
                if gen.key in prompts:
                    self._fail(gen, _failure(e), events)
            return
        for gen in gens:
            if gen.key in logits:
                gen.logits = logits[gen.key]

    def _pick_all(self, events: list) -> dict:
        feed = {}
        for gen in list(self._running.values()):
            if gen.cancelled:
                self._leave(gen, "cancelled")
            elif gen.logits is not None:
                try:
                    tokens = self._pick(gen, events)
                except Exception as e:  # noqa: BLE001
                    self._fail(gen, _failure(e), events)
                    continue
                if tokens is not None:
                    feed[gen.key] = tokens
        return feed

    def _pick(self, gen: Generation, events: list) -> list[int] | None:
        """Choose the request's next tokens; its step event; the tokens to feed back (None: it is done)."""
        s, rule, logits = gen.sampling, gen.rule, gen.logits
        token = rule.pick(logits)
        tokens = token.tolist()
        logprobs = None
        if s.logprobs is not None:
            logp = logits.float().log_softmax(-1)  # (n, V): the model's own distribution
            chosen = logp.gather(1, token[:, None])[:, 0].tolist()
            top = logp.topk(s.logprobs, dim=-1) if s.logprobs else None
            logprobs = [(chosen[r], [] if top is None else list(zip(top.indices[r].tolist(),
                                                                     top.values[r].tolist(), strict=True)))
                        for r in range(s.n)]
        all_stopped = rule.observe(token)
        after = rule.finished.tolist()
        gen.steps += 1
        shown = []
        for r in range(s.n):
            if gen.stopped[r]:
                shown.append(None)  # the pad of a row that stopped earlier
                continue
            gen.generated[r] += 1
            if after[r]:
                gen.stopped[r], gen.reasons[r] = True, "stop"
            shown.append(None if after[r] and tokens[r] == s.eos else tokens[r])
        events.append((gen, ("step", shown, logprobs)))
        if all_stopped or gen.steps == s.max_tokens:
            events.append((gen, ("done", [r or "length" for r in gen.reasons], list(gen.generated))))
            self._leave(gen, "completed")
            return None
        return tokens

    def _fail(self, gen: Generation, failure: Failure, events: list) -> None:
        events.append((gen, ("error", failure)))
        self._leave(gen, "failed")

    def _leave(self, gen: Generation, outcome: str) -> None:
        with self._lock:
            if self._running.pop(gen.key, None) is None:
                return
            self._rows -= gen.sampling.n
            self.counts[outcome] += 1
        if self.batch is not None and gen.key in self.batch.keys:
            self.batch.remove(gen.key)
        gen.rule = gen.logits = None

    def _deliver(self, events: list) -> None:
        by_loop: dict = {}
        for gen, event in events:
            by_loop.setdefault(gen.loop, []).append((gen.queue, event))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop has closed (server shutting down): nobody is listening
                pass


def _put_all(items: list) -> None:
    for queue, event in items:
        queue.put_nowait(event)


def _resolve(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _failure(error: Exception) -> Failure:
    if isinstance(error, LmlabError):
        return Failure(500, f"generation failed: {error}")
    log.error("lmlab serve: a generation failed", exc_info=error)
    return Failure(500, "internal error (the server's log has the details)")
