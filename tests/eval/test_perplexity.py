"""Perplexity protocols against hand-computed NLLs of a model whose distribution is known."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import lmlab
from fakes import lm_output
from lmlab.errors import LmlabError
from lmlab.eval import bits_per_character, perplexity, scored_text_size, token_losses, unigram_perplexity
from lmlab.eval.perplexity import windows

V, CTX = 7, 16


class KnownLM(nn.Module):
    """logits[i] = bigram[x_i] + by_position[i] + by_first[x_0] (float64 log-probs).

    The distribution at input position i depends on the previous token, on how much context the
    window gives (i + 1 tokens) and on which token opens the window, so a test can tell exactly
    which window scored each token.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.config = SimpleNamespace(max_seq_len=CTX, vocab_size=V)
        self.register_buffer("bigram", torch.randn(V, V, generator=g, dtype=torch.float64).log_softmax(-1))
        self.register_buffer("by_position", torch.randn(CTX, V, generator=g, dtype=torch.float64))
        self.register_buffer("by_first", torch.randn(V, V, generator=g, dtype=torch.float64))

    def forward(self, input_ids, logits_to_keep: int = 0, targets=None):
        T = input_ids.shape[1]
        logits = self.bigram[input_ids] + self.by_position[:T] + self.by_first[input_ids[:, :1]]
        return lm_output(logits, logits_to_keep, targets)


def window_start(t: int, n: int, window: int, stride: int | None) -> int:
    """Reference: where the window that scores target t (1..n-1) of an n-token stream starts."""
    if stride is None or stride == window:
        return (t - 1) // window * window
    if t <= window:
        return 0
    first_reaching = math.ceil((t - window) / stride) * stride  # smallest multiple with b + W >= t
    return min(first_reaching, max(0, n - 1 - window))  # the last window is right-aligned


def reference_nll(model: KnownLM, ids: list[int], window: int, stride: int | None) -> torch.Tensor:
    out = []
    for t in range(1, len(ids)):
        b = window_start(t, len(ids), window, stride)
        i = t - 1 - b  # input position that predicts x_t
        logits = model.bigram[ids[t - 1]] + model.by_position[i] + model.by_first[ids[b]]
        out.append(-logits.log_softmax(-1)[ids[t]])
    return torch.stack(out)


def stream(n: int, seed: int = 1, vocab: int = V) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n,window,stride", [(40, 8, None), (41, 8, 8), (9, 8, None), (5, 8, None),
                                             (40, 8, 3), (40, 8, 1), (40, 8, 7), (37, 16, 5), (6, 8, 2)])
def test_token_losses_match_hand_computed_nll(n, window, stride):
    model = KnownLM()
    ids = stream(n)
    got = token_losses(model, ids, window, stride, batch_size=3)
    want = reference_nll(model, ids.tolist(), window, stride)
    assert got.shape == (n - 1,)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_sliding_stride_one_gives_every_token_full_context():
    n, window = 30, 8
    for t in range(1, n):
        assert t - window_start(t, n, window, 1) == min(t, window)
    model = KnownLM()
    ids = stream(n, seed=3)
    torch.testing.assert_close(token_losses(model, ids, window, 1, batch_size=4),
                               reference_nll(model, ids.tolist(), window, 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_targets", [1, 2, 7, 8, 9, 16, 17, 50, 101])
@pytest.mark.parametrize("window,stride", [(8, None), (8, 1), (8, 3), (8, 4), (8, 7), (1, 1), (5, None)])
def test_every_target_scored_exactly_once(n_targets, window, stride):
    scored = []
    for start, length, n_scored in windows(n_targets, window, stride):
        assert 1 <= n_scored <= length <= window and start + length <= n_targets
        scored.extend(range(start + length - n_scored + 1, start + length + 1))
    assert scored == list(range(1, n_targets + 1))


def test_train_mode_restored_and_batching_does_not_matter():
    model = KnownLM().train()
    ids = stream(50, seed=5)
    a = token_losses(model, ids, 8, 3, batch_size=1)
    b = token_losses(model, ids, 8, 3, batch_size=100)
    assert model.training
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("stride", [None, 6])
def test_tiny_gpt2_matches_direct_window_computation(stride):
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", max_seq_len=24)
    ids = torch.randint(0, model.config.vocab_size, (61,))
    window = 16
    got = token_losses(model, ids, window, stride, batch_size=3)
    want = []
    with torch.no_grad():
        for t in range(1, len(ids)):
            b = window_start(t, len(ids), window, stride)
            logits = model(ids[b : b + window][None]).logits[0]  # (W, V)
            want.append(-logits.log_softmax(-1)[t - 1 - b, ids[t]])
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=1e-5)


class UniformLM(nn.Module):
    config = SimpleNamespace(max_seq_len=CTX, vocab_size=11)

    def forward(self, input_ids, logits_to_keep: int = 0, targets=None):
        return lm_output(torch.zeros(*input_ids.shape, 11), logits_to_keep, targets)


@pytest.mark.parametrize("stride", [None, 4])
def test_uniform_model_perplexity_is_vocab_size(stride):
    result = perplexity(UniformLM(), stream(30, vocab=11), 10, stride)
    assert result["ppl"] == pytest.approx(11, rel=1e-6)
    assert result["tokens"] == 29
    assert result["protocol"] == ("fixed" if stride is None else "sliding")
    assert result["stride"] == (10 if stride is None else 4)


def test_perplexity_is_exp_of_mean_nll():
    model, ids = KnownLM(), stream(33)
    result = perplexity(model, ids, 8, 3)
    nll = reference_nll(model, ids.tolist(), 8, 3)
    assert result["loss"] == pytest.approx(float(nll.mean()), abs=1e-9)
    assert result["ppl"] == pytest.approx(math.exp(float(nll.mean())), rel=1e-9)


def test_unigram_perplexity_hand_example():
    # counts over V=3: [2, 1, 0] -> add-one p = [3/6, 2/6, 1/6]; eval [0, 2] -> exp(-(ln 1/2 + ln 1/6)/2)
    assert unigram_perplexity([0, 0, 1], [0, 2], 3) == pytest.approx(math.sqrt(12))
    assert unigram_perplexity([], [0, 1, 2, 3], 4) == pytest.approx(4)  # no data: uniform


def test_bits_per_character_formula():
    assert bits_per_character(10 * math.log(2), 5) == pytest.approx(2.0)
    with pytest.raises(LmlabError):
        bits_per_character(1.0, 0)


def test_char_tokenizer_bpc_and_text_size():
    from lmlab.tokenizers.chars import CharTokenizer

    tok = CharTokenizer.train("abc d\n")
    ids = tok.encode("ab") + [tok.eos_token_id] + tok.encode("c d")
    assert scored_text_size(tok, ids) == (5, 5)  # "b", eos as one char, "c d"
    model = UniformLM()
    result = perplexity(model, torch.tensor(ids), 8, tokenizer=tok, per_char=True)
    assert result["bpc"] == pytest.approx(math.log2(11))
    assert result["bits_per_character"] == pytest.approx(math.log2(11) * 5 / 5)


def test_bad_arguments_raise_lmlab_errors():
    model = KnownLM()
    with pytest.raises(LmlabError, match="at least 2 tokens"):
        token_losses(model, torch.tensor([1]), 8)
    with pytest.raises(LmlabError, match="stride"):
        token_losses(model, stream(20), 8, 9)
    with pytest.raises(LmlabError, match="context"):
        token_losses(model, stream(20), CTX + 1)
    with pytest.raises(LmlabError, match="vocabulary"):
        token_losses(model, torch.tensor([0, V]), 8)


# ---------------------------------------------------------------- evaluate_command


@pytest.fixture
def saved_char_model(tmp_path, monkeypatch):
    from lmlab.tokenizers.chars import CharTokenizer

    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(40))
    tok = CharTokenizer.train(text)
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", vocab_size=tok.vocab_size, max_seq_len=32)
    lmlab.save(model, tok, tmp_path / "model")
    (tmp_path / "data.txt").write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("protocol", ["fixed", "sliding"])
def test_evaluate_command_on_text_file(saved_char_model, protocol):
    from lmlab.eval.cli import evaluate_command

    d = saved_char_model
    result = evaluate_command(str(d / "model"), str(d / "data.txt"), protocol=protocol, batch_size=4)
    for key in ("loss", "ppl", "tokens", "protocol", "window", "stride", "bpc",
                "bits_per_character", "bits_per_byte", "characters"):
        assert key in result
    assert math.isfinite(result["ppl"]) and result["ppl"] > 1
    assert json.loads(json.dumps(result)) == result
    assert result["window"] == 32 and result["protocol"] == protocol
    assert result["stride"] == (32 if protocol == "fixed" else 16)
    # char tokenizer, no <unk> in the text: token bpc and text bits per character agree
    assert result["bits_per_character"] == pytest.approx(result["bpc"], rel=1e-9)
    whole = evaluate_command(str(d / "model"), str(d / "data.txt"), split="all", max_tokens=100)
    assert whole["tokens"] == 99


def test_evaluate_command_errors(saved_char_model, tmp_path):
    from lmlab.data.shards import write_shard
    from lmlab.eval.cli import evaluate_command

    d = saved_char_model
    model_dir, data = str(d / "model"), str(d / "data.txt")
    with pytest.raises(LmlabError, match="protocol"):
        evaluate_command(model_dir, data, protocol="memory")
    with pytest.raises(LmlabError, match="stride"):
        evaluate_command(model_dir, data, protocol="sliding", stride=64)
    with pytest.raises(LmlabError, match="stride"):
        evaluate_command(model_dir, data, protocol="sliding", stride=0)
    short = write_shard(tmp_path / "one.bin", [3], vocab_size=10)
    with pytest.raises(LmlabError, match="at least 2"):
        evaluate_command(model_dir, str(short))
    model, _ = lmlab.load(model_dir)
    lmlab.save(model, None, tmp_path / "bare")
    with pytest.raises(LmlabError, match="no tokenizer"):
        evaluate_command(str(tmp_path / "bare"), data)
    lmlab.save(lmlab.build("bert", "tiny"), None, tmp_path / "bert")  # MLM logits: no perplexity
    with pytest.raises(LmlabError, match=r"a bert model \(masked_lm\); perplexity evaluation needs a causal"):
        evaluate_command(str(tmp_path / "bert"), data)
