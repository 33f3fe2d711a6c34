"""`lmlab.generate(..., compile=True)`: fixed-shape decoding steps (lmlab.generate.compiled).

On CPU the fixed-shape step runs uncompiled, so these tests check the step itself against the eager
path (the oracle): the same tokens, greedy and sampled, with left padding, across reused buffers; and
that torch.compile traces it as one graph (what the CUDA path compiles and captures).
"""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.generate import compiled, left_pad
from lmlab.generate.loop import state_steps

PROMPTS = [[5, 17, 200, 3, 9, 41, 77], [8], [100, 101, 102, 250]]  # different lengths -> left pads


pytestmark = pytest.mark.usefixtures("one_thread_private_cache")  # tests/conftest.py


@pytest.fixture(scope="module", params=["gpt", "gpt2"])
def model(request):
    torch.manual_seed(0)
    return lmlab.build(request.param, "tiny").eval()


@pytest.mark.parametrize("prompts", [[5, 17, 200, 3], PROMPTS], ids=["one", "padded"])
def test_greedy_tokens_equal_the_eager_path(model, prompts):
    want = lmlab.generate(model, prompts, max_new_tokens=40)
    got = lmlab.generate(model, prompts, max_new_tokens=40, compile=True)
    assert torch.equal(got, want)


def test_sampling_and_options_equal_the_eager_path(model):
    options = dict(max_new_tokens=25, do_sample=True, top_k=20, top_p=0.9, temperature=0.8,
                   repetition_penalty=1.3, num_return_sequences=2, seed=3)
    want = lmlab.generate(model, PROMPTS, **options)
    assert torch.equal(lmlab.generate(model, PROMPTS, compile=True, **options), want)


def test_step_logits_match_and_buffers_are_reused(model):
    decoder_ids = set()
    for prompts in (PROMPTS, [[9, 9, 9], [1, 2], [250] * 6]):  # the second call reuses the buffers
        want = list(lmlab.stream(model, prompts, max_new_tokens=12))
        got = list(lmlab.stream(model, prompts, max_new_tokens=12, compile=True))
        assert [t.tolist() for t in got] == [t.tolist() for t in want]
        decoder_ids.add(id(compiled._DECODERS[model][1]))
    assert len(decoder_ids) == 1  # same batch and slot count: one set of buffers

    ids, mask = left_pad(PROMPTS, 0, "cpu")
    eager_logits, eager_step = state_steps(model, ids, mask, 8)
    static_logits, static_step = compiled.static_cache_steps(model, ids, mask, 8)
    for _ in range(7):
        torch.testing.assert_close(static_logits, eager_logits, atol=1e-5, rtol=1e-5)
        token = eager_logits.argmax(-1)
        eager_logits, static_logits = eager_step(token), static_step(token)


def test_the_step_is_one_graph_for_torch_compile(model):
    """fullgraph=True fails on any graph break; aot_eager also functionalizes the in-place writes."""
    decoder = compiled.StaticDecoder(model, 3, 64)
    step = torch.compile(decoder.forward, fullgraph=True, dynamic=False, backend="aot_eager")
    ids, mask = left_pad(PROMPTS, 0, "cpu")
    with torch.inference_mode():
        decoder.prefill(model, ids, mask)
        decoder.token.copy_(torch.tensor([1, 2, 3]))
        want = decoder.forward(model)
        decoder.prefill(model, ids, mask)
        decoder.token.copy_(torch.tensor([1, 2, 3]))
        got = step(model)
    torch.testing.assert_close(got, want)
    assert decoder.index.tolist() == [ids.shape[1] + 1]


def test_slot_count_rounds_up_within_the_context():
    assert compiled.slots_for(288, 1024) == 320
    assert compiled.slots_for(64, 1024) == 64
    assert compiled.slots_for(1000, 1024) == 1024
    assert compiled.slots_for(100, 120) == 120


def test_other_models_ignore_compile():
    torch.manual_seed(0)
    model = lmlab.build("transfo-xl", "tiny").eval()
    prompt = [[3, 4, 5, 6]]
    assert torch.equal(lmlab.generate(model, prompt, max_new_tokens=6, compile=True),
                       lmlab.generate(model, prompt, max_new_tokens=6))
