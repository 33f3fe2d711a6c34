"""Character CNN (lmlab.nn.char_cnn) and highway layers (lmlab.nn.highway) against hand formulas written
with bilm-tf's tensor layouts and names."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import ConfigError
from lmlab.nn.char_cnn import CharCNN
from lmlab.nn.highway import Highway, HighwayLayer

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")

F64 = torch.float64
FILTERS = [(1, 3), (2, 4), (3, 5)]  # F = 12
N_CHARS, E, C = 20, 4, 6


def char_ids(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, N_CHARS, (B, T, C), generator=g)


def test_shapes_projection_only_when_widths_differ():
    cnn = CharCNN(N_CHARS, E, FILTERS, d_out=7, n_highway=2)
    assert cnn(char_ids(2, 3)).shape == (2, 3, 7)
    assert cnn.proj is not None and len(cnn.highway.layers) == 2
    same = CharCNN(N_CHARS, E, FILTERS, d_out=12)
    assert same.proj is None and same(char_ids(1, 4)).shape == (1, 4, 12)


def tf_conv_features(chars, embed, tf_filters, tf_biases, activation):
    """bilm-tf make_convolutions for one token: conv2d 'VALID' with W (1, width, E, num) on the
    (chars, E) embedding, + b, max-pool over all positions, then the activation."""
    e = embed[chars]  # (C, E)
    feats = []
    for w, b in zip(tf_filters, tf_biases, strict=True):
        width = w.shape[1]
        conv = torch.stack([torch.einsum("ke,ken->n", e[p:p + width], w[0])
                            for p in range(C - width + 1)]) + b  # (positions, num)
        feats.append(activation(conv.max(0).values))
    return torch.cat(feats)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_conv_maxpool_activation_formula_in_tf_layout(activation):
    torch.manual_seed(0)
    cnn = CharCNN(N_CHARS, E, FILTERS, d_out=12, activation=activation).to(F64)
    for conv in cnn.convs:
        torch.nn.init.normal_(conv.bias)  # nonzero biases, so their place in the formula matters
    # The converter's mapping, inverted: TF W (1, width, E, num) = conv.weight (num, E, width) permuted.
    tf_filters = [conv.weight.detach().permute(2, 1, 0)[None] for conv in cnn.convs]
    tf_biases = [conv.bias.detach() for conv in cnn.convs]
    chars = char_ids(2, 3)
    chars[1, 2] = 0  # a padding token: all-zero embedding rows
    got = cnn(chars)
    act = {"relu": torch.relu, "tanh": torch.tanh}[activation]
    for b in range(2):
        for t in range(3):
            want = tf_conv_features(chars[b, t], cnn.embed.weight.detach(), tf_filters, tf_biases, act)
            torch.testing.assert_close(got[b, t], want)
    if activation == "relu":
        assert (got == 0).any() and (got > 0).any()  # relu actually clipped some features


def test_padding_row_is_zero_and_gets_no_gradient():
    cnn = CharCNN(N_CHARS, E, FILTERS, d_out=5, n_highway=1)
    assert torch.all(cnn.embed.weight[0] == 0)
    chars = char_ids(1, 2)
    chars[0, 0, :3] = 0
    cnn(chars).sum().backward()
    assert torch.all(cnn.embed.weight.grad[0] == 0)
    assert cnn.embed.weight.grad[1:].abs().sum() > 0


def bilm_tf_high(x, W_carry, b_carry, W_transform, b_transform):
    """bilm-tf `high`: its "carry" gate multiplies the relu branch."""
    carry_gate = torch.sigmoid(x @ W_carry + b_carry)
    transform_gate = torch.relu(x @ W_transform + b_transform)
    return carry_gate * transform_gate + (1.0 - carry_gate) * x


def test_highway_gates_follow_bilm_tf_with_carry_weights_in_the_gate():
    torch.manual_seed(1)
    layer = HighwayLayer(6).to(F64)
    torch.nn.init.normal_(layer.gate.bias)
    x = torch.randn(5, 6, dtype=F64)
    want = bilm_tf_high(x, layer.gate.weight.T, layer.gate.bias,
                        layer.nonlinear.weight.T, layer.nonlinear.bias)
    torch.testing.assert_close(layer(x), want)
    swapped = bilm_tf_high(x, layer.nonlinear.weight.T, layer.nonlinear.bias,
                           layer.gate.weight.T, layer.gate.bias)
    assert (layer(x) - swapped).abs().max() > 1e-3
    # Srivastava et al.'s form with t = σ(W_g x + b_g) and the gate bias initialised to -2.
    t = torch.sigmoid(layer.gate(x))
    torch.testing.assert_close(layer(x), t * torch.relu(layer.nonlinear(x)) + (1 - t) * x)
    assert torch.all(HighwayLayer(6).gate.bias == -2.0) and torch.all(HighwayLayer(6).nonlinear.bias == 0)


def test_full_encoder_is_convolutions_then_highway_then_projection():
    torch.manual_seed(2)
    cnn = CharCNN(N_CHARS, E, FILTERS, d_out=5, n_highway=2).to(F64)
    chars = char_ids(2, 3)
    plain = CharCNN(N_CHARS, E, FILTERS, d_out=12).to(F64)
    plain.embed, plain.convs = cnn.embed, cnn.convs
    feats = plain(chars)  # (B, T, 12), no highway, no projection
    want = cnn.proj(cnn.highway.layers[1](cnn.highway.layers[0](feats)))
    torch.testing.assert_close(cnn(chars), want)


def test_gradcheck_highway():
    torch.manual_seed(3)
    hw = Highway(4, 2).to(F64)
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(hw, (x,))
    params = dict(hw.named_parameters())

    def f(*weights):
        return torch.func.functional_call(hw, dict(zip(params, weights, strict=True)), (x.detach(),))

    assert torch.autograd.gradcheck(f, tuple(p.detach().clone().requires_grad_() for p in params.values()))


def test_config_errors():
    with pytest.raises(ConfigError, match="activation"):
        CharCNN(N_CHARS, E, FILTERS, 5, activation="gelu")
    with pytest.raises(ConfigError, match="filters"):
        CharCNN(N_CHARS, E, [(0, 3)], 5)
