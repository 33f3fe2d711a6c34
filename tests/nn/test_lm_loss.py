"""The chunked linear cross-entropy against F.cross_entropy(hidden @ W.T): values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.errors import LmlabError
from lmlab.nn import lm_loss
from lmlab.nn.lm_loss import linear_cross_entropy, linear_nll, token_nll
from lmlab.objectives.clm import clm_loss

N, D, V = 37, 8, 50


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    # 3 rows per chunk: every test crosses many chunk boundaries, and a ragged last chunk.
    monkeypatch.setitem(lm_loss.CHUNK_ELEMENTS, "cpu", 3 * V)


def inputs(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, D, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[[0, 5, 6, 30]] = -100
    return hidden, weight, targets


def test_loss_and_gradients_match_cross_entropy():
    hidden, weight, targets = inputs()
    got = linear_cross_entropy(hidden, weight, targets)
    want = F.cross_entropy(hidden @ weight.T, targets)
    # A non-unit upstream gradient (gradient accumulation divides the loss) must scale both grads.
    g_got = torch.autograd.grad(got * 0.3, (hidden, weight))
    g_want = torch.autograd.grad(want * 0.3, (hidden, weight))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert g_got[0][[0, 5, 6, 30]].abs().max() == 0  # ignored rows get no gradient


def test_padded_weight_rows_are_masked_out():
    hidden, weight, targets = inputs(2)
    padded = F.pad(weight, (0, 0, 0, 14))  # 64 rows, 50 real
    got = linear_cross_entropy(hidden, padded, targets, vocab=V)
    want = F.cross_entropy(hidden @ weight.T, targets)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    g_got = torch.autograd.grad(got, (hidden, weight))
    g_want = torch.autograd.grad(want, (hidden, weight))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    nll = linear_nll(hidden, padded, targets, vocab=V)
    torch.testing.assert_close(nll, F.cross_entropy(hidden @ weight.T, targets, reduction="none").detach())


def test_only_the_inputs_that_need_a_gradient_get_one():
    hidden, weight, targets = inputs(3)
    frozen = weight.detach()
    loss = linear_cross_entropy(hidden, frozen, targets)
    (grad,) = torch.autograd.grad(loss, hidden)
    (want,) = torch.autograd.grad(F.cross_entropy(hidden @ frozen.T, targets), hidden)
    torch.testing.assert_close(grad, want)
    with torch.no_grad():  # no gradient wanted at all: the value alone
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets),
                                   F.cross_entropy(hidden @ weight.T, targets))


@pytest.mark.parametrize("weighting", ["uniform", "sum", "rows"])
def test_per_token_nll_gradients_for_any_weighting_of_the_rows(weighting):
    """Objectives reduce the per-token losses: a mean (the precomputed case), another uniform scale,
    or rows weighted differently (recomputed) all give the logits path's gradients."""
    hidden, weight, targets = inputs(7)
    g = torch.Generator().manual_seed(3)
    weights = {"uniform": torch.full((N,), 0.25, dtype=torch.float64),
               "sum": torch.ones(N, dtype=torch.float64),
               "rows": torch.rand(N, generator=g, dtype=torch.float64)}[weighting]
    nll = token_nll(hidden, weight, targets)
    want_nll = F.cross_entropy(hidden @ weight.T, targets, reduction="none")
    torch.testing.assert_close(nll, want_nll, rtol=0, atol=1e-12)
    got = torch.autograd.grad((nll * weights).sum(), (hidden, weight))
    want = torch.autograd.grad((want_nll * weights).sum(), (hidden, weight))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_every_target_ignored_gives_zero_not_nan():
    hidden, weight, targets = inputs(4)
    loss = linear_cross_entropy(hidden, weight, torch.full_like(targets, -100))
    loss.backward()
    assert loss.item() == 0 and hidden.grad.abs().max() == 0


def test_bf16_autocast_matches_the_plain_path():
    hidden, weight, targets = inputs(5)
    hidden, weight = (t.detach().float().requires_grad_() for t in (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(hidden, weight, targets)
        want = F.cross_entropy((hidden @ weight.T).float(), targets)
        g_got = torch.autograd.grad(got, (hidden, weight))
        g_want = torch.autograd.grad(want, (hidden, weight))
    assert got.dtype == torch.float32 and g_got[0].dtype == g_got[1].dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("family", ["gpt", "gpt2"])
def test_model_targets_path_equals_logits_path(family):
    """clm_loss (the mean of model(x, targets=y).nll) and its gradients = cross-entropy of
    model(x).logits (tied weights)."""
    torch.manual_seed(0)
    model = lmlab.build(family, "tiny", dropout=0.0).double()
    x = torch.randint(0, 256, (3, 20))
    y = torch.roll(x, -1, 1)
    y[:, -1] = -100
    loss = clm_loss(model, (x, y))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    logits = model(x).logits
    want = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(loss, want, rtol=0, atol=1e-10)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    with torch.no_grad():  # evaluation: per-token losses too, and logits_to_keep scores the tail
        out = model(x, targets=y)
        torch.testing.assert_close(out.nll, F.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                                            reduction="none").view(3, 20).detach())
        tail = model(x, targets=y[:, -5:], logits_to_keep=5)
        torch.testing.assert_close(tail.nll, out.nll[:, -5:])
        assert out.logits is None
        states = model(x, targets=y, output_hidden_states=True).hidden_states
        assert isinstance(states, tuple) and len(states) == model.config.n_layers + 1


@pytest.mark.parametrize("family", ["gpt", "gpt2"])
@pytest.mark.parametrize("frozen_embedding", [False, True])
def test_backward_accumulates_the_logits_path_gradients(family, frozen_embedding):
    """CPU training looks tokens up with a sparse gradient, added into the output layer's dense one:
    .grad stays dense and equals the logits path's, across two accumulated backward calls (GPT's
    segment ids use the token table too). A frozen table gets no gradient at all."""
    torch.manual_seed(0)
    model = lmlab.build(family, "tiny", dropout=0.0).double()
    model.wte.weight.requires_grad_(not frozen_embedding)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 256, (2, 12), generator=g), torch.randint(0, 256, (2, 12), generator=g))
               for _ in range(2)]
    segments = torch.randint(0, 256, (2, 12), generator=g) if family == "gpt" else None

    def run(loss_of):
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            (loss_of(x, y) / 2).backward()
        return {name: p.grad for name, p in model.named_parameters()}

    got = run(lambda x, y: model(x, token_type_ids=segments, targets=y).nll.mean())
    want = run(lambda x, y: F.cross_entropy(model(x, token_type_ids=segments).logits.flatten(0, 1),
                                            y.flatten()))
    assert (got["wte.weight"] is None) == frozen_embedding
    for name, grad in got.items():
        if grad is not None:
            assert grad.layout == torch.strided, name
            torch.testing.assert_close(grad, want[name], rtol=0, atol=1e-10)


def test_targets_of_the_wrong_shape_are_one_clear_error():
    model = lmlab.build("gpt2", "tiny")
    x = torch.randint(0, 256, (2, 8))
    with pytest.raises(LmlabError, match=r"targets have shape \(2, 7\); expected \(2, 8\)"):
        model(x, targets=x[:, 1:])


def test_a_second_backward_through_a_retained_graph_is_one_clear_error():
    hidden, weight, targets = inputs(6)
    loss = linear_cross_entropy(hidden, weight, targets) * 0.5
    torch.autograd.grad(loss, (hidden, weight), retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward through the same loss"):
        torch.autograd.grad(loss, (hidden, weight))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_padded_output_matrix_gives_the_logits_path_loss_and_gradients(compiled):
    """On GPU the targets path pads 50,257 rows to 50,304; fp32 results equal the logits path's."""
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", vocab_size=50257, dropout=0.0).cuda()
    x = torch.randint(0, 50257, (2, 64), device="cuda")
    y = torch.roll(x, -1, 1)

    def run(a, b):
        return clm_loss(model, (a, b))
    run = torch.compile(run) if compiled else run
    loss = run(x, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    want = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # bf16: close to the plain path, not equal
        assert abs(run(x, y).item() - want.item()) < 2e-2


def test_compiled_model_takes_the_fused_logits_path_with_the_same_result():
    """Under torch.compile the model hands the loss to inductor (logits + cross-entropy in one graph)."""
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", dropout=0.0).double()
    x = torch.randint(0, 256, (2, 16))
    y = torch.roll(x, -1, 1)
    y[0, 3] = -100
    compiled = torch.compile(lambda a, b: clm_loss(model, (a, b)), backend="eager", fullgraph=True)
    got = compiled(x, y)
    grads = torch.autograd.grad(got, list(model.parameters()))
    want = clm_loss(model, (x, y))
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("compiled", [False, True])
def test_padded_output_matrix_changes_nothing_but_the_shapes(monkeypatch, compiled):
    """The GPU's padding (output rows up to a multiple of 64, left out of the softmax), run on CPU:
    float64 loss and gradients equal the plain logits path's, compiled (sliced logits) or not."""
    monkeypatch.setattr(lm_loss, "PAD_OUTPUT_ON", {"cpu"})
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", vocab_size=250, dropout=0.0).double()
    x = torch.randint(0, 250, (2, 16))
    y = torch.roll(x, -1, 1)
    y[1, 5] = -100

    def run(a, b):
        return clm_loss(model, (a, b))
    run = torch.compile(run, backend="eager", fullgraph=True) if compiled else run
    got = run(x, y)
    grads = torch.autograd.grad(got, list(model.parameters()))
    want = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
