"""A KV cache whose rows hold sequences of different lengths that join and leave between steps: the
decoding state of continuous batching (lmlab.generate.batching, used by the server).

For the attention layers it is a `KVCache` (`length`, `append(layer, k, v)`, `advance(n)`), so a
model's own forward runs on it unchanged. Rows are right-aligned at a common frontier `length` (F):
row b's L_b tokens fill columns [F - L_b, F); the columns before them are padding. A step feeds every
row one token at column F with `attention_mask(1)`, (B, F + 1), marking each row's real columns:
the left padding `lmlab.generate` uses for prompts of different lengths, so the model counts
positions over real tokens and masks the padding, and a row's numbers do not depend on its
neighbours (up to the float rounding of a batched matmul).

- `join(other)`: the rows of another RaggedKVCache (a prompt that was just run through the model)
  come in below the others, right-aligned; a prompt longer than F shifts the other rows right.
- `remove(rows)`: rows leave; the last rows move into their places (a copy of those rows, not of the
  batch), and the returned {old index: new index} says which rows moved where.
- `reserve(n)` before a forward of n tokens: makes room, dropping the leading columns no row uses
  (`compact`) when the frontier would pass the buffers or the model's context, or when more than half
  of the columns are padding. F grows while rows come and go; compacted, it is the longest row.

Buffers are per layer (R, H, W, hd), made on the first `append` (heads, head size and dtype come from
the keys the model writes) and grown by doubling. They are freed when the last row leaves. Padding
columns hold zeros or old finite values: an attention weight of exactly 0 times a finite value adds
nothing, so they never leak into a row.
"""

from __future__ import annotations

import torch

from lmlab.errors import GenerationError


class RaggedKVCache:
    def __init__(self, rows: int = 0, limit: int | None = None):
        self.keys: list[torch.Tensor] = []  # per layer (R, H, W, hd); rows [0, rows) are live
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = [0] * rows  # real tokens of each row
        self.length = 0  # the frontier F: the next token of every row goes to column F
        self.limit = limit  # the model's context: the frontier never passes it

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def _capacity(self) -> tuple[int, int]:
        return (self.keys[0].shape[0], self.keys[0].shape[2]) if self.keys else (0, 0)

    # ---- the KVCache interface the attention layers call ---------------------------------------
    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, hd) at columns [F, F + T) of every row; return columns [0, F + T)."""
        B, H, T, hd = k.shape
        end = self.length + T
        if B != self.rows:
            raise GenerationError(f"ragged KV cache holds {self.rows} rows; a forward of {B} was run on it")
        if layer == len(self.keys):  # the first forward on a new cache makes the buffers, layer by layer
            R, W = self._capacity() if self.keys else (B, end)
            self.keys.append(k.new_zeros(R, H, W, hd))
            self.values.append(v.new_zeros(R, H, W, hd))
        keys, values = self.keys[layer], self.values[layer]
        if end > keys.shape[2]:
            raise GenerationError(f"ragged KV cache has {keys.shape[2]} columns; {end} were asked for "
                                  f"(call reserve first)")
        keys[:B, :, self.length:end] = k
        values[:B, :, self.length:end] = v
        return keys[:B, :, :end], values[:B, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
        self.lengths = [length + n for length in self.lengths]

    # ---- what the batch needs around a forward -------------------------------------------------
    def attention_mask(self, new: int) -> torch.Tensor | None:
        """(B, F + new) 1 at the real columns of each row and at the `new` columns; None without padding."""
        F = self.length
        if all(length == F for length in self.lengths):
            return None
        device = self.keys[0].device
        starts = torch.tensor([F - length for length in self.lengths], device=device)  # (B,)
        return (torch.arange(F + new, device=device)[None, :] >= starts[:, None]).long()  # (B, F + new)

    def reserve(self, n: int) -> None:
        """Make room for a forward of n more tokens per row."""
        F, longest = self.length, max(self.lengths, default=0)
        R, W = self._capacity()
        over = F + n > W or (self.limit is not None and F + n > self.limit)
        if over or F - longest > F // 2:
            self.compact()
        F = self.length
        if self.limit is not None and F + n > self.limit:
            raise GenerationError(f"a row of {F} tokens + {n} exceeds the model's context ({self.limit})")
        if F + n > W:
            self._resize(R, _grown(W, F + n, self.limit))

    def compact(self) -> None:
        """Drop the leading columns that hold no row's tokens: the frontier becomes the longest row."""
        longest = max(self.lengths, default=0)
        shift, B = self.length - longest, self.rows
        if shift == 0:
            return
        for t in self.keys + self.values:
            t[:B, :, :longest] = t[:B, :, shift:self.length].clone()  # overlapping ranges: copy first
        self.length = longest

    def join(self, other: RaggedKVCache) -> list[int]:
        """Take in the rows of `other` (same model); returns their row indices here."""
        if not other.keys:
            raise GenerationError("the joining cache is empty: run its prompt through the model first")
        if not self.keys:  # an empty batch takes the new rows' layout as it is
            self.keys, self.values = other.keys, other.values
            self.lengths, self.length = list(other.lengths), other.length
            return list(range(self.rows))
        shift = max(0, other.length - self.length)
        B, n, F = self.rows, other.rows, self.length + shift
        R, W = self._capacity()
        if shift or B + n > R or F > W:
            self._resize(_grown(R, B + n), _grown(W, F, self.limit), shift)
        for mine, theirs in zip(self.keys + self.values, other.keys + other.values, strict=True):
            mine[B:B + n, :, F - other.length:F] = theirs[:n, :, :other.length]
        self.length = F
        self.lengths += other.lengths
        return list(range(B, B + n))

    def remove(self, rows: list[int]) -> dict[int, int]:
        """Drop `rows`; the last rows move into the gaps. Returns {old index: new index} of moved rows."""
        origin = list(range(self.rows))  # origin[i]: the index row i had before this call
        for r in sorted(set(rows), reverse=True):
            last = self.rows - 1
            if r != last:
                for t in self.keys + self.values:
                    t[r] = t[last]
                self.lengths[r], origin[r] = self.lengths[last], origin[last]
            self.lengths.pop()
            origin.pop()
        if not self.lengths:  # nobody left: give the memory back
            self.keys, self.values, self.length = [], [], 0
        return {old: new for new, old in enumerate(origin) if old != new}

    def _resize(self, rows: int, width: int, shift: int = 0) -> None:
        """New buffers of (rows, width); live rows copied, their columns moved right by `shift`."""
        B, F = self.rows, self.length
        for group in (self.keys, self.values):
            for i, old in enumerate(group):
                new = old.new_zeros(rows, old.shape[1], width, old.shape[3])
                new[:B, :, shift:shift + F] = old[:B, :, :F]
                group[i] = new
        self.length = F + shift


def _grown(have: int, need: int, limit: int | None = None) -> int:
    """At least `need`, doubling from `have` (at most `limit` unless `need` is more)."""
    size = max(have, 1)
    while size < need:
        size *= 2
    return max(need, min(size, limit)) if limit is not None else size
