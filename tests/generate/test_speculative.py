"""Speculative decoding: any draft gives the tokens of plain greedy decoding, a good draft in fewer
forwards of the model; the int8 draft is close to its model and shares its other tensors."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import lmlab
from lmlab.cli import main
from lmlab.errors import GenerationError, LmlabError
from lmlab.generate import quantized_draft
from lmlab.generate.cli import generate_command
from lmlab.nn.layers import Linear
from lmlab.nn.quantized import Int8Linear, int8_available
from lmlab.tokenizers.chars import CharTokenizer

PROMPTS = [[5, 17, 200, 3, 9, 41, 77], [8], [100, 101, 102, 250]]  # different lengths -> left pads
needs_int8 = pytest.mark.skipif(not int8_available(), reason="PyTorch build without fbgemm int8 kernels")


def tiny(family="gpt2", seed=0, **overrides):
    torch.manual_seed(seed)
    return lmlab.build(family, "tiny", **overrides).eval()


def make_draft(kind: str, model):
    if kind == "int8":
        return quantized_draft(model)
    if kind == "copy":  # the same weights: every proposal is right
        return copy.deepcopy(model)
    return tiny("gpt2", seed=1, n_layers=1)  # another model: most proposals are wrong


@pytest.mark.parametrize("family", ["gpt", "gpt2"])
@pytest.mark.parametrize("kind", [pytest.param("int8", marks=needs_int8), "copy", "other"])
@pytest.mark.parametrize("draft_tokens", [1, 3, 8])
def test_any_draft_gives_the_greedy_tokens(family, kind, draft_tokens):
    model = tiny(family)
    plain = lmlab.generate(model, PROMPTS, max_new_tokens=20)
    fast = lmlab.generate(model, PROMPTS, max_new_tokens=20, draft_model=make_draft(kind, model),
                          draft_tokens=draft_tokens)
    assert torch.equal(fast, plain)


@pytest.mark.parametrize("new", [1, 2, 5, 21])
def test_a_perfect_draft_scores_k_plus_one_tokens_per_forward(new):
    model, calls, k = tiny(), [], 4
    draft = copy.deepcopy(model)
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    out = lmlab.generate(model, [PROMPTS[0]], max_new_tokens=new, draft_model=draft, draft_tokens=k)
    # The prompt's forward gives the first token; each later forward gives k + 1 (the last one fewer).
    assert len(calls) == 1 + -(-(new - 1) // (k + 1))
    assert torch.equal(out, lmlab.generate(model, [PROMPTS[0]], max_new_tokens=new))


def test_stopping_and_repetition_penalty_match_plain_decoding():
    model = tiny()
    plain = lmlab.generate(model, PROMPTS, max_new_tokens=24, repetition_penalty=1.3)
    eos = int(plain[0, len(PROMPTS[0]) + 5])  # the first row stops after 6 new tokens
    options = dict(max_new_tokens=24, repetition_penalty=1.3, eos_token_id=eos, pad_token_id=0)
    expected = lmlab.generate(model, PROMPTS, **options)
    got = lmlab.generate(model, PROMPTS, draft_model=copy.deepcopy(model), draft_tokens=3, **options)
    assert torch.equal(got, expected)
    streamed = list(lmlab.stream(model, PROMPTS, draft_model=tiny(seed=2), **options))
    assert torch.equal(torch.stack(streamed, 1), expected[:, -len(streamed):])


def test_a_stopped_row_does_not_end_the_rounds_of_the_others():
    model, calls, k, new = tiny(), [], 4, 21
    draft = copy.deepcopy(model)
    plain = lmlab.generate(model, PROMPTS, max_new_tokens=new)
    eos = int(plain[0, len(PROMPTS[0]) + 2])  # the first row stops after 3 of 21 tokens, the others go on
    assert not (plain[1:, -new:] == eos).any()
    options = dict(max_new_tokens=new, eos_token_id=eos, pad_token_id=0)
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    got = lmlab.generate(model, PROMPTS, draft_model=draft, draft_tokens=k, **options)
    assert len(calls) == 1 + -(-(new - 1) // (k + 1))  # as without the stop: the pads are not compared
    assert torch.equal(got, lmlab.generate(model, PROMPTS, **options))


def test_generation_leaves_both_models_in_their_modes():
    model, draft = tiny().train(), tiny(seed=1).train()
    lmlab.generate(model, [PROMPTS[0]], max_new_tokens=3, draft_model=draft)
    assert model.training and draft.training


@needs_int8
def test_int8_linear_is_close_to_float():
    torch.manual_seed(0)
    weight, bias, x = torch.randn(96, 64) * 0.05, torch.randn(96) * 0.1, torch.randn(2, 5, 64)
    exact = torch.nn.functional.linear(x, weight, bias)
    approx = Int8Linear(weight, bias)(x)
    assert approx.shape == (2, 5, 96)
    assert (approx - exact).abs().max() < 0.02 * exact.abs().max()  # ~1% of the scale, not exact
    assert not torch.allclose(approx, exact, atol=1e-6)


@needs_int8
def test_quantized_draft_shares_the_rest_and_leaves_the_model_alone():
    model = tiny()
    before = lmlab.generate(model, PROMPTS, max_new_tokens=8)
    draft = quantized_draft(model)
    assert draft.wte.weight is model.wte.weight and draft.ln_f.weight is model.ln_f.weight
    assert not any(isinstance(m, Linear) for m in draft.modules())
    assert isinstance(draft.lm_head, Int8Linear) and isinstance(draft.blocks[0].mlp.c_fc, Int8Linear)
    assert all(isinstance(b.attn.c_attn, Linear) for b in model.blocks)  # the model keeps float layers
    assert torch.equal(lmlab.generate(model, PROMPTS, max_new_tokens=8), before)
    # The draft on its own is an approximation of the model: close logits, mostly the same argmax.
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        exact, approx = model(ids).logits, draft(ids).logits
    assert (approx - exact).abs().max() < 0.05 * exact.abs().max()
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.7


@pytest.mark.parametrize("options, message", [
    (dict(do_sample=True), "greedy decoding only"),
    (dict(compile=True), "cannot be combined"),
    (dict(draft_tokens=0), "draft_tokens must be >= 1"),
])
def test_bad_options_are_one_line_errors(options, message):
    model = tiny()
    with pytest.raises(GenerationError, match=message):
        lmlab.generate(model, [PROMPTS[0]], max_new_tokens=4, draft_model=tiny(seed=1), **options)


def test_draft_must_fit_the_model():
    model = tiny()
    with pytest.raises(GenerationError, match="must share the vocabulary"):
        lmlab.generate(model, [PROMPTS[0]], max_new_tokens=4, draft_model=tiny(vocab_size=300))
    with pytest.raises(GenerationError, match="draft model's context"):
        lmlab.generate(model, [PROMPTS[0]], max_new_tokens=40, draft_model=tiny(max_seq_len=32))
    with pytest.raises(GenerationError, match="a draft with a KV cache"):
        lmlab.generate(model, [PROMPTS[0]], max_new_tokens=4, draft_model=lmlab.build("transfo-xl", "tiny"))
    with pytest.raises(GenerationError, match="a causal LM with a KV cache"):
        quantized_draft(lmlab.build("bert", "tiny"))
    with pytest.raises(GenerationError, match="needs a float32 model .* got torch.bfloat16"):
        quantized_draft(tiny().to(torch.bfloat16))


@needs_int8
def test_cli_draft_prints_the_greedy_text(tmp_path):
    tokenizer = CharTokenizer.train(["the quick brown fox jumps over the lazy dog\n"])
    lmlab.save(tiny(vocab_size=tokenizer.vocab_size), tokenizer, tmp_path / "m")
    texts = {}
    for draft in (None, "int8", str(tmp_path / "m")):
        out = io.StringIO()
        texts[draft] = generate_command(str(tmp_path / "m"), "the ", max_new_tokens=12, do_sample=False,
                                        stop_at_eos=False, draft=draft, out=out)
        assert out.getvalue().rstrip("\n") == texts[draft][0]
    assert texts["int8"] == texts[None] == texts[str(tmp_path / "m")]
    assert main(["generate", str(tmp_path / "m"), "--prompt", "the ", "--draft", "int8"]) == 2  # not greedy
    with pytest.raises(LmlabError, match="greedy"):
        generate_command(str(tmp_path / "m"), "the ", do_sample=True, draft="int8", out=io.StringIO())


def test_without_int8_kernels_the_draft_is_a_one_line_error(monkeypatch):
    import lmlab.nn.quantized as quantized

    monkeypatch.setattr(quantized, "int8_available", lambda: False)
    with pytest.raises(LmlabError, match="quantized kernels .* does not have"):
        quantized_draft(tiny())
