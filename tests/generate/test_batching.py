"""Continuous batching (lmlab.generate.batching): requests that join a running batch at different steps
and leave it when they finish get the tokens `lmlab.generate` gives each of them alone, for every kind
of decoding state (a KV cache, Transformer-XL memory, an LSTM state)."""

from __future__ import annotations

import pytest
import torch

import lmlab
from fakes import LSTMLM, LSTMConfig
from lmlab.errors import GenerationError
from lmlab.generate.batching import BatchDecoder
from lmlab.generate.sampling import DecodeRule

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")

# (arrival step, prompt, max_new_tokens, sampling settings): prompts longer and shorter than the rows
# already running, arrivals while others finish.
SCHEDULE = [
    (0, [5, 17, 20, 3], 9, dict()),
    (0, [7], 4, dict(do_sample=True, seed=1, temperature=0.8, top_k=5)),
    (2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 6, dict(repetition_penalty=1.5)),
    (3, [9, 9], 12, dict(do_sample=True, seed=7, top_p=0.9)),
    (5, [4, 8, 15, 16, 23, 42], 5, dict(num_return_sequences=3, do_sample=True, seed=3)),
    (9, [2], 7, dict()),
]


def settings(options: dict) -> dict:
    return dict(do_sample=False, temperature=1.0, top_k=None, top_p=1.0, repetition_penalty=1.0, seed=0,
                num_return_sequences=1) | options


def run_schedule(model, schedule, eos=None, together=True):
    """Drive a BatchDecoder the way the server does: {request index: generated rows (n, new)}."""
    batch = BatchDecoder(model)
    device = next(model.parameters()).device
    live, logits, out, step = {}, {}, {}, 0
    while len(out) < len(schedule):
        arrivals = {}
        for key, (arrive, prompt, max_new, options) in enumerate(schedule):
            if arrive == step:
                o = settings(options)
                ids = torch.tensor([prompt] * o["num_return_sequences"])
                generator = torch.Generator(device=device).manual_seed(o["seed"]) if o["do_sample"] else None
                rule = DecodeRule(ids, None, o["do_sample"], o["temperature"], o["top_k"], o["top_p"],
                                  o["repetition_penalty"], eos, generator, pad=0)
                live[key] = (rule, max_new, [])
                arrivals[key] = ids
        # Prompts arriving together are read together (one left-padded forward for a KV cache).
        if together:
            logits.update(batch.add_many(arrivals))
        else:
            logits.update({k: batch.add(k, v) for k, v in arrivals.items()})
        feed = {}
        for key, (rule, max_new, produced) in list(live.items()):
            token = rule.pick(logits[key])
            produced.append(token.tolist())
            if rule.observe(token) or len(produced) == max_new:
                out[key] = torch.tensor(produced).T
                del live[key]
                batch.remove(key)
            else:
                feed[key] = token.tolist()
        assert batch.rows == sum(r.ids.shape[0] for r, _, _ in live.values())
        logits = batch.step(feed)
        step += 1
    assert batch.rows == 0 and batch.nbytes == 0  # every row left, the buffers are freed
    return out


def expected(model, schedule, eos=None):
    out = {}
    for key, (_, prompt, max_new, options) in enumerate(schedule):
        ids = lmlab.generate(model, [prompt], max_new_tokens=max_new, eos_token_id=eos, **settings(options))
        out[key] = ids[:, len(prompt):]
    return out


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return lmlab.build("gpt2", "tiny", max_seq_len=32).eval()


def test_kv_cache_rows_joining_and_leaving_get_generates_tokens(gpt2):
    model = gpt2.double()  # float64: batched and single-row matmuls agree to ~1e-15, no near-tie can flip
    try:
        got, want = run_schedule(model, SCHEDULE), expected(model, SCHEDULE)
    finally:
        gpt2.float()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_the_character_transformer_batches_too():
    """A position table in every layer: each layer reads the positions counted over real tokens."""
    torch.manual_seed(0)
    model = lmlab.build("char-transformer", "tiny", max_seq_len=32).eval().double()
    got, want = run_schedule(model, SCHEDULE), expected(model, SCHEDULE)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_kv_cache_in_float32_too(gpt2):
    got, want = run_schedule(gpt2, SCHEDULE), expected(gpt2, SCHEDULE)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_end_of_text_stops_a_request_and_frees_its_rows(gpt2):
    # A greedy continuation of a random model soon repeats: use its most frequent token as "eos".
    schedule = [(0, [5, 17, 20, 3], 20, dict()), (1, [3, 3, 3], 20, dict(do_sample=True, seed=2))]
    free = expected(gpt2, schedule)
    eos = int(free[0][0, 3])
    got, want = run_schedule(gpt2, schedule, eos), expected(gpt2, schedule, eos)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert got[0].shape[1] <= 4  # stopped at (or before) the eos it was given


def test_prompts_read_one_by_one_give_the_same_tokens(gpt2):
    model = gpt2.double()
    try:
        got, want = run_schedule(model, SCHEDULE, together=False), expected(model, SCHEDULE)
    finally:
        gpt2.float()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_row_alone_gets_bitwise_the_logits_of_the_model(gpt2):
    batch = BatchDecoder(gpt2)
    prompt = torch.tensor([[5, 17, 20, 3]])
    with torch.no_grad():
        full = gpt2(torch.tensor([[5, 17, 20, 3, 8, 1]])).logits[0]
    torch.testing.assert_close(batch.add("a", prompt)[0], full[3], rtol=0, atol=1e-6)
    torch.testing.assert_close(batch.step({"a": [8]})["a"][0], full[4], rtol=0, atol=1e-6)
    # Beside a longer row that joined later (the first row is now left-padded): the same numbers.
    batch.add("b", torch.tensor([[2] * 9]))
    out = batch.step({"a": [1], "b": [4]})
    torch.testing.assert_close(out["a"][0], full[5], rtol=0, atol=1e-5)


def test_the_frontier_stays_within_the_context(gpt2):
    """Rows come and go for longer than the context: the cache compacts, no row ever sees more than its
    own tokens, and the batch never asks the model for a position past max_seq_len (32)."""
    model = gpt2.double()
    try:
        schedule = [(4 * i, [1 + i, 2, 3, 4, 5][: 1 + i % 5], 10 + i % 7, dict()) for i in range(12)]
        got, want = run_schedule(model, schedule), expected(model, schedule)
    finally:
        gpt2.float()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_transformer_xl_memory_rows():
    torch.manual_seed(0)
    model = lmlab.build("transfo-xl", "tiny").double().eval()
    t = model.config.tgt_len
    schedule = [(0, list(range(1, t + 5)), 6, dict()), (0, [3, 1, 4], 8, dict(do_sample=True, seed=4)),
                (2, [2, 7, 1, 8, 2], 5, dict()), (3, [6], 9, dict(repetition_penalty=1.3))]
    got, want = run_schedule(model, schedule), expected(model, schedule)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_recurrent_state_rows(register_family):
    register_family("test-lstm", LSTMLM, config=LSTMConfig, state="rnn")
    torch.manual_seed(0)
    model = LSTMLM(LSTMConfig()).double().eval()
    model.family = "test-lstm"
    schedule = [(0, [3, 1, 4, 1, 5], 8, dict()), (1, [2, 7], 6, dict(do_sample=True, seed=5)),
                (2, [9, 9, 9, 9, 9, 9, 9], 4, dict(num_return_sequences=2, do_sample=True, seed=6))]
    got, want = run_schedule(model, schedule), expected(model, schedule)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_wrong_use_is_a_generation_error(gpt2):
    batch = BatchDecoder(gpt2)
    batch.add("a", [[1, 2]])
    with pytest.raises(GenerationError, match="already in the batch"):
        batch.add("a", [[1]])
    with pytest.raises(GenerationError, match="every request"):
        batch.step({})
    with pytest.raises(GenerationError, match="longer than the model's context"):
        batch.add("b", [[1] * 33])
    with pytest.raises(GenerationError, match="not a causal language model"):
        BatchDecoder(lmlab.build("bert", "tiny"))
