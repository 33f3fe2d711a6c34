"""LSTMP layer, stack and padded-batch runner (lmlab.nn.lstm) against hand formulas, torch.nn.LSTM and
row-by-row runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.errors import ConfigError
from lmlab.nn.lstm import LSTMP, LSTMPStack, lengths_to_mask, reverse_padded, run_reversed

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")

D, H, P = 5, 6, 4
F64 = torch.float64


def tf_cell_step(x, m_prev, c_prev, kernel, bias, proj, cell_clip, proj_clip, forget_bias=1.0):
    """TF 1.x `LSTMCell.call` written out: kernel (D + P, 4H) with gate blocks (i, j, f, o), bias (4H,),
    proj (H, P), forget_bias added at run time, no peepholes."""
    z = torch.cat([x, m_prev], 1) @ kernel + bias
    i, j, f, o = z.chunk(4, 1)
    c = torch.sigmoid(f + forget_bias) * c_prev + torch.sigmoid(i) * torch.tanh(j)
    c = c.clamp(-cell_clip, cell_clip)
    m = (torch.sigmoid(o) * torch.tanh(c)) @ proj
    return m.clamp(-proj_clip, proj_clip), c


def ijfo_to_ifgo(w: torch.Tensor) -> torch.Tensor:
    """The converter's gate permutation on the 4H axis (dim 0): TF (i, j, f, o) -> lmlab (i, f, g, o)."""
    i, j, f, o = w.chunk(4, 0)
    return torch.cat([i, f, j, o], 0)


def layer_from_tf(kernel, bias, proj, cell_clip, proj_clip, forget_bias=1.0):
    layer = LSTMP(D, H, P, cell_clip, proj_clip, forget_bias).to(F64)
    with torch.no_grad():
        layer.weight_ih.copy_(ijfo_to_ifgo(kernel[:D].T))
        layer.weight_hh.copy_(ijfo_to_ifgo(kernel[D:].T))
        layer.bias.copy_(ijfo_to_ifgo(bias))
        layer.weight_hr.copy_(proj.T)
    return layer


def test_step_matches_tf_formula_gate_order_forget_bias_and_clipping_triggers():
    torch.manual_seed(0)
    # Large weights so that both clips bind on some elements.
    kernel, bias = torch.randn(D + P, 4 * H, dtype=F64) * 2, torch.randn(4 * H, dtype=F64)
    proj = torch.randn(H, P, dtype=F64) * 3
    x = torch.randn(3, 7, D, dtype=F64) * 2
    m, c = torch.randn(3, P, dtype=F64), torch.randn(3, H, dtype=F64)
    cell_clip, proj_clip = 0.8, 1.5
    layer = layer_from_tf(kernel, bias, proj, cell_clip, proj_clip)
    out, (h_last, c_last) = layer(x, state=(m, c))
    clipped_c = clipped_h = 0
    for t in range(7):
        m, c = tf_cell_step(x[:, t], m, c, kernel, bias, proj, cell_clip, proj_clip)
        clipped_c += int((c.abs() == cell_clip).sum())
        clipped_h += int((m.abs() == proj_clip).sum())
        torch.testing.assert_close(out[:, t], m)
    torch.testing.assert_close(h_last, m)
    torch.testing.assert_close(c_last, c)
    assert clipped_c > 0 and clipped_h > 0  # both clips were exercised
    # Without the clips the result differs, and so it does with the gate blocks left in TF order.
    unclipped, _ = layer_from_tf(kernel, bias, proj, None, None)(x)
    assert (unclipped - layer(x)[0]).abs().max() > 1e-3
    wrong = LSTMP(D, H, P, cell_clip, proj_clip, 1.0).to(F64)
    with torch.no_grad():
        wrong.weight_ih.copy_(kernel[:D].T), wrong.weight_hh.copy_(kernel[D:].T)
        wrong.bias.copy_(bias), wrong.weight_hr.copy_(proj.T)
    assert (wrong(x)[0] - layer(x)[0]).abs().max() > 1e-3


def test_forget_bias_at_run_time_equals_folded_into_the_bias():
    torch.manual_seed(1)
    kernel, bias, proj = torch.randn(D + P, 4 * H, dtype=F64), torch.randn(4 * H, dtype=F64), \
        torch.randn(H, P, dtype=F64)
    runtime = layer_from_tf(kernel, bias, proj, 3.0, 3.0, forget_bias=1.0)
    folded_bias = bias.clone()
    folded_bias[2 * H:3 * H] += 1.0  # TF's f block
    folded = layer_from_tf(kernel, folded_bias, proj, 3.0, 3.0, forget_bias=0.0)
    x = torch.randn(2, 5, D, dtype=F64)
    torch.testing.assert_close(runtime(x)[0], folded(x)[0])
    assert (runtime(x)[0] - layer_from_tf(kernel, bias, proj, 3.0, 3.0, 0.0)(x)[0]).abs().max() > 1e-4


@pytest.mark.parametrize("proj_size", [P, None])
def test_matches_torch_lstm_with_the_same_weights(proj_size):
    torch.manual_seed(2)
    ref = torch.nn.LSTM(D, H, proj_size=proj_size or 0, batch_first=True).to(F64)
    layer = LSTMP(D, H, proj_size).to(F64)
    with torch.no_grad():
        layer.weight_ih.copy_(ref.weight_ih_l0), layer.weight_hh.copy_(ref.weight_hh_l0)
        layer.bias.copy_(ref.bias_ih_l0 + ref.bias_hh_l0)
        if proj_size:
            layer.weight_hr.copy_(ref.weight_hr_l0)
    x = torch.randn(3, 6, D, dtype=F64)
    h0, c0 = torch.randn(3, layer.output_size, dtype=F64), torch.randn(3, H, dtype=F64)
    want, (hn, cn) = ref(x, (h0[None], c0[None]))
    got, (h, c) = layer(x, state=(h0, c0))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(h, hn[0])
    torch.testing.assert_close(c, cn[0])


def make_stack(residual=True, n_layers=3, dropout=0.0):
    torch.manual_seed(3)
    return LSTMPStack(D, H, P, n_layers, cell_clip=1.0, proj_clip=1.0, forget_bias=1.0,
                      residual=residual, dropout=dropout).to(F64)


@pytest.mark.parametrize("residual", [True, False])
def test_residual_on_every_layer_but_the_first(residual):
    stack = make_stack(residual)
    x = torch.randn(2, 5, D, dtype=F64)
    outs, _ = stack(x)
    inp = x
    for i, layer in enumerate(stack.layers):
        y, _ = layer(inp)
        if residual and i > 0:
            y = y + inp
        torch.testing.assert_close(outs[i], y)
        inp = y
    plain, _ = make_stack(False)(x)
    torch.testing.assert_close(outs[0], plain[0])
    assert residual == bool((outs[1] - plain[1]).abs().max() > 1e-6)


def test_dropout_hits_each_layer_input_and_the_residual_adds_the_dropped_input():
    stack = make_stack(True, n_layers=2, dropout=0.3).train()
    x = torch.randn(2, 5, D, dtype=F64)
    torch.manual_seed(7)
    outs, _ = stack(x)
    torch.manual_seed(7)
    x0 = F.dropout(x, 0.3, True)
    y0, _ = stack.layers[0](x0)
    x1 = F.dropout(y0, 0.3, True)
    y1 = stack.layers[1](x1)[0] + x1
    torch.testing.assert_close(outs[0], y0)
    torch.testing.assert_close(outs[1], y1)
    torch.testing.assert_close(stack.eval()(x)[0][1], make_stack(True, 2)(x)[0][1])


def random_state(stack, B):
    return [(torch.randn(B, layer.output_size, dtype=F64), torch.randn(B, H, dtype=F64))
            for layer in stack.layers]


def row_state(state, b):
    return [(h[b:b + 1], c[b:b + 1]) for h, c in state]


def test_rows_are_independent_of_other_rows_and_of_padding():
    stack = make_stack()
    lengths = torch.tensor([5, 2, 0, 4])
    B, T = 4, 7
    x = torch.randn(B, T, D, dtype=F64)
    state = random_state(stack, B)
    outs, new = stack(x, lengths=lengths, state=state)
    for b in range(B):
        n = int(lengths[b])
        alone, alone_state = stack(x[b:b + 1, :n], state=row_state(state, b))
        for layer_out, layer_alone in zip(outs, alone, strict=True):
            torch.testing.assert_close(layer_out[b:b + 1, :n], layer_alone)
            assert torch.all(layer_out[b, n:] == 0)  # padding outputs zeros
        for (h, c), (ha, ca) in zip(row_state(new, b), alone_state, strict=True):
            torch.testing.assert_close(h, ha)
            torch.testing.assert_close(c, ca)
    # Row 2 has no tokens: its state passes through untouched.
    for (h, c), (h0, c0) in zip(row_state(new, 2), row_state(state, 2), strict=True):
        assert torch.equal(h, h0) and torch.equal(c, c0)
    # Other pad contents, other rows' contents and more padding change nothing for row 0.
    y = torch.cat([x, torch.randn(B, 3, D, dtype=F64)], 1)
    y[0, 5:] = 1e3
    y[1:] = torch.randn(B - 1, T + 3, D, dtype=F64)
    outs2, new2 = stack(y, mask=lengths_to_mask(lengths, T + 3), state=state)
    torch.testing.assert_close(outs2[-1][0, :T], outs[-1][0])
    torch.testing.assert_close(new2[-1][1][0], new[-1][1][0])


def test_state_carried_across_two_calls_equals_one_call_over_the_concatenation():
    stack = make_stack()
    B = 3
    len1, len2 = torch.tensor([4, 1, 3]), torch.tensor([2, 5, 0])
    x1, x2 = torch.randn(B, 4, D, dtype=F64), torch.randn(B, 5, D, dtype=F64)
    state = random_state(stack, B)
    outs1, mid = stack(x1, lengths=len1, state=state)
    outs2, final = stack(x2, lengths=len2, state=mid)
    # Each row's valid tokens of both calls, back to back, right-padded.
    both = torch.zeros(B, 9, D, dtype=F64)
    for b in range(B):
        n1, n2 = int(len1[b]), int(len2[b])
        both[b, :n1], both[b, n1:n1 + n2] = x1[b, :n1], x2[b, :n2]
    outs, final_once = stack(both, lengths=len1 + len2, state=state)
    for b in range(B):
        n1, n2 = int(len1[b]), int(len2[b])
        torch.testing.assert_close(outs[-1][b, :n1], outs1[-1][b, :n1])
        torch.testing.assert_close(outs[-1][b, n1:n1 + n2], outs2[-1][b, :n2])
    for (h, c), (h1, c1) in zip(final, final_once, strict=True):
        torch.testing.assert_close(h, h1)
        torch.testing.assert_close(c, c1)


def test_reverse_padded_reverses_within_each_length_and_is_an_involution():
    x = torch.arange(2 * 5).view(2, 5, 1)
    lengths = torch.tensor([3, 5])
    r = reverse_padded(x, lengths)
    assert r[..., 0].tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]
    assert torch.equal(reverse_padded(r, lengths), x)


def test_run_reversed_equals_each_row_flipped_alone():
    stack = make_stack()
    lengths = torch.tensor([4, 6, 1])
    x = torch.randn(3, 6, D, dtype=F64)
    state = random_state(stack, 3)
    outs, new = run_reversed(stack, x, lengths, state)
    for b in range(3):
        n = int(lengths[b])
        alone, alone_state = stack(x[b:b + 1, :n].flip(1), state=row_state(state, b))
        for layer_out, layer_alone in zip(outs, alone, strict=True):
            torch.testing.assert_close(layer_out[b:b + 1, :n], layer_alone.flip(1))
            assert torch.all(layer_out[b, n:] == 0)
        torch.testing.assert_close(new[-1][0][b:b + 1], alone_state[-1][0])
    # Output t has read positions t.. of its row: changing the first token leaves later outputs alone.
    y = x.clone()
    y[:, 0] += 1.0
    torch.testing.assert_close(run_reversed(stack, y, lengths, state)[0][-1][:, 1:], outs[-1][:, 1:])


def test_gradcheck_lstmp_with_clipping_mask_and_state():
    torch.manual_seed(4)
    layer = LSTMP(3, 4, 2, cell_clip=0.5, proj_clip=0.3, forget_bias=1.0).to(F64)
    x = torch.randn(2, 4, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 2, dtype=F64, requires_grad=True)
    c0 = torch.randn(2, 4, dtype=F64, requires_grad=True)
    mask = lengths_to_mask(torch.tensor([4, 2]), 4)

    params = dict(layer.named_parameters())

    def f(x, h0, c0, *weights):
        named = dict(zip(params, weights, strict=True))
        out, (h, c) = torch.func.functional_call(layer, named, (x, mask, (h0, c0)))
        return out, h, c

    weights = tuple(p.detach().clone().requires_grad_() for p in params.values())
    assert torch.autograd.gradcheck(f, (x, h0, c0, *weights))


def test_config_errors():
    with pytest.raises(ConfigError, match="proj_clip"):
        LSTMP(D, H, None, proj_clip=3.0)
    with pytest.raises(ConfigError, match="cell_clip"):
        LSTMP(D, H, P, cell_clip=0.0)
    with pytest.raises(ConfigError, match="dropout"):
        LSTMPStack(D, H, P, 2, dropout=1.0)
    with pytest.raises(ValueError, match="state"):
        make_stack()(torch.randn(1, 2, D, dtype=F64), state=[])
