"""CoVe (McCann et al. 2017): the MT-LSTM encoder against torch.nn.LSTM on packed sequences, the
attentional decoder with input feeding against eqs. 2-5 written out by hand, padding (masked in the
attention, a padded batch equal to each sentence alone) and the fixed word vectors (no gradient, no
optimizer entry)."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lmlab
from lmlab.errors import ConfigError, LmlabError
from lmlab.models.output import Seq2SeqOutput
from lmlab.train.optim import make_optimizer

LENGTHS = [5, 2, 4]


def tiny(**fields):
    torch.manual_seed(0)
    return lmlab.build("cove", "tiny", **{"dropout": 0.0, **fields}).eval()


def padded_source(model, lengths=LENGTHS, pad: int = 0, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    ids = torch.randint(1, model.config.source_vocab_size, (len(lengths), S), generator=g)
    mask = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, pad), mask.long()


def torch_lstm(model) -> torch.nn.LSTM:
    """torch.nn.LSTM (2 layers, bidirectional) holding the encoder's weights (bias_hh = 0)."""
    c = model.config
    ref = torch.nn.LSTM(c.d_input, c.d_model, num_layers=c.n_layers, bidirectional=True, batch_first=True)
    with torch.no_grad():
        for k, layer in enumerate(model.encoder.layers):
            for d, suffix in ((layer.fwd, ""), (layer.bwd, "_reverse")):
                getattr(ref, f"weight_ih_l{k}{suffix}").copy_(d.weight_ih)
                getattr(ref, f"weight_hh_l{k}{suffix}").copy_(d.weight_hh)
                getattr(ref, f"bias_ih_l{k}{suffix}").copy_(d.bias)
                getattr(ref, f"bias_hh_l{k}{suffix}").zero_()
    return ref


def test_encoder_equals_torch_lstm_on_packed_sequences():
    model = tiny()
    ids, mask = padded_source(model)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_hidden_states=True)
        x = model.source_vectors[ids]
        packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
        y, (h, c) = torch_lstm(model)(packed)
        y, _ = pad_packed_sequence(y, batch_first=True)  # (B, S, 2H), zeros at padding
    assert isinstance(out, Seq2SeqOutput) and len(out.hidden_states) == 2
    torch.testing.assert_close(out.hidden, y, rtol=1e-5, atol=1e-6)
    # The decoder starts from each layer's final states [→h; ←h] (h: (layers * 2, B, H)).
    memory, _, finals, feed = out.state
    for k, (h_k, c_k) in enumerate(finals):
        torch.testing.assert_close(h_k, torch.cat([h[2 * k], h[2 * k + 1]], -1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c_k, torch.cat([c[2 * k], c[2 * k + 1]], -1), rtol=1e-5, atol=1e-6)
    assert not feed.any()


def lstm_cell(cell, x, h, c):
    """torch.nn.LSTMCell written out: gates i, f, g, o."""
    i, f, g, o = (x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh).chunk(4, -1)
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    return o.sigmoid() * c.tanh(), c


def test_decoder_follows_equations_2_to_5_by_hand():
    """Input feeding [z_{t-1}; h~_{t-1}] (eq. 2), α = softmax(H (W_1 h + b_1)) over the real words
    (eq. 3), h~ = tanh(W_2 [H^T α; h] + b_2) (eq. 4), logits W_out h~ + b_out (eq. 5)."""
    model = tiny()
    d = model.decoder
    ids, mask = padded_source(model)
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, model.config.vocab_size, (len(LENGTHS), 4), generator=g)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, decoder_input_ids=y)
        H, _, finals, feed = model(ids, attention_mask=mask).state
        layers = [tuple(s) for s in finals]
        logits, alphas = [], []
        for t in range(y.shape[1]):
            x = torch.cat([d.embed.weight[y[:, t]], feed], -1)
            new = []
            for cell, (h, c) in zip(d.cells, layers, strict=True):
                h, c = lstm_cell(cell, x, h, c)
                new.append((h, c))
                x = h
            layers = new
            scores = torch.einsum("bsd,bd->bs", H, x @ d.attn_in.weight.T + d.attn_in.bias)
            alpha = torch.where(mask.bool(), scores, torch.tensor(float("-inf"))).softmax(-1)
            context = torch.einsum("bs,bsd->bd", alpha, H)
            feed = torch.tanh(torch.cat([context, x], -1) @ d.attn_out.weight.T + d.attn_out.bias)
            logits.append(feed @ d.out.weight.T + d.out.bias)
            alphas.append(alpha)
    torch.testing.assert_close(out.logits, torch.stack(logits, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.attention, torch.stack(alphas, 1), rtol=1e-5, atol=1e-6)


def test_attention_gives_padding_no_weight_and_pad_content_changes_nothing():
    model = tiny()
    ids, mask = padded_source(model)
    other, _ = padded_source(model, pad=7)  # the same words, other ids in the padding
    y = torch.randint(0, model.config.vocab_size, (len(LENGTHS), 3))
    with torch.no_grad():
        a = model(ids, attention_mask=mask, decoder_input_ids=y)
        b = model(other, attention_mask=mask, decoder_input_ids=y)
    assert (a.attention[~mask.bool()[:, None, :].expand_as(a.attention)] == 0).all()
    torch.testing.assert_close(a.attention.sum(-1), torch.ones(3, 3))
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)


def test_a_padded_batch_equals_each_sentence_alone():
    model = tiny()
    ids, mask = padded_source(model)
    y = torch.randint(0, model.config.vocab_size, (len(LENGTHS), 3))
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, decoder_input_ids=y, output_hidden_states=True)
        for r, n in enumerate(LENGTHS):
            alone = model(ids[r:r + 1, :n], decoder_input_ids=y[r:r + 1], output_hidden_states=True)
            for layer_b, layer_a in zip(batch.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(layer_b[r, :n], layer_a[0], rtol=1e-5, atol=1e-6)
                assert not layer_b[r, n:].any()  # encoder outputs are zero at padding
            torch.testing.assert_close(batch.logits[r], alone.logits[0], rtol=1e-5, atol=1e-5)


def test_word_vectors_are_fixed_no_gradient_not_in_the_optimizer():
    model = tiny()
    model.train()
    before = model.source_vectors.clone()
    names = {n for n, _ in model.named_parameters()}
    assert "source_vectors" not in names and "source_vectors" in model.state_dict()
    ids, mask = padded_source(model)
    y = torch.randint(0, model.config.vocab_size, (len(LENGTHS), 3))
    opt = make_optimizer(model, 1e-2, 0.1, (0.9, 0.99), "cpu")
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.source_vectors) not in in_opt
    assert in_opt == {id(p) for p in model.parameters()}
    for _ in range(2):
        loss = model(ids, attention_mask=mask, decoder_input_ids=y, targets=y).nll.mean()
        opt.zero_grad()
        loss.backward()
        assert model.source_vectors.grad is None and not model.source_vectors.requires_grad
        opt.step()
    torch.testing.assert_close(model.source_vectors, before, rtol=0, atol=0)
    assert model.encoder.layers[0].fwd.weight_ih.grad is not None  # the encoder itself trains


def test_word_vectors_given_directly_equal_the_table_lookup():
    model = tiny()
    ids, mask = padded_source(model)
    with torch.no_grad():
        a = model(ids, attention_mask=mask).hidden
        b = model(model.source_vectors[ids], attention_mask=mask).hidden
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_targets_give_the_per_token_nll_of_the_logits():
    model = tiny()
    ids, mask = padded_source(model)
    y = torch.randint(0, model.config.vocab_size, (len(LENGTHS), 4))
    t = y.clone()
    t[1, 2:] = -100
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, decoder_input_ids=y).logits
        nll = model(ids, attention_mask=mask, decoder_input_ids=y, targets=t).nll
    ref = torch.nn.functional.cross_entropy(logits.transpose(1, 2), t, reduction="none", ignore_index=-100)
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-6)
    assert (nll[1, 2:] == 0).all()


def test_set_source_vectors_checks_shape_and_the_zero_row():
    model = tiny()
    c = model.config
    with pytest.raises(ConfigError, match="shape"):
        model.set_source_vectors(torch.zeros(c.source_vocab_size + 1, c.d_input))
    bad = torch.ones(c.source_vocab_size, c.d_input)
    with pytest.raises(ConfigError, match="row 0"):
        model.set_source_vectors(bad)


@pytest.mark.parametrize("mask, message", [([[1, 1], [0, 0]], "empty source"),
                                           ([[1, 1], [0, 1]], "after padding")])
def test_bad_source_masks_are_one_line_errors(mask, message):
    model = tiny()
    with pytest.raises(LmlabError, match=message):
        model(torch.ones(2, 2, dtype=torch.long), attention_mask=torch.tensor(mask))


def test_encoder_alone_gives_features_but_refuses_to_decode():
    model = tiny(vocab_size=0)
    assert model.decoder is None
    out = model(torch.ones(1, 3, dtype=torch.long))
    assert out.hidden.shape == (1, 3, 2 * model.config.d_model)
    with pytest.raises(LmlabError, match="encoder alone"):
        model(torch.ones(1, 3, dtype=torch.long), decoder_input_ids=torch.zeros(1, 1, dtype=torch.long))
