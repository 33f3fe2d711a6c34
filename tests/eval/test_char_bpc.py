"""Bits per character of the character transformer under both protocols (Al-Rfou et al. 2018, §3).

The paper's protocol predicts each character from its full preceding window (stride 1): it must
equal a brute-force loop that runs one forward per character on exactly that window. A model with
constant logits must give bpc = log2(V) under the paper's and the fast (non-overlapping) protocol.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import lmlab
from lmlab.cli import main
from lmlab.eval.perplexity import perplexity, token_losses
from lmlab.tokenizers.chars import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")
TEXT = "the cat sat on the mat and the dog ran to the big red house "


def tiny(**fields):
    torch.manual_seed(0)
    return lmlab.build("char-transformer", "tiny", **{"vocab_size": 29, **fields}).eval()


def brute_force(model, ids: torch.Tensor, window: int) -> torch.Tensor:
    """-ln p(ids[t] | ids[max(0, t - window):t]) for t = 1 .. N-1: one forward per character."""
    out = []
    with torch.no_grad():
        for t in range(1, len(ids)):
            context = ids[max(0, t - window):t]
            logp = model(context[None]).logits[0, -1].double().log_softmax(-1)
            out.append(-logp[ids[t]])
    return torch.stack(out)


@pytest.mark.parametrize("window,batch_size", [(16, 8), (7, 3), (64, 5)])
def test_paper_protocol_equals_one_forward_per_character(window, batch_size):
    model = tiny()
    ids = torch.randint(0, 29, (90,), generator=torch.Generator().manual_seed(window))
    got = token_losses(model, ids, window=window, stride=1, batch_size=batch_size)
    torch.testing.assert_close(got.double(), brute_force(model, ids, window), rtol=1e-5, atol=1e-5)
    fast = token_losses(model, ids, window=window)  # non-overlapping windows: less context, other numbers
    assert not torch.allclose(fast.double(), got.double(), atol=1e-4)
    torch.testing.assert_close(fast[:window], got[:window])  # the first window is the same in both


def test_constant_logits_give_log2_vocab_under_both_protocols():
    tok = CharTokenizer.train([TEXT])
    model = tiny(vocab_size=tok.vocab_size)
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit 0: the uniform distribution
    ids = torch.tensor(tok.encode(TEXT * 3))
    for stride in (None, 1):
        result = perplexity(model, ids, window=16, stride=stride, tokenizer=tok)
        assert result["bpc"] == pytest.approx(math.log2(tok.vocab_size), abs=1e-6), stride
        assert result["tokens"] == len(ids) - 1


def test_evaluate_command_runs_the_paper_protocol(tiny_model_dir, tmp_path, capsys):
    tok = CharTokenizer.train([TEXT])
    model_dir = tiny_model_dir("char-transformer", tok, max_seq_len=16)
    text = tmp_path / "text.txt"
    text.write_text(TEXT * 2)
    assert main(["evaluate", str(model_dir), "--data", str(text), "--split", "all", "--protocol", "sliding",
                 "--stride", "1", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    model, _ = lmlab.load(model_dir)
    ids = torch.tensor(tok.encode(TEXT * 2) + [tok.eos_token_id])  # a document ends with <eos>
    want = brute_force(model, ids, 16)
    assert result["tokens"] == len(ids) - 1 and result["window"] == 16 and result["stride"] == 1
    assert result["bpc"] == pytest.approx(float(want.mean()) / math.log(2), rel=1e-6)
