"""RaggedKVCache: rows of different lengths keep their own keys and values, right-aligned at the frontier,
through joins, removals, compaction and growth; the mask marks exactly each row's real columns."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import GenerationError
from lmlab.nn.ragged_cache import RaggedKVCache

H, HD, LAYERS = 2, 3, 2


def prefill(tokens: list[float], rows: int = 1) -> RaggedKVCache:
    """A new cache holding `tokens` (each one a key full of its value) in `rows` rows, as a forward does."""
    cache = RaggedKVCache(rows=rows)
    k = torch.tensor(tokens).view(1, 1, -1, 1).expand(rows, H, -1, HD)  # (rows, H, T, hd)
    for layer in range(LAYERS):
        cache.append(layer, k + layer, -(k + layer))
    cache.advance(len(tokens))
    return cache


def step(cache: RaggedKVCache, values: list[float]) -> None:
    cache.reserve(1)
    k = torch.tensor(values).view(-1, 1, 1, 1).expand(-1, H, 1, HD)
    for layer in range(LAYERS):
        cache.append(layer, k + layer, -(k + layer))
    cache.advance(1)


def rows_of(cache: RaggedKVCache) -> list[list[float]]:
    """Each row's real keys (layer 0, head 0, dim 0), read through the attention mask."""
    F = cache.length
    mask = cache.attention_mask(0)
    mask = torch.ones(cache.rows, F) if mask is None else mask
    keys = cache.keys[0][:cache.rows, 0, :F, 0]
    assert torch.equal(cache.keys[1][:cache.rows, 0, :F, 0][mask.bool()], keys[mask.bool()] + 1)
    assert torch.equal(cache.values[0][:cache.rows, 0, :F, 0][mask.bool()], -keys[mask.bool()])
    return [keys[b][mask[b].bool()].tolist() for b in range(cache.rows)]


def test_join_step_remove_keep_every_rows_tokens():
    cache = RaggedKVCache(limit=64)
    assert cache.join(prefill([1, 2, 3])) == [0]
    step(cache, [4])
    assert cache.join(prefill([10, 11, 12, 13, 14, 15, 16])) == [1]  # longer: the first row shifts right
    assert cache.join(prefill([20], rows=2)) == [2, 3]
    assert rows_of(cache) == [[1, 2, 3, 4], [10, 11, 12, 13, 14, 15, 16], [20], [20]]
    mask = cache.attention_mask(1)
    assert mask.shape == (4, 8) and mask.sum(1).tolist() == [5, 8, 2, 2] and mask[:, -1].all()
    step(cache, [5, 17, 21, 22])
    assert cache.remove([1]) == {3: 1}  # the last row fills the gap
    assert rows_of(cache) == [[1, 2, 3, 4, 5], [20, 22], [20, 21]]
    assert cache.remove([0, 2]) == {1: 0}
    assert rows_of(cache) == [[20, 22]] and cache.length == 8
    step(cache, [23])
    cache.compact()
    assert cache.length == 3 and rows_of(cache) == [[20, 22, 23]] and cache.attention_mask(1) is None
    assert cache.nbytes > 0
    assert cache.remove([0]) == {} and cache.nbytes == 0 and cache.length == 0  # memory given back


def test_reserve_compacts_before_the_context_and_grows_the_buffers():
    cache = RaggedKVCache(limit=10)
    cache.join(prefill(list(range(6))))
    cache.join(prefill([50.0]))
    cache.remove([0])
    assert cache.length == 6  # five columns of padding in front of the short row
    for t in range(8):
        step(cache, [60.0 + t])  # compacts instead of passing the context of 10
    assert rows_of(cache) == [[50.0, *range(60, 68)]] and cache.length == 9
    assert cache.keys[0].shape[2] <= 10
    step(cache, [70.0])
    with pytest.raises(GenerationError, match="context"):
        cache.reserve(1)


def test_a_forward_on_the_wrong_rows_is_refused():
    cache = prefill([1, 2])
    with pytest.raises(GenerationError, match="holds 1 rows; a forward of 2"):
        cache.append(0, torch.zeros(2, H, 1, HD), torch.zeros(2, H, 1, HD))
    with pytest.raises(GenerationError, match="columns"):
        cache.append(0, torch.zeros(1, H, 1, HD), torch.zeros(1, H, 1, HD))  # no reserve
    with pytest.raises(GenerationError, match="empty"):
        cache.join(RaggedKVCache(rows=1))
