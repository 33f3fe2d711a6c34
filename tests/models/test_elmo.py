"""ELMo's biLM (lmlab.models.elmo): what it reads (word ids spelled like the tokenizer spells them, or
characters), right-padded batches, the two directions, the backward LM's own input, carried state,
the shared softmax with its bias. The equations themselves are checked against an independent
NumPy pass in tests/checkpoints/test_convert_elmo.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.errors import ConfigError, LmlabError
from lmlab.models.registry import make_config
from lmlab.nn.lm_loss import IGNORE_INDEX
from lmlab.tokenizers.word_chars import WordCharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")

TEXT = "the cat sat on the mat\nthe dog ran to a red house\n"


def tiny(**fields):
    torch.manual_seed(0)
    # Wider init than LSTMP's U(±1/8) so that states move and the checks below can see them.
    model = lmlab.build("elmo", "tiny", dropout=0.0, **fields).eval()
    with torch.no_grad():
        for p in [*model.forward_lm.parameters(), *model.backward_lm.parameters()]:
            p.mul_(4)
    return model


def ids(seed=0, shape=(3, 9), vocab=256):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_word_ids_are_read_as_the_tokenizer_spells_them():
    tok = WordCharTokenizer.train([TEXT])
    model = tiny(vocab_size=tok.vocab_size)
    sentence = "the cat ran to the mat".split()
    words = torch.tensor([tok.encode(" ".join(sentence))])
    chars = torch.from_numpy(tok.char_ids(sentence))[None]
    before = model(words).hidden
    model.set_word_chars(tok.char_table())
    with torch.no_grad():
        assert torch.equal(model(words).hidden, model(chars).hidden)
    assert not torch.allclose(before, model(words).hidden)  # the default spelling (digits) differs
    with pytest.raises(ConfigError, match="word spelling table"):
        model.set_word_chars(tok.char_table()[:, :10])


@torch.no_grad()
def test_a_row_is_independent_of_other_rows_and_of_padding():
    model = tiny()
    chars = model.word_chars[ids(1)].long()  # (3, 9, C)
    chars[1, 5:] = 0  # row 1 holds 5 tokens, then padding rows
    state = model.init_state(3)
    state = [[(torch.randn_like(h), torch.randn_like(c)) for h, c in d] for d in state]
    full = model(chars, state=state, output_hidden_states=True)
    alone = model(chars[1:2, :5], state=[[(h[1:2], c[1:2]) for h, c in d] for d in state],
                  output_hidden_states=True)
    for a, b in zip(full.hidden_states, alone.hidden_states, strict=True):
        torch.testing.assert_close(a[1:2, :5], b, rtol=1e-6, atol=1e-6)
        assert torch.equal(a[1, 5:], torch.zeros_like(a[1, 5:]))  # padding positions are zero
    for d in range(2):  # each layer's state (h, c) of row 1 is the one it has alone
        for (h, c), (h1, c1) in zip(full.state[d], alone.state[d], strict=True):
            torch.testing.assert_close(h[1:2], h1, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(c[1:2], c1, rtol=1e-6, atol=1e-6)
    other = chars.clone()
    other[0], other[2] = chars[2], chars[0]  # other rows' content changed
    torch.testing.assert_close(model(other, state=state).hidden[1], full.hidden[1], rtol=0, atol=0)
    assert full.mask[1].tolist() == [True] * 5 + [False] * 4


def test_left_padding_and_bad_inputs_are_one_line_errors():
    model = tiny()
    chars = model.word_chars[ids(1)].long()
    chars[0, 0] = 0
    with pytest.raises(LmlabError, match="row 0 has a token after padding"):
        model(chars)
    with pytest.raises(LmlabError, match=r"word ids must be in \[0, 256\)"):
        model(torch.tensor([[256]]))
    with pytest.raises(LmlabError, match="character ids must be in"):
        model(torch.full((1, 2, 50), 262))
    with pytest.raises(LmlabError, match="expected \\(B, T\\) word ids"):
        model(torch.zeros(1, 2, 7, dtype=torch.long))
    with pytest.raises(LmlabError, match="state must be \\[forward, backward\\]"):
        model(ids(), state=model.init_state(2))


@torch.no_grad()
def test_forward_reads_the_past_and_backward_the_future():
    model = tiny()
    x = ids(2)
    changed = x.clone()
    changed[:, 5] = (x[:, 5] + 1) % 256
    a, b = model(x).hidden, model(changed).hidden  # (B, T, 2D): [forward; backward]
    D = model.config.d_model
    assert torch.equal(a[:, :5, :D], b[:, :5, :D]) and not torch.allclose(a[:, 5:, :D], b[:, 5:, :D])
    assert torch.equal(a[:, 6:, D:], b[:, 6:, D:]) and not torch.allclose(a[:, :6, D:], b[:, :6, D:])


@torch.no_grad()
def test_nll_is_the_cross_entropy_of_the_logits_with_the_softmax_bias():
    model = tiny()
    torch.nn.init.normal_(model.softmax.bias)
    x = ids(3)
    nxt, prev = torch.roll(x, -1, 1), torch.roll(x, 1, 1)
    nxt[:, -1] = prev[:, 0] = IGNORE_INDEX
    out, scored = model(x), model(x, targets=nxt, backward_targets=prev)
    want_f = F.cross_entropy(out.logits.flatten(0, 1), nxt.flatten(), reduction="none").view(nxt.shape)
    want_b = F.cross_entropy(out.logits_backward.flatten(0, 1), prev.flatten(), reduction="none")
    want_b = want_b.view(nxt.shape)
    torch.testing.assert_close(scored.nll, want_f)
    torch.testing.assert_close(scored.nll_backward, want_b)
    assert scored.logits is None and bool((scored.nll[:, -1] == 0).all())


@torch.no_grad()
def test_the_backward_lm_on_its_own_reversed_input_equals_reading_the_row_backwards():
    model = tiny()
    x = ids(4)
    prev = torch.roll(x, 1, 1)
    prev[:, 0] = IGNORE_INDEX
    inference = model(x, backward_targets=prev)
    training = model(x, backward_ids=x.flip(1), backward_targets=prev.flip(1))
    torch.testing.assert_close(training.nll_backward.flip(1), inference.nll_backward, rtol=1e-6, atol=1e-6)
    assert training.hidden is None and training.hidden_states is None  # the directions read different text


@torch.no_grad()
def test_carried_state_continues_both_streams_exactly():
    """Two halves with the state carried = the whole, for the forward LM and for a backward LM reading
    its own (reversed) stream: what pretraining relies on."""
    model = tiny()
    x, xb = ids(5, (2, 10)), ids(6, (2, 10))
    whole = model(x, backward_ids=xb, targets=x, backward_targets=xb)
    first = model(x[:, :4], backward_ids=xb[:, :4], targets=x[:, :4], backward_targets=xb[:, :4])
    second = model(x[:, 4:], backward_ids=xb[:, 4:], targets=x[:, 4:], backward_targets=xb[:, 4:],
                   state=first.state)
    torch.testing.assert_close(torch.cat([first.nll, second.nll], 1), whole.nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([first.nll_backward, second.nll_backward], 1), whole.nll_backward,
                               rtol=1e-5, atol=1e-5)
    for d in range(2):
        for (h, c), (h2, c2) in zip(second.state[d], whole.state[d], strict=True):
            torch.testing.assert_close(h, h2, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(c, c2, rtol=1e-5, atol=1e-5)


def test_sampled_softmax_only_in_training_with_a_gradient():
    model = tiny(vocab_size=300)
    x = ids(7, vocab=300)
    exact = model(x, targets=x, sampled_softmax=20).nll
    torch.testing.assert_close(exact, model(x, targets=x).nll, rtol=0, atol=0)  # eval: full softmax
    model.train()
    torch.manual_seed(0)
    sampled = model(x, targets=x, backward_targets=x, sampled_softmax=20)
    loss = sampled.nll.mean() + sampled.nll_backward.mean()
    loss.backward()
    assert torch.isfinite(loss) and not torch.allclose(sampled.nll, exact)
    assert model.softmax.weight.grad.abs().sum() > 0 and torch.isfinite(model.softmax.weight.grad).all()


def test_config_checks_and_sizes():
    c = make_config("elmo", "original", vocab_size=0)
    shape = (c.d_model, c.d_lstm, c.n_layers, sum(n for _, n in c.char_filters), c.n_highway)
    assert shape == (512, 4096, 2, 2048, 2)
    with torch.device("meta"):  # shapes only
        sizes = {p: sum(t.numel() for t in lmlab.build("elmo", p, vocab_size=0).parameters())
                 for p in ("small", "medium", "original")}
    # The released models' sizes without the softmax (allennlp.org/elmo: 13.6M, 28.0M, 93.6M).
    assert [round(n / 1e6, 1) for n in sizes.values()] == [13.6, 28.0, 93.6]
    for bad, words in (({"d_model": 600, "d_lstm": 512}, "d_model=600 must be at most"),
                       ({"char_filters": [[60, 4]]}, "char_filters"),
                       ({"d_model": 64, "d_lstm": 64}, "proj_clip must be null")):
        with pytest.raises(ConfigError, match=words):
            make_config("elmo", "tiny", **bad)
    assert make_config("elmo", "tiny", d_model=64, d_lstm=64, proj_clip=None).d_model == 64
