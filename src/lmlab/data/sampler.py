"""Batches of (x, y) windows from a token shard, as pure functions of (seed, step, rank).

Every sampler here computes batch `step` from plain integers alone, so its state is a few ints
(`state_dict()`), resume is exact, and changing the number of processes on resume does not change
the global batch. Data parallelism splits the *global* batch: with batch_size B and W ranks, rank r
gets rows r*B/W : (r+1)*B/W of the batch one process would draw, so W ranks x B/W rows are exactly
1 rank x B rows. Windows are gathered with one numpy fancy index on the memmap: no Python work
per token.

- RandomWindowSampler: B windows at uniform random offsets (nanoGPT-style), for transformer LMs.
- ContiguousStreams: the stream cut into B parallel streams read T tokens at a time (the
  "batchify" of AWD-LSTM / Transformer-XL), for models that carry state across batches.
- BidirectionalStreams: the same streams for a forward LM and, from the reversed stream, for a
  backward LM (ELMo).
- VariableBPTTStreams: the same streams read a random length at a time (AWD-LSTM, ULMFiT).
- SequentialWindows: evaluation windows that score every target exactly once, non-overlapping
  (stride = seq_len) or sliding (stride < seq_len, each window keeps seq_len - stride of context).
"""

from __future__ import annotations

import numpy as np
import torch

from lmlab.errors import ConfigError, DataError


def _tokens(shard) -> np.ndarray:
    return getattr(shard, "tokens", shard)


def _where(shard) -> str:
    return str(getattr(shard, "path", "token array"))


def _check(shard, seq_len: int, batch_size: int, rank: int, world_size: int, ahead: int = 1) -> None:
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("world_size", world_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
    if batch_size % world_size:
        raise ConfigError(f"global batch size {batch_size} is not divisible by the {world_size} processes")
    n = len(_tokens(shard))
    if n < seq_len + ahead:
        raise DataError(f"{_where(shard)} has {n} tokens, fewer than seq_len + {ahead} = {seq_len + ahead}")


def _gather(tokens: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    """(len(starts), length) int64 tensor of tokens[s : s + length] for each start s."""
    index = starts[:, None] + np.arange(length)[None, :]  # (b, length)
    return torch.from_numpy(np.asarray(tokens[index]).astype(np.int64))


def _xy(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # (b, T+1) -> x (b, T), y (b, T): y[t] is the token after x[t]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


class Stepper:
    """Shared iterator/state plumbing: batch(step) is pure, the iterator just counts steps."""

    kind = ""

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def _rows(self) -> slice:
        local = self.batch_size // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "seed": int(self.seed), "step": int(self.step),
                "seq_len": int(self.seq_len), "batch_size": int(self.batch_size),
                "num_tokens": len(_tokens(self.shard))}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; DataError when it was saved for different data or shapes."""
        mine = self.state_dict()
        for key in ("kind", "seq_len", "batch_size", "num_tokens"):
            if state.get(key) != mine[key]:
                raise DataError(f"sampler state was saved with {key}={state.get(key)!r} but this run has "
                                f"{key}={mine[key]!r}; resume needs the same data, seq_len and batch size")
        self.seed, self.step = int(state["seed"]), int(state["step"])


class RandomWindowSampler(Stepper):
    """Infinite (x, y) batches of windows at random offsets; batch k depends only on (seed, k).

    `batch_size` is the global batch (all ranks together); each rank gets batch_size/world_size rows.
    `ahead` = k > 1 reads seq_len + k tokens per window and gives (x, y_1, ..., y_k), y_j[t] the
    token j places after x[t] (the character transformer's multiple targets predict y_2 too).
    """

    kind = "random_windows"

    def __init__(self, shard, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, ahead: int = 1):
        if not isinstance(ahead, (int, np.integer)) or ahead < 1:
            raise ConfigError(f"ahead must be a positive integer, got {ahead!r}")
        _check(shard, seq_len, batch_size, rank, world_size, ahead)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.shard, self.seq_len, self.batch_size = shard, int(seq_len), int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.ahead = int(ahead)
        self.step = 0

    def offsets(self, step: int) -> np.ndarray:
        """Start offsets of the global batch `step`: batch_size ints in [0, n - seq_len - ahead]."""
        # A fresh generator keyed by (seed, step): no hidden RNG state to save or to drift.
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, int(step)])))
        # exclusive: the window needs seq_len + ahead tokens
        high = len(_tokens(self.shard)) - self.seq_len - self.ahead + 1
        return rng.integers(0, high, size=self.batch_size, dtype=np.int64)

    def batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """This rank's (x, y) of global batch `step`, each (batch_size/world_size, seq_len) int64
        (with `ahead` > 1: x and `ahead` target tensors)."""
        starts = self.offsets(step)[self._rows()]
        windows = _gather(_tokens(self.shard), starts, self.seq_len + self.ahead)
        if self.ahead == 1:
            return _xy(windows)
        T = self.seq_len
        return tuple(windows[:, j:j + T].contiguous() for j in range(self.ahead + 1))  # x, y_1 .. y_ahead

    def state_dict(self) -> dict:
        return {**super().state_dict(), "ahead": self.ahead}

    def load_state_dict(self, state: dict) -> None:
        if state.get("ahead", 1) != self.ahead:  # states saved before `ahead` existed read 1 token ahead
            raise DataError(f"sampler state was saved with ahead={state.get('ahead', 1)!r} but this run has "
                            f"ahead={self.ahead}; resume needs the same objective")
        super().load_state_dict(state)


class ContiguousStreams(Stepper):
    """(x, y) batches that continue each other: row b of batch k+1 follows row b of batch k.

    The shard is cut into batch_size equal streams; one epoch reads each stream seq_len tokens at
    a time (the tail shorter than seq_len is dropped, so every batch has the same shape). After
    `next()`, `reset_state` is True when the batch just returned starts the streams over, i.e.
    carried state (LSTM hidden, Transformer-XL memory) must be reset before it.
    """

    kind = "contiguous_streams"

    def __init__(self, shard, seq_len: int, batch_size: int, rank: int = 0, world_size: int = 1):
        _check(shard, seq_len, batch_size, rank, world_size)
        self.shard, self.seq_len, self.batch_size = shard, int(seq_len), int(batch_size)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), 0
        self.stream_len = len(_tokens(shard)) // self.batch_size
        self.steps_per_epoch = (self.stream_len - 1) // self.seq_len
        if self.steps_per_epoch < 1:
            raise DataError(f"{_where(shard)} has {len(_tokens(shard))} tokens: too few for "
                            f"{self.batch_size} streams of seq_len + 1 = {self.seq_len + 1} tokens")
        self.step = 0
        self.reset_state = True

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = step % self.steps_per_epoch
        starts = np.arange(self.batch_size, dtype=np.int64)[self._rows()] * self.stream_len + i * self.seq_len
        return _xy(_gather(_tokens(self.shard), starts, self.seq_len + 1))

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.reset_state = self.step % self.steps_per_epoch == 0
        return super().__next__()


class BidirectionalStreams(ContiguousStreams):
    """(x, y, xb, yb) batches for a forward and a backward LM (ELMo, Peters et al. 2018 §3.1): (x, y) as
    ContiguousStreams gives them, (xb, yb) the same from the token stream read backwards (the
    reversed corpus cut into its own batch_size streams), so each direction's state carries over to
    the next batch as in bilm-tf's `LMDataset` / `LMDataset(reverse=True)`. yb[t] is the token that
    comes before xb[t] in the corpus.
    """

    kind = "bidirectional_streams"

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        i = step % self.steps_per_epoch
        starts = np.arange(self.batch_size, dtype=np.int64)[self._rows()] * self.stream_len + i * self.seq_len
        tokens = _tokens(self.shard)
        return (*_xy(_gather(tokens, starts, self.seq_len + 1)),
                *_xy(_gather(tokens[::-1], starts, self.seq_len + 1)))


class SequentialWindows:
    """Evaluation batches (x, y, mask) that together score each of the n - 1 targets once.

    Window ends advance by `stride` (default seq_len: non-overlapping). Every window is seq_len
    long (except when the shard is shorter) and starts seq_len before its end, so the targets it
    scores, marked True in `mask` (the last ones of the row), get as much context as fits.
    Rank r of world_size takes windows r, r + W, r + 2W, ... in batches of `batch_size` (per rank,
    unlike the training samplers); iterating twice gives the same batches.
    """

    def __init__(self, shard, seq_len: int, stride: int | None = None, batch_size: int = 1,
                 rank: int = 0, world_size: int = 1):
        stride = seq_len if stride is None else stride
        _check(shard, 1, world_size, rank, world_size)  # batch_size here is per rank
        if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
            raise ConfigError(f"seq_len must be a positive integer, got {seq_len!r}")
        if not isinstance(stride, (int, np.integer)) or not 1 <= stride <= seq_len:
            raise ConfigError(f"stride must be an integer in [1, seq_len={seq_len}], got {stride!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.shard, self.seq_len, self.stride = shard, int(seq_len), int(stride)
        self.batch_size = int(batch_size)
        last = len(_tokens(shard)) - 1  # x may use positions 0..last-1; y positions 1..last
        ends = np.minimum(np.arange(min(self.seq_len, last), last + self.stride, self.stride), last)
        ends = np.unique(ends)  # the last window may be capped onto the previous end
        scored = np.diff(ends, prepend=0)  # targets first covered by each window
        width = min(self.seq_len, last)
        self.starts = (ends - width)[rank::world_size]
        self.scored = scored[rank::world_size]
        self.width = width

    def __len__(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    @property
    def num_targets(self) -> int:
        """Targets this rank scores (all ranks together: number of tokens - 1)."""
        return int(self.scored.sum())

    def __iter__(self):
        tokens = _tokens(self.shard)
        cols = np.arange(self.width)[None, :]
        for b in range(0, len(self.starts), self.batch_size):
            starts, scored = self.starts[b : b + self.batch_size], self.scored[b : b + self.batch_size]
            x, y = _xy(_gather(tokens, starts, self.width + 1))
            mask = torch.from_numpy(cols >= (self.width - scored)[:, None])  # (b, width) bool
            yield x, y, mask


class VariableBPTTStreams(Stepper):
    """ContiguousStreams with a new length every step: AWD-LSTM's variable-length backpropagation
    through time (Merity et al. 2017, §4.4), so that over the epochs every token is the start of a
    segment, not only every seq_len-th one.

    Each batch's length is seq_len with probability 0.95, else seq_len / 2, then drawn from
    N(that, 5), at least min(5, seq_len) (Merity's code); the last batch of an epoch takes what is
    left of the streams. The lengths of epoch e come from a generator keyed by (seed, e), so batch
    `step` is still a pure function of (seed, step): its state is the step, resume is exact. Merity
    also scales the learning rate by length / seq_len (for SGD); with Adam a loss scale changes
    nothing, so it is not done here. `reset_state` is True for the first batch of every epoch.
    """

    kind = "variable_bptt_streams"

    def __init__(self, shard, seq_len: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        _check(shard, seq_len, batch_size, rank, world_size)
        self.shard, self.seq_len, self.batch_size = shard, int(seq_len), int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.stream_len = len(_tokens(shard)) // self.batch_size
        if self.stream_len - 1 < self.seq_len:
            raise DataError(f"{_where(shard)} has {len(_tokens(shard))} tokens: too few for "
                            f"{self.batch_size} streams of seq_len + 1 = {self.seq_len + 1} tokens")
        self.step, self.reset_state = 0, True
        self._epochs: list[np.ndarray] = []  # lengths of the epochs seen so far, in order

    def lengths(self, epoch: int) -> np.ndarray:
        """The batch lengths of `epoch`, summing to stream_len - 1."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, int(epoch)])))
        left, out, floor = self.stream_len - 1, [], min(5, self.seq_len)
        while left > 0:
            base = self.seq_len if rng.random() < 0.95 else self.seq_len / 2
            n = min(left, max(floor, int(rng.normal(base, 5))))
            out.append(n)
            left -= n
        return np.array(out, dtype=np.int64)

    def locate(self, step: int) -> tuple[int, int, int, int]:
        """(epoch, index in the epoch, offset in the streams, length) of batch `step`."""
        epoch, first = 0, 0
        while True:
            if epoch == len(self._epochs):
                self._epochs.append(self.lengths(epoch))
            lengths = self._epochs[epoch]
            if step < first + len(lengths):
                i = step - first
                return epoch, i, int(lengths[:i].sum()), int(lengths[i])
            first += len(lengths)
            epoch += 1

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, offset, length = self.locate(step)
        starts = np.arange(self.batch_size, dtype=np.int64)[self._rows()] * self.stream_len + offset
        return _xy(_gather(_tokens(self.shard), starts, length + 1))

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.reset_state = self.locate(self.step)[1] == 0
        return super().__next__()
