"""Continuous batching: sequences join a running batch and leave it between decoding steps, so one
forward per step serves every request in flight (Yu et al. 2022, "Orca", iteration-level scheduling).

    batch = BatchDecoder(model)
    logits = batch.add(key, ids)               # a prompt (n, T), n rows -> next-token logits (n, V)
    out = batch.add_many({key: ids, ...})      # several at once (kv_cache: one padded forward)
    out = batch.step({key: [token, ...], ...})  # one token for every row of every key -> {key: (n, V)}
    batch.remove(key)                          # its rows leave; the others go on

The decoding rule stays outside (lmlab.generate.sampling.DecodeRule, one per request), so each
request keeps its own sampling settings and random generator. How rows are held depends on the
model's declared decoding state (`spec_of(model).state`), never on its family:

- `kv_cache`: one `RaggedKVCache` (lmlab.nn.ragged_cache) for all rows, each row with its own length,
  right-aligned and left-padded as `lmlab.generate` pads prompts of different lengths; one forward
  per step for the whole batch.
- carried states (`memory`, `rnn`: tensors with the batch in dim 0): rows are grouped by the shapes
  of their state and each group's states are concatenated on dim 0; one forward per group per step.
  A recurrent state has one shape for every row: one group. Transformer-XL's memory grows to mem_len
  and needs no padding, so rows whose memories have the same length share a forward (rows that
  started together step together; groups merge as soon as their memories are equally long).

A prompt is read as `lmlab.generate` reads it (kv_cache: at once, several prompts that join together
left-padded in one forward; memory: in segments of tgt_len, one prompt at a time) into state rows of
its own, which then join the batch. The tokens equal those of `lmlab.generate(model, prompt)` with the
same rule: exactly while the row is alone and unpadded, and up to the float rounding of a batched,
masked matmul beside other rows (tests/generate/test_batching.py checks both).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from lmlab.errors import GenerationError
from lmlab.generate.loop import check_generator, left_pad
from lmlab.models.registry import spec_of
from lmlab.nn.ragged_cache import RaggedKVCache
from lmlab.nn.state import map_state


class BatchDecoder:
    """One model's running batch (see the module docstring). Not thread-safe: one thread drives it."""

    def __init__(self, model):
        check_generator(model)
        state = spec_of(model).state
        if state == "none":
            raise GenerationError(f"{type(model).__name__} declares no decoding state: it cannot be batched")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self._rows = _RaggedRows(model) if state == "kv_cache" else _CarriedRows(model, state)

    @property
    def keys(self) -> list[Hashable]:
        return self._rows.keys()

    @property
    def rows(self) -> int:
        return self._rows.count()

    @property
    def nbytes(self) -> int:
        """Bytes held by the batch's decoding state."""
        return self._rows.nbytes()

    def add(self, key: Hashable, ids: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        """Read the prompt rows `ids` (n, T) and add them to the batch: their next-token logits (n, V)."""
        return self.add_many({key: ids})[key]

    @torch.inference_mode()
    def add_many(self, prompts: dict[Hashable, torch.Tensor | Sequence[Sequence[int]]]) -> dict:
        """`add` for several requests at once: {key: logits (n, V)}. A kv_cache model reads their prompts
        in one forward, left-padded as `lmlab.generate` reads prompts of different lengths; one prompt
        alone is read unpadded, exactly as `lmlab.generate(model, prompt)` reads it."""
        checked = {}
        for key, ids in prompts.items():
            ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
            if ids.dim() != 2 or ids.shape[1] == 0:
                raise GenerationError(f"a prompt is (rows, tokens) with at least one token, got "
                                      f"{tuple(ids.shape)}")
            if key in self._rows.keys():
                raise GenerationError(f"{key!r} is already in the batch")
            context = self.model.config.max_seq_len
            if ids.shape[1] > context:
                raise GenerationError(f"prompt of {ids.shape[1]} tokens is longer than the model's context "
                                      f"({context})")
            checked[key] = ids
        return self._rows.add_many(checked) if checked else {}

    @torch.inference_mode()
    def step(self, feed: dict[Hashable, Sequence[int]]) -> dict[Hashable, torch.Tensor]:
        """Feed one token to every row of every key in the batch: {key: next-token logits (n, V)}."""
        if set(feed) != set(self._rows.keys()):
            raise GenerationError("a step feeds every request in the batch: remove the others first")
        return self._rows.step(feed) if feed else {}

    @torch.inference_mode()
    def remove(self, key: Hashable) -> None:
        self._rows.remove(key)


class _RaggedRows:
    """kv_cache models: every row in one RaggedKVCache."""

    def __init__(self, model):
        self.model = model
        self.cache = RaggedKVCache(limit=model.config.max_seq_len)
        self.where: dict[Hashable, list[int]] = {}  # key -> its row indices in the cache

    def keys(self):
        return list(self.where)

    def count(self) -> int:
        return self.cache.rows

    def nbytes(self) -> int:
        return self.cache.nbytes

    def add_many(self, prompts):
        rows = [row for ids in prompts.values() for row in ids.tolist()]
        device = next(iter(prompts.values())).device
        ids, mask = left_pad(rows, 0, device)  # left-padded = right-aligned: the cache's own layout
        mask = None if bool(mask.all()) else mask
        fresh = RaggedKVCache(rows=len(rows))
        out = self.model(ids, attention_mask=mask, state=fresh, logits_to_keep=1)
        fresh.lengths = [len(row) for row in rows]  # the pads in front are not tokens of the row
        placed = self.cache.join(fresh)
        logits, start, result = out.logits[:, -1], 0, {}  # (rows, V)
        for key, ids in prompts.items():
            n = ids.shape[0]
            self.where[key] = placed[start:start + n]
            result[key] = logits[start:start + n]
            start += n
        return result

    def step(self, feed):
        tokens = [0] * self.cache.rows
        for key, rows in self.where.items():
            for row, token in zip(rows, feed[key], strict=True):
                tokens[row] = int(token)
        self.cache.reserve(1)
        ids = torch.tensor(tokens, device=self.cache.keys[0].device)[:, None]  # (B, 1)
        out = self.model(ids, attention_mask=self.cache.attention_mask(1), state=self.cache, logits_to_keep=1)
        logits = out.logits[:, -1]  # (B, V)
        return {key: _take(logits, rows) for key, rows in self.where.items()}

    def remove(self, key):
        moved = self.cache.remove(self.where.pop(key))
        if moved:
            self.where = {k: [moved.get(r, r) for r in rows] for k, rows in self.where.items()}


@dataclass
class _Group:
    """Rows whose carried states have the same shapes, concatenated on dim 0 in the order of `keys`."""

    state: object
    keys: list = field(default_factory=list)
    sizes: list = field(default_factory=list)  # rows of each key

    def signature(self):
        return _signature(self.state)


class _CarriedRows:
    """memory / rnn models: groups of rows whose state tensors have the same shapes."""

    def __init__(self, model, state: str):
        self.model = model
        # Transformer-XL reads a prompt in segments of tgt_len carrying its memory, as lmlab.generate does.
        self.segment = model.config.tgt_len if state == "memory" else None
        self.groups: list[_Group] = []

    def keys(self):
        return [k for g in self.groups for k in g.keys]

    def count(self) -> int:
        return sum(sum(g.sizes) for g in self.groups)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for g in self.groups for t in _tensors(g.state))

    def add_many(self, prompts):
        return {key: self.add(key, ids) for key, ids in prompts.items()}  # no padding: one prompt at a time

    def add(self, key, ids):
        n, T = ids.shape
        state = self.model.init_state(n, T, ids.device)
        segment = self.segment or T
        for start in range(0, T, segment):
            out = self.model(ids[:, start:start + segment], state=state, logits_to_keep=1)
            state = out.state
        self._place(_Group(state, [key], [n]))
        return out.logits[:, -1]

    def _place(self, new: _Group) -> None:
        signature = new.signature()
        for g in self.groups:
            if g.signature() == signature:
                g.state = _cat([g.state, new.state])
                g.keys += new.keys
                g.sizes += new.sizes
                return
        self.groups.append(new)

    def step(self, feed):
        out = {}
        for g in self.groups:
            tokens = [int(t) for key in g.keys for t in feed[key]]
            ids = torch.tensor(tokens, device=self.model_device())[:, None]  # (G, 1)
            result = self.model(ids, state=g.state, logits_to_keep=1)
            g.state = result.state
            logits = result.logits[:, -1]  # (G, V)
            start = 0
            for key, n in zip(g.keys, g.sizes, strict=True):
                out[key] = logits[start:start + n]
                start += n
        groups, self.groups = self.groups, []
        for g in groups:  # memories that grew to the same length share the next forward
            self._place(g)
        return out

    def model_device(self):
        return next(self.model.parameters()).device

    def remove(self, key):
        g = next(g for g in self.groups if key in g.keys)
        i = g.keys.index(key)
        start = sum(g.sizes[:i])
        kept = [r for r in range(sum(g.sizes)) if not start <= r < start + g.sizes[i]]
        del g.keys[i], g.sizes[i]
        if not g.keys:
            self.groups.remove(g)
            return
        index = torch.tensor(kept, device=self.model_device())
        g.state = map_state(lambda t: t.index_select(0, index), g.state)


def _take(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """logits[rows]: a view when the rows are consecutive (nearly always)."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return logits[rows[0]:rows[0] + len(rows)]
    return logits[torch.tensor(rows, device=logits.device)]


def _tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for part in state for t in _tensors(part)]


def _signature(state) -> tuple:
    """Shapes (without the batch) and dtypes of every state tensor, in nesting order."""
    return tuple((tuple(t.shape[1:]), t.dtype) for t in _tensors(state))


def _cat(states: list):
    """States of the same nesting and shapes concatenated along the batch (dim 0)."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(states, dim=0)
    return type(first)(_cat([s[i] for s in states]) for i in range(len(first)))
