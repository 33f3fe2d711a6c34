"""lmlab.generate / lmlab.stream: determinism, sampling filters, stopping, batching, argument checks."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.errors import GenerationError
from lmlab.generate.sampling import apply_repetition_penalty, apply_top_k, apply_top_p, next_tokens

PROMPT = [5, 17, 200, 3]
NEG = float("-inf")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return lmlab.build("gpt2", "tiny").eval()


class CharTokenizer:
    """Token i is the letter chr(97 + i % 26): enough for stop strings."""

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def new_part(out: torch.Tensor, prompt_len: int) -> list[list[int]]:
    return out[:, prompt_len:].tolist()


# -- sampling functions on known logits ---------------------------------------------------------

def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0], [0.5, -1.0, 2.0, 1.5, 3.0]])
    kept = apply_top_k(logits, 2)
    assert torch.equal(torch.isfinite(kept), torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 0, 1]]).bool())
    assert torch.equal(kept[torch.isfinite(kept)], logits[torch.isfinite(kept)])  # values untouched
    assert torch.equal(apply_top_k(logits, 0), logits)  # 0 = off
    assert torch.equal(apply_top_k(logits, 5), logits)
    assert torch.isfinite(apply_top_k(logits, 1)).sum(-1).tolist() == [1, 1]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(apply_top_p(logits, p)).int().tolist()  # noqa: E731
    assert kept(0.5) == [[1, 0, 0, 0], [0, 0, 0, 1]]   # the top token alone reaches 0.5
    assert kept(0.6) == [[1, 1, 0, 0], [0, 0, 1, 1]]
    assert kept(0.9) == [[1, 1, 1, 0], [0, 1, 1, 1]]   # 0.5 + 0.3 = 0.8 < 0.9 needs the third
    assert kept(1e-6) == [[1, 0, 0, 0], [0, 0, 0, 1]]  # the most likely token is always kept
    assert torch.equal(apply_top_p(logits, 1.0), logits)


def test_repetition_penalty_ctrl_rule():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.0]])
    seen = torch.tensor([[True, True, False, False, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    # Seen positive logits are divided, seen negative ones multiplied; unseen ones are untouched.
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0, 0.0]]
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_next_tokens_greedy_and_filtered_sampling():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.9]])
    assert next_tokens(logits, False, 1.0, None, 1.0, None).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert next_tokens(logits, True, 1.0, 1, 1.0, g).tolist() == [1, 0]
        assert next_tokens(logits, True, 5.0, 2, 1.0, g)[0].item() in (1, 2)


# -- generate / stream --------------------------------------------------------------------------

def test_greedy_is_deterministic(model):
    a = lmlab.generate(model, PROMPT, max_new_tokens=10)
    b = lmlab.generate(model, torch.tensor([PROMPT]), max_new_tokens=10, seed=99)
    assert a.shape == (1, 14)
    assert a[0, :4].tolist() == PROMPT
    assert torch.equal(a, b)


def test_seeded_sampling_is_reproducible(model):
    runs = {seed: lmlab.generate(model, PROMPT, 12, do_sample=True, seed=seed) for seed in range(4)}
    for seed, out in runs.items():
        assert torch.equal(out, lmlab.generate(model, PROMPT, 12, do_sample=True, seed=seed))
    assert len({tuple(out[0].tolist()) for out in runs.values()}) > 1


def test_top_k_one_and_tiny_top_p_equal_greedy(model):
    greedy = lmlab.generate(model, PROMPT, 10)
    for seed in (0, 1):
        assert torch.equal(lmlab.generate(model, PROMPT, 10, do_sample=True, top_k=1, seed=seed), greedy)
        assert torch.equal(lmlab.generate(model, PROMPT, 10, do_sample=True, top_p=1e-6, seed=seed),
                           greedy)


def test_repetition_penalty_avoids_repeats(model):
    out = lmlab.generate(model, PROMPT, 20, repetition_penalty=1e6)
    new = out[0, len(PROMPT):].tolist()
    # With an overwhelming penalty no seen token can win while unseen ones remain.
    assert len(set(new)) == len(new) and not set(new) & set(PROMPT)


def test_repetition_penalty_ignores_left_pads(model):
    # Pad id 0 is also a real token of the short prompt; pads must neither hide nor add a "seen" mark.
    prompts = [[7, 0, 9], [1, 2, 3, 4, 5, 6]]
    batch = lmlab.generate(model, prompts, 8, repetition_penalty=3.0, pad_token_id=0)
    for row, prompt in enumerate(prompts):
        alone = lmlab.generate(model, prompt, 8, repetition_penalty=3.0)
        assert batch[row, 6:].tolist() == alone[0, len(prompt):].tolist()


def test_repetition_penalty_counts_a_token_seen_next_to_its_pad(model):
    # Find a prompt [g, b] whose greedy next token is g itself, then hide a pad copy of g between
    # them: g is still a seen prompt token and must be penalised (a pad write must not unmark it).
    with torch.no_grad():
        for b in range(1, 64):
            pairs = torch.stack([torch.arange(256), torch.full((256,), b)], 1)
            repeats = (model(pairs).logits[:, -1].argmax(-1) == torch.arange(256)).nonzero().flatten()
            repeats = [g for g in repeats.tolist() if g != b]
            if repeats:
                break
    g = repeats[0]
    assert lmlab.generate(model, [g, b], 1)[0, -1].item() == g
    ids, mask = torch.tensor([[g, g, b]]), torch.tensor([[1, 0, 1]])
    out = lmlab.generate(model, ids, 1, attention_mask=mask, repetition_penalty=1e6, pad_token_id=g)
    assert out[0, -1].item() != g
    assert out[0, -1].item() == lmlab.generate(model, [g, b], 1, repetition_penalty=1e6)[0, -1].item()


def test_num_return_sequences_shape(model):
    out = lmlab.generate(model, PROMPT, 6, do_sample=True, num_return_sequences=3)
    assert out.shape == (3, 10)
    assert all(row[:4] == PROMPT for row in out.tolist())
    assert len({tuple(row) for row in out.tolist()}) > 1  # independent samples
    two = lmlab.generate(model, [PROMPT, [1, 2]], 5, do_sample=True, num_return_sequences=2)
    assert two.shape == (4, 9)
    assert two[0, :4].tolist() == PROMPT and two[1, :4].tolist() == PROMPT
    assert two[2, 2:4].tolist() == [1, 2] and two[3, 2:4].tolist() == [1, 2]


def expected_with_stop(free: list[list[int]], stopped_at: list[int | None], pad: int) -> list[list[int]]:
    """Rows of new tokens truncated after their stop step and padded; columns end at the last stop."""
    width = len(free[0]) if None in stopped_at else max(stopped_at) + 1
    rows = []
    for tokens, stop in zip(free, stopped_at, strict=True):
        keep = tokens[:width] if stop is None else tokens[:stop + 1]
        rows.append(keep + [pad] * (width - len(keep)))
    return rows


def test_eos_stops_and_pads(model):
    prompts = [PROMPT, [9, 8, 7, 6]]
    free = new_part(lmlab.generate(model, prompts, 12), 4)
    eos = free[0][2]
    stops = [row.index(eos) if eos in row else None for row in free]
    got = new_part(lmlab.generate(model, prompts, 12, eos_token_id=eos), 4)
    assert got == expected_with_stop(free, stops, pad=eos)
    got = new_part(lmlab.generate(model, prompts, 12, eos_token_id=eos, pad_token_id=255), 4)
    assert got == expected_with_stop(free, stops, pad=255)
    # One row alone stops the whole generation early.
    alone = lmlab.generate(model, PROMPT, 12, eos_token_id=eos)
    assert alone.shape == (1, 4 + stops[0] + 1) and alone[0, -1].item() == eos


def test_eos_none_never_stops(model):
    out = lmlab.generate(model, PROMPT, 15, eos_token_id=None)
    assert out.shape == (1, 19)


def test_stop_strings(model):
    tok = CharTokenizer()
    prompts = [PROMPT, [9, 8, 7, 6]]
    free = new_part(lmlab.generate(model, prompts, 12), 4)
    stop = tok.decode(free[0][2:4])  # completed by the fourth new token of row 0
    stops = []
    for row in free:
        hits = [i for i in range(len(row)) if stop in tok.decode(row[:i + 1])]
        stops.append(hits[0] if hits else None)
    assert stops[0] is not None and stops[0] <= 3
    got = new_part(lmlab.generate(model, prompts, 12, stop_strings=[stop], tokenizer=tok,
                                  pad_token_id=0), 4)
    assert got == expected_with_stop(free, stops, pad=0)
    with pytest.raises(GenerationError, match="tokenizer"):
        lmlab.generate(model, PROMPT, 5, stop_strings=["x"])


def test_batch_of_different_lengths_equals_each_alone(model):
    prompts = [[5, 17, 200, 3, 9, 41], [8], [100, 101, 102]]
    out = lmlab.generate(model, prompts, 10)
    width = max(len(p) for p in prompts)
    assert out.shape == (3, width + 10)
    for row, prompt in enumerate(prompts):
        alone = lmlab.generate(model, prompt, 10)
        assert out[row, width - len(prompt):].tolist() == alone[0].tolist()


def test_stream_yields_one_token_per_row_per_step(model):
    prompts = [PROMPT, [1, 2]]
    steps = list(lmlab.stream(model, prompts, max_new_tokens=7))
    assert len(steps) == 7
    assert all(isinstance(t, torch.Tensor) and t.shape == (2,) for t in steps)
    assert torch.equal(torch.stack(steps, 1), lmlab.generate(model, prompts, 7)[:, 4:])


def test_generate_restores_training_mode():
    torch.manual_seed(0)
    m = lmlab.build("gpt", "tiny")
    assert m.training
    lmlab.generate(m, PROMPT, 2)
    assert m.training


@pytest.mark.parametrize("kwargs, name", [
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.2), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(stop_strings=[""], tokenizer=CharTokenizer()), "stop strings"),
    (dict(top_k=-1), "top_k"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(num_return_sequences=0), "num_return_sequences"),
])
def test_bad_arguments(model, kwargs, name):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(GenerationError) as info:
        lmlab.generate(model, PROMPT, do_sample=True, **kwargs)
    assert name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(GenerationError):  # the streaming form checks before the first step
        next(lmlab.stream(model, PROMPT, do_sample=True, **kwargs))


def test_prompt_longer_than_context(model):
    context = model.config.max_seq_len
    with pytest.raises(GenerationError) as info:
        lmlab.generate(model, [1] * (context + 1), max_new_tokens=1)
    assert "prompt" in str(info.value) and str(context) in str(info.value)
    with pytest.raises(GenerationError) as info:  # fits alone, not with the new tokens
        lmlab.generate(model, [1] * (context - 2), max_new_tokens=5)
    assert "max_new_tokens" in str(info.value)
    assert lmlab.generate(model, [1] * (context - 2), max_new_tokens=2).shape == (1, context)


def test_bad_prompts(model):
    with pytest.raises(GenerationError):
        lmlab.generate(model, [], max_new_tokens=2)
    with pytest.raises(GenerationError):
        lmlab.generate(model, [[1, 2], []], max_new_tokens=2)
    with pytest.raises(GenerationError, match="256"):
        lmlab.generate(model, [1, 256], max_new_tokens=2)


@pytest.mark.parametrize("family", ["bert", "task model"])
def test_a_model_that_is_not_a_causal_lm_cannot_generate(family):
    from lmlab.models.heads import TaskSpec, build_task_model

    net = lmlab.build("bert", "tiny")
    if family == "task model":
        net = build_task_model(net, TaskSpec(name="classify", labels=["a", "b"], reader="pooled_cls"))
    with pytest.raises(GenerationError, match="is not a causal language model") as info:
        lmlab.generate(net, PROMPT, max_new_tokens=2)
    assert "\n" not in str(info.value)


def test_non_finite_logits_are_named_when_sampling():
    broken = lmlab.build("gpt2", "tiny").eval()
    with torch.no_grad():
        broken.blocks[0].mlp.c_fc.weight.fill_(float("nan"))
    with pytest.raises(GenerationError, match="non-finite logits"):
        lmlab.generate(broken, PROMPT, max_new_tokens=2, do_sample=True)
