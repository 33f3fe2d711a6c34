"""Samplers: exact resume, rank slices of one global batch, evaluation windows cover each target once."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.data.sampler import BidirectionalStreams, ContiguousStreams, RandomWindowSampler, SequentialWindows
from lmlab.data.shards import open_shard, write_shard
from lmlab.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    ids = np.random.default_rng(1).integers(0, 300, size=20_000)
    return open_shard(write_shard(tmp_path_factory.mktemp("s") / "train.bin", ids, vocab_size=300))


def test_windows_are_shard_slices_and_y_is_x_shifted(shard):
    sampler = RandomWindowSampler(shard, seq_len=16, batch_size=8, seed=3)
    x, y = next(sampler)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    starts = sampler.offsets(0)
    for row, s in enumerate(starts):
        assert x[row].tolist() == shard.tokens[s : s + 16].tolist()
        assert y[row].tolist() == shard.tokens[s + 1 : s + 17].tolist()
    assert starts.min() >= 0 and starts.max() <= len(shard) - 17


def test_last_offset_reachable_on_tiny_shard(tmp_path):
    tiny = open_shard(write_shard(tmp_path / "t.bin", [1, 2, 3, 4, 5], vocab_size=10))
    sampler = RandomWindowSampler(tiny, seq_len=3, batch_size=64, seed=0)
    assert set(sampler.offsets(0).tolist()) == {0, 1}  # 5 tokens hold windows of 4 at 0 and 1


def test_windows_with_the_tokens_two_ahead(shard, tmp_path):
    sampler = RandomWindowSampler(shard, seq_len=16, batch_size=8, seed=3, ahead=2)
    x, y, y2 = next(sampler)
    for row, s in enumerate(sampler.offsets(0)):
        assert x[row].tolist() == shard.tokens[s : s + 16].tolist()
        assert y[row].tolist() == shard.tokens[s + 1 : s + 17].tolist()
        assert y2[row].tolist() == shard.tokens[s + 2 : s + 18].tolist()
    tiny = open_shard(write_shard(tmp_path / "t.bin", [1, 2, 3, 4, 5], vocab_size=10))
    assert set(RandomWindowSampler(tiny, seq_len=2, batch_size=64, ahead=2).offsets(0).tolist()) == {0, 1}
    with pytest.raises(DataError, match="has 5 tokens, fewer than seq_len \\+ 2 = 6"):
        RandomWindowSampler(tiny, seq_len=4, batch_size=4, ahead=2)
    state = sampler.state_dict()
    with pytest.raises(DataError, match="ahead=2 but this run has ahead=1"):
        RandomWindowSampler(shard, seq_len=16, batch_size=8).load_state_dict(state)


def test_resume_gives_the_same_next_batches(shard):
    a = RandomWindowSampler(shard, seq_len=32, batch_size=4, seed=7)
    for _ in range(5):
        next(a)
    state = a.state_dict()
    assert all(isinstance(v, (int, str)) for v in state.values())
    expected = [next(a) for _ in range(3)]

    b = RandomWindowSampler(shard, seq_len=32, batch_size=4, seed=999)  # the state's seed wins
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, [next(b) for _ in range(3)], strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_different_seeds_and_steps_differ(shard):
    a = RandomWindowSampler(shard, seq_len=32, batch_size=4, seed=1)
    b = RandomWindowSampler(shard, seq_len=32, batch_size=4, seed=2)
    assert not torch.equal(next(a)[0], next(b)[0])
    assert not torch.equal(a.batch(5)[0], a.batch(6)[0])


def test_two_ranks_concatenate_to_one_rank_batch(shard):
    one = RandomWindowSampler(shard, seq_len=24, batch_size=6, seed=5)
    ranks = [RandomWindowSampler(shard, seq_len=24, batch_size=6, seed=5, rank=r, world_size=2)
             for r in range(2)]
    for _ in range(3):
        x, y = next(one)
        parts = [next(r) for r in ranks]
        assert parts[0][0].shape == (3, 24)
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_resume_with_another_world_size(shard):
    one = RandomWindowSampler(shard, seq_len=8, batch_size=4, seed=0)
    next(one)
    state = one.state_dict()
    x, _ = next(one)
    halves = []
    for r in range(2):
        s = RandomWindowSampler(shard, seq_len=8, batch_size=4, seed=0, rank=r, world_size=2)
        s.load_state_dict(state)
        halves.append(next(s)[0])
    assert torch.equal(torch.cat(halves), x)


def test_state_mismatch_refused(shard):
    state = RandomWindowSampler(shard, seq_len=8, batch_size=4, seed=0).state_dict()
    other = RandomWindowSampler(shard, seq_len=16, batch_size=4, seed=0)
    with pytest.raises(DataError, match="seq_len=8 but this run has seq_len=16"):
        other.load_state_dict(state)


def test_bad_arguments(shard, tmp_path):
    with pytest.raises(ConfigError, match="not divisible"):
        RandomWindowSampler(shard, seq_len=8, batch_size=5, seed=0, rank=0, world_size=2)
    with pytest.raises(ConfigError, match="rank 2"):
        RandomWindowSampler(shard, seq_len=8, batch_size=4, seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="seed"):
        RandomWindowSampler(shard, seq_len=8, batch_size=4, seed=-1)
    short = open_shard(write_shard(tmp_path / "short.bin", [1] * 8, vocab_size=4))
    with pytest.raises(DataError, match=r"short\.bin has 8 tokens, fewer than seq_len \+ 1 = 9"):
        RandomWindowSampler(short, seq_len=8, batch_size=1, seed=0)


def test_contiguous_streams_continue_row_by_row(shard):
    s = ContiguousStreams(shard, seq_len=50, batch_size=4)
    x0, y0 = next(s)
    assert s.reset_state
    x1, y1 = next(s)
    assert not s.reset_state
    assert torch.equal(x1[:, 0], y0[:, -1])  # each row picks up where it stopped
    stream = len(shard) // 4
    assert x0[:, 0].tolist() == [int(shard.tokens[b * stream]) for b in range(4)]
    for _ in range(s.steps_per_epoch - 2):
        next(s)
    x2, _ = next(s)
    assert s.reset_state and s.epoch == 1 and torch.equal(x2, x0)


def test_contiguous_streams_ranks_and_resume(shard):
    one = ContiguousStreams(shard, seq_len=20, batch_size=4)
    two = [ContiguousStreams(shard, seq_len=20, batch_size=4, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x, _ = next(one)
        assert torch.equal(torch.cat([next(t)[0] for t in two]), x)
    state = one.state_dict()
    again = ContiguousStreams(shard, seq_len=20, batch_size=4)
    again.load_state_dict(state)
    assert torch.equal(next(again)[0], next(one)[0])


def test_bidirectional_streams_read_the_corpus_both_ways(shard):
    tokens = np.asarray(shard.tokens)
    s = BidirectionalStreams(shard, seq_len=20, batch_size=4)
    forward = ContiguousStreams(shard, seq_len=20, batch_size=4)
    backward = ContiguousStreams(tokens[::-1].copy(), seq_len=20, batch_size=4)
    for _ in range(3):
        x, y, xb, yb = next(s)
        assert all(torch.equal(a, b) for a, b in zip((x, y, xb, yb), (*next(forward), *next(backward)),
                                                     strict=True))
    stream = len(tokens) // 4
    assert xb[:, 0].tolist() == [int(tokens[-1 - b * stream - 2 * 20]) for b in range(4)]
    where = len(tokens) - 1 - (b := 1) * stream - 2 * 20 - 5  # position of xb[1, 5] in the corpus
    assert int(xb[b, 5]) == int(tokens[where]) and int(yb[b, 5]) == int(tokens[where - 1])  # the word before
    again = BidirectionalStreams(shard, seq_len=20, batch_size=4)
    again.load_state_dict(s.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(next(again), next(s), strict=True))
    assert s.state_dict()["kind"] == "bidirectional_streams"


def _scored_targets(shard, windows):
    positions = []
    for x, y, mask in windows:
        assert x.shape == y.shape == mask.shape
        positions.extend(y[mask].tolist())
    return positions


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), seq_len=st.integers(1, 64), data=st.data())
def test_sequential_windows_score_each_target_once(n, seq_len, data):
    stride = data.draw(st.integers(1, seq_len))
    batch_size = data.draw(st.integers(1, 5))
    tokens = np.arange(n, dtype=np.int64)  # the token value is its position
    windows = SequentialWindows(tokens, seq_len, stride=stride, batch_size=batch_size)
    batches = list(windows)
    assert len(batches) == len(windows)
    scored = _scored_targets(tokens, batches)
    assert sorted(scored) == list(range(1, n)) and windows.num_targets == n - 1
    for x, y, _ in batches:
        assert torch.equal(y[:, :-1], x[:, 1:])
        assert x.shape[1] == min(seq_len, n - 1)


def test_sliding_windows_keep_context_and_split_across_ranks():
    tokens = np.arange(101)
    windows = list(SequentialWindows(tokens, seq_len=10, stride=4))
    x, _, mask = windows[1]
    assert mask[0].tolist() == [False] * 6 + [True] * 4  # 6 tokens of context, 4 scored
    parts = [SequentialWindows(tokens, 10, stride=4, batch_size=3, rank=r, world_size=3) for r in range(3)]
    together = sorted(t for p in parts for t in _scored_targets(tokens, p))
    assert together == list(range(1, 101))
