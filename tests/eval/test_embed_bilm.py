"""ELMo features (lmlab.embed / `lmlab embed` for a biLM): shapes and boundaries, the stateless mode's
independence from everything but the sentence, the stateful mode's per-row carry exactly as documented
(row i of a call continues row i of the previous one; reset; rows not reached keep their state),
and one-line errors for bad input."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import lmlab
from lmlab.errors import ConfigError, DataError
from lmlab.eval.embed import EmbeddingState, embed_command, embedding_state
from lmlab.eval.embed_bilm import bilm_features
from lmlab.tokenizers.word_chars import WordCharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")

SENTENCES = ["the cat sat on the mat", "a dog ran", "unbelievably the catamaran sailed home quickly today"]
NEXT = ["and then it rained", "home", "the cat ran to the big red house"]


@pytest.fixture(scope="module")
def tok():
    return WordCharTokenizer.train(SENTENCES)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    model = lmlab.build("elmo", "tiny", vocab_size=tok.vocab_size, dropout=0.0).eval()
    with torch.no_grad():  # wider LSTM weights: states that matter, so that carrying them shows
        for p in [*model.forward_lm.parameters(), *model.backward_lm.parameters()]:
            p.mul_(4)
    return model


def alone(model, tok, sentence: str, state=None):
    """The sentence run through the model on its own (batch of one): (features, state after)."""
    chars = torch.from_numpy(tok.char_ids(sentence.split()))[None]
    out = model(chars, state=state, output_hidden_states=True)
    return torch.stack(out.hidden_states, 1)[0, :, 1:-1], out.state


@torch.no_grad()
def test_features_per_sentence_without_the_boundaries(model, tok):
    feats = lmlab.embed(model, tok, SENTENCES)
    D = model.config.d_model
    for f, s in zip(feats, SENTENCES, strict=True):
        assert f.shape == (model.config.n_layers + 1, len(s.split()), 2 * D) and f.dtype == torch.float32
        assert torch.equal(f[0, :, :D], f[0, :, D:])  # layer 0: the token representation, twice
        torch.testing.assert_close(f, alone(model, tok, s)[0], rtol=0, atol=1e-6)
    assert torch.equal(lmlab.embed(model, tok, [s.split() for s in SENTENCES])[2], feats[2])  # token lists


@torch.no_grad()
def test_stateless_is_deterministic_and_blind_to_other_rows_order_and_padding(model, tok):
    first = lmlab.embed(model, tok, SENTENCES)
    assert all(torch.equal(a, b) for a, b in zip(first, lmlab.embed(model, tok, SENTENCES), strict=True))
    shuffled = lmlab.embed(model, tok, [SENTENCES[2], "x " * 30, SENTENCES[0]])  # more padding, other rows
    torch.testing.assert_close(shuffled[2], first[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(shuffled[0], first[2], rtol=0, atol=1e-6)
    one_by_one = bilm_features(model, tok, [s.split() for s in SENTENCES], batch_size=1)
    for a, b in zip(one_by_one, first, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@torch.no_grad()
def test_stateful_rows_carry_their_own_state_from_call_to_call(model, tok):
    carry = EmbeddingState()
    lmlab.embed(model, tok, SENTENCES, stateful=carry)
    second = lmlab.embed(model, tok, NEXT, stateful=carry)
    for r in range(3):  # row r: its first sentence, then its second one from the state it left
        _, state = alone(model, tok, SENTENCES[r])
        want, after = alone(model, tok, NEXT[r], state)
        torch.testing.assert_close(second[r], want, rtol=0, atol=1e-5)
        row = carry.take(model, r, r + 1)
        for d in range(2):
            for (h, c), (h2, c2) in zip(row[d], after[d], strict=True):
                torch.testing.assert_close(h, h2, rtol=0, atol=1e-5)
                torch.testing.assert_close(c, c2, rtol=0, atol=1e-5)
    stateless = lmlab.embed(model, tok, NEXT)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(second, stateless, strict=True))
    carry.reset()
    for a, b in zip(lmlab.embed(model, tok, NEXT, stateful=carry), stateless, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@torch.no_grad()
def test_a_rows_state_ignores_other_rows_and_padding_and_rows_not_reached_keep_theirs(model, tok):
    a, b = EmbeddingState(), EmbeddingState()
    for words in (SENTENCES, NEXT):  # two calls: row 0 is the same in both runs, rows 1 and 2 are not
        fa = lmlab.embed(model, tok, words, stateful=a)
        fb = lmlab.embed(model, tok, [words[0], "z " * 25, "q"], stateful=b)  # and more padding
        torch.testing.assert_close(fa[0], fb[0], rtol=0, atol=1e-6)
        for name in a.tensors:
            torch.testing.assert_close(a.tensors[name][0], b.tensors[name][0], rtol=0, atol=1e-6)
    kept = {k: v[1:].clone() for k, v in a.tensors.items()}
    lmlab.embed(model, tok, ["the"], stateful=a)  # a call of one row
    assert all(torch.equal(a.tensors[k][1:], v) for k, v in kept.items())
    third = lmlab.embed(model, tok, ["x", SENTENCES[0]], stateful=a)  # row 1 continues from call 2
    _, state = alone(model, tok, SENTENCES[1])
    _, state = alone(model, tok, NEXT[1], state)
    torch.testing.assert_close(third[1], alone(model, tok, SENTENCES[0], state)[0], rtol=0, atol=1e-5)


@torch.no_grad()
def test_stateful_true_uses_the_models_own_state_until_reset(model, tok):
    embedding_state(model).reset()
    lmlab.embed(model, tok, SENTENCES, stateful=True)
    carried = lmlab.embed(model, tok, NEXT, stateful=True)
    assert embedding_state(model).rows == 3
    embedding_state(model).reset()
    fresh = lmlab.embed(model, tok, NEXT, stateful=True)
    assert not torch.allclose(carried[0], fresh[0])
    torch.testing.assert_close(fresh[0], lmlab.embed(model, tok, NEXT)[0], rtol=0, atol=1e-6)
    embedding_state(model).reset()


def test_bad_sentences_are_one_line_errors(model, tok):
    cases = [(["a b", ""], "sentence 1 is empty"), (["a", b"ok \xff"], "sentence 1: not UTF-8 text (byte 3)"),
             (["bad \udc80 word"], "sentence 0: word '\\udc80' is not valid Unicode"),
             ([["a b"]], "sentence 0: expected a string or a list of tokens without spaces")]
    for sentences, words in cases:
        with pytest.raises(DataError) as e:
            lmlab.embed(model, tok, sentences)
        assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="stateful must be"):
        lmlab.embed(model, tok, SENTENCES, stateful="yes")


def test_embed_command_stateless_and_stateful(model, tok, tmp_path):
    lmlab.save(model, tok, tmp_path / "m")
    text = tmp_path / "in.txt"
    text.write_text("\n".join(SENTENCES + NEXT) + "\n", encoding="utf-8")
    for stateful in (False, True):
        out = tmp_path / f"f{stateful}.safetensors"
        meta = embed_command(str(tmp_path / "m"), str(text), str(out), layers="all", batch_size=3,
                             stateful=stateful)
        assert meta["stateful"] is stateful and meta["layers"] == [0, 1, 2]
        got = load_file(str(out))
        carry = EmbeddingState() if stateful else False
        want = lmlab.embed(model, tok, SENTENCES, stateful=carry)
        want += lmlab.embed(model, tok, NEXT, stateful=carry)
        for i, w in enumerate(want):  # line i is row i mod 3 of batch i // 3
            for j in range(3):
                torch.testing.assert_close(got[f"text.{i}.layer.{j}"], w[j], rtol=0, atol=1e-6)
        with safe_open(str(out), "pt") as f:
            assert f.metadata()["family"] == '"elmo"'
    mean = tmp_path / "mean.safetensors"
    embed_command(str(tmp_path / "m"), str(text), str(mean), layers="-1", pool="mean")
    assert load_file(str(mean))["layer.2"].shape == (6, 2 * model.config.d_model)


def test_embed_command_bad_input_is_one_line(model, tok, tmp_path):
    lmlab.save(model, tok, tmp_path / "m")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nnot \xff utf-8\n")
    with pytest.raises(DataError, match="not UTF-8 text") as e:
        embed_command(str(tmp_path / "m"), str(bad), str(tmp_path / "o.safetensors"))
    assert "\n" not in str(e.value)
