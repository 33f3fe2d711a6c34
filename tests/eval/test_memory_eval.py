"""The memory protocol of Transformer-XL evaluation, eval-only settings and presets, and the
`lmlab evaluate` options for them, against hand-written segment loops of the model itself."""

from __future__ import annotations

import math

import pytest
import torch

import lmlab
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.eval import token_losses
from lmlab.eval.memory import (
    EVAL_PRESETS,
    EvalSettings,
    eval_settings,
    memory_perplexity,
    memory_token_losses,
    resolve_settings,
)

V = 40


pytestmark = pytest.mark.usefixtures("one_thread_private_cache")  # tests/conftest.py


def tiny_txl(**overrides):
    torch.manual_seed(0)
    # A wide init, so that memory, clamping and the window change the numbers visibly.
    values = dict(vocab_size=V, tgt_len=5, mem_len=7, init_std=0.3, dropout=0.1)
    return lmlab.build("transfo-xl", "tiny", **{**values, **overrides})


def stream(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def manual_segments(model, ids: torch.Tensor, seg: int, starts=None) -> torch.Tensor:
    """The reference loop: consecutive segments of one stream (starting at `starts`, default
    every seg targets), each continuing the memory of the one before."""
    model.eval()
    n = len(ids) - 1
    starts = list(range(0, n, seg)) if starts is None else list(starts)
    mems, out = None, []
    for s, e in zip(starts, [*starts[1:], n], strict=True):
        nll, mems = model.nll(ids[None, s:e], ids[None, s + 1:e + 1], mems)
        out.append(nll[0])
    return torch.cat(out)


@pytest.mark.parametrize("n", [2, 6, 23, 36])
@pytest.mark.parametrize("same_length,clamp_len", [(False, 0), (True, 3)])
def test_memory_protocol_is_the_segment_loop(n, same_length, clamp_len):
    model = tiny_txl(same_length=same_length, clamp_len=clamp_len).train()
    ids = stream(n)
    got = memory_token_losses(model, ids)
    assert got.shape == (n - 1,)  # every target once
    assert model.training  # the mode comes back
    torch.testing.assert_close(got, manual_segments(model, ids, 5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n,streams", [(37, 3), (40, 4), (9, 4), (4, 10), (50, 3)])
def test_parallel_streams_are_independent_segment_loops(n, streams):
    model = tiny_txl()
    ids = stream(n, seed=1)
    got = memory_token_losses(model, ids, streams=streams)
    assert got.shape == (n - 1,)
    B = min(streams, n - 1)
    L = (n - 1) // B
    # Stream b scores targets b*L+1 .. (b+1)*L from an empty memory, in segments of 5; the last
    # stream then goes on alone over the tail, continuing its memory.
    want = [manual_segments(model, ids[b * L : (b + 1) * L + 1], 5) for b in range(B - 1)]
    last = ids[(B - 1) * L :]
    want.append(manual_segments(model, last, 5, [*range(0, L, 5), *range(L, len(last) - 1, 5)]))
    torch.testing.assert_close(got, torch.cat(want), atol=1e-5, rtol=0)


def test_memory_longer_than_the_stream_equals_one_pass():
    model = tiny_txl().eval()
    ids = stream(41, seed=2)
    with eval_settings(model, EvalSettings(tgt_len=6, mem_len=64, clamp_len=0, same_length=False)):
        got = memory_token_losses(model, ids)
    with torch.no_grad():
        once = model.nll(ids[None, :-1], ids[None, 1:])[0][0]
    torch.testing.assert_close(got, once, atol=1e-5, rtol=0)


def test_no_memory_is_fixed_windows_of_tgt_len():
    model = tiny_txl()
    ids = stream(30, seed=3)
    with eval_settings(model, EvalSettings(tgt_len=6, mem_len=0, clamp_len=0, same_length=False)):
        got = memory_token_losses(model, ids)
    torch.testing.assert_close(got, token_losses(model, ids, 6), atol=1e-5, rtol=0)


def test_fixed_windows_of_a_memory_model_start_from_an_empty_memory():
    model = tiny_txl().eval()
    ids = stream(25, seed=4)
    got = token_losses(model, ids, 8)
    with torch.no_grad():
        want = torch.cat([model.nll(ids[None, s:min(s + 8, 24)], ids[None, s + 1:min(s + 9, 25)])[0][0]
                          for s in range(0, 24, 8)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_memory_changes_every_segment_but_the_first():
    model = tiny_txl()
    ids = stream(12, seed=5).repeat(4)
    with eval_settings(model, EvalSettings(5, 0, 0, False)):
        none = memory_token_losses(model, ids)
    with eval_settings(model, EvalSettings(5, 20, 0, False)):
        some = memory_token_losses(model, ids)
    torch.testing.assert_close(some[:5], none[:5])  # the first segment has nothing to remember
    for s in range(5, len(ids) - 1, 5):
        assert not torch.allclose(some[s:s + 5], none[s:s + 5])


def test_eval_settings_restore_the_config_and_are_validated():
    model = tiny_txl()
    before = model.config
    with eval_settings(model, EVAL_PRESETS["wt103-base"]):
        assert (model.config.tgt_len, model.config.mem_len, model.config.clamp_len,
                model.config.same_length) == (64, 640, 400, True)
    assert model.config is before
    with pytest.raises(LmlabError, match="mem-len"):
        EvalSettings(tgt_len=4, mem_len=-1, clamp_len=0, same_length=False)
    with pytest.raises(LmlabError, match="same-length"):
        EvalSettings(tgt_len=4, mem_len=0, clamp_len=0, same_length=True)


def test_eval_presets_are_the_papers_scripts():
    assert {k: (s.tgt_len, s.mem_len, s.clamp_len, s.same_length) for k, s in EVAL_PRESETS.items()} == {
        "wt103-base": (64, 640, 400, True),
        "wt103-large": (128, 1600, 1000, True),
        "enwik8-12l": (80, 2100, 820, True),
        "enwik8-24l": (128, 3800, 1000, True),
        "text8-24l": (128, 3800, 1000, True),
        "lm1b": (32, 128, 0, True),
    }


def test_flags_win_over_the_preset_which_wins_over_the_config():
    model = tiny_txl()
    assert resolve_settings(model) == EvalSettings(5, 7, 0, False)
    assert resolve_settings(model, "wt103-large") == EvalSettings(128, 1600, 1000, True)
    assert resolve_settings(model, "wt103-large", mem_len=50, same_length=False) == \
        EvalSettings(128, 50, 1000, False)
    assert resolve_settings(model, "wt103-base", mem_len=0) == EvalSettings(64, 0, 400, False)
    with pytest.raises(LmlabError, match="eval-preset"):
        resolve_settings(model, "enwik9")
    gpt = lmlab.build("gpt2", "tiny")
    assert resolve_settings(gpt) is None
    with pytest.raises(LmlabError, match="transfo-xl"):
        resolve_settings(gpt, mem_len=4)


def test_memory_perplexity_result():
    model = tiny_txl()
    ids = stream(50, seed=6)
    result = memory_perplexity(model, ids, EvalSettings(8, 16, 4, True), streams=2)
    assert result["tokens"] == 49 and result["protocol"] == "memory" and result["streams"] == 2
    settings = (result["tgt_len"], result["mem_len"], result["clamp_len"], result["same_length"])
    assert settings == (8, 16, 4, True)
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]))
    with pytest.raises(LmlabError, match="memory"):
        memory_perplexity(lmlab.build("gpt2", "tiny"), ids)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from lmlab.tokenizers.chars import CharTokenizer

    d = tmp_path_factory.mktemp("txl")
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(30))
    tok = CharTokenizer.train(text)
    torch.manual_seed(0)
    lmlab.save(lmlab.build("transfo-xl", "tiny", vocab_size=tok.vocab_size), tok, d / "txl")
    lmlab.save(lmlab.build("gpt2", "tiny", vocab_size=tok.vocab_size, max_seq_len=32), tok, d / "gpt")
    (d / "data.txt").write_text(text, encoding="utf-8")
    return d


def test_evaluate_command_protocols_of_a_memory_model(saved, monkeypatch, tmp_path):
    from lmlab.eval.cli import evaluate_command

    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    model_dir, data = str(saved / "txl"), str(saved / "data.txt")
    memory = evaluate_command(model_dir, data, split="all", protocol="memory", batch_size=1, mem_len=32,
                              clamp_len=10, same_length=True)
    settings = (memory["tgt_len"], memory["mem_len"], memory["clamp_len"], memory["same_length"])
    assert memory["protocol"] == "memory" and settings == (16, 32, 10, True)
    assert memory["bpc"] == pytest.approx(memory["loss"] / math.log(2))
    fixed = evaluate_command(model_dir, data, split="all", protocol="fixed")
    assert fixed["tokens"] == memory["tokens"] > 1500  # every token once, in both
    assert fixed["window"] == 16 + 16  # default: the memory protocol's attention span, tgt + mem
    preset = evaluate_command(model_dir, data, split="all", protocol="memory", eval_preset="lm1b",
                              max_tokens=300)
    assert (preset["tgt_len"], preset["mem_len"], preset["tokens"]) == (32, 128, 299)


@pytest.mark.parametrize("args,message", [
    (["gpt", "--protocol", "memory"], "memory protocol needs a model that carries memory"),
    (["gpt", "--mem-len", "8"], "--mem-len apply to models with memory"),
    (["txl", "--mem-len", "-1"], "--mem-len must be an integer >= 0"),
    (["txl", "--tgt-len", "0", "--protocol", "memory"], "--tgt-len must be an integer >= 1"),
    (["txl", "--protocol", "memory", "--stride", "4"], "--window and --stride apply to the fixed"),
    (["txl", "--mem-len", "0", "--same-length"], "--same-length needs --mem-len > 0"),
])
def test_cli_errors_are_one_line(saved, capsys, args, message):
    name, *rest = args
    data = str(saved / "data.txt")
    assert main(["evaluate", str(saved / name), "--data", data, "--split", "all", *rest]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
