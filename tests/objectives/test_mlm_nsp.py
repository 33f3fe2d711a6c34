"""BERT's MLM + NSP objective: masking statistics and purity, the loss, and `lmlab pretrain --model bert`."""

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.cli import main
from lmlab.data.masking import IGNORE, MaskingSpec, dynamic_mask, mask_tokens, static_mask
from lmlab.data.pairs import PairData, PairSampler
from lmlab.errors import ConfigError
from lmlab.nn.lm_loss import labelled_positions
from lmlab.objectives.mlm_nsp import metrics_from_sums, mlm_nsp_loss, mlm_nsp_sums

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
V = 1000
SPEC = MaskingSpec(mask_id=MASK, vocab_size=V, never_mask=(PAD, CLS, SEP, MASK), special_ids=(0, 1, 2, 3, 4))


def row(rng, seq_len=128):
    """[CLS] a [SEP] b [SEP] [PAD]... with random lengths."""
    n_a, n_b = rng.integers(1, 60), rng.integers(1, 60)
    ids = np.full(seq_len, PAD)
    ids[: n_a + n_b + 3] = [CLS, *rng.integers(5, V, n_a), SEP, *rng.integers(5, V, n_b), SEP]
    return ids


pytestmark = pytest.mark.usefixtures("one_thread_private_cache")  # tests/conftest.py


# --- masking ------------------------------------------------------------------------------------------
def test_masking_statistics_over_many_positions():
    rng = np.random.default_rng(0)
    candidates = chosen = masked = swapped = kept = 0
    for i in range(3000):
        ids = row(rng)
        out, labels = mask_tokens(ids, SPEC, np.random.default_rng(i))
        structural = np.isin(ids, (PAD, CLS, SEP))
        picked = labels != IGNORE
        assert not (picked & structural).any()  # [CLS], [SEP], [PAD] never chosen
        assert np.array_equal(out[~picked], ids[~picked]) and np.array_equal(labels[picked], ids[picked])
        assert picked.sum() == max(1, round(0.15 * (~structural).sum() + 1e-9))
        candidates += (~structural).sum()
        chosen += picked.sum()
        masked += (out[picked] == MASK).sum()
        swap = picked & (out != MASK) & (out != ids)
        assert not np.isin(out[swap], SPEC.special_ids).any()  # random tokens are never special
        swapped += swap.sum()
        kept += (picked & (out == ids)).sum()
    assert candidates > 100_000
    assert abs(chosen / candidates - 0.15) < 0.005
    assert abs(masked / chosen - 0.8) < 0.01
    assert abs(swapped / chosen - 0.1) < 0.01
    assert abs(kept / chosen - 0.1) < 0.01


def test_at_least_one_position_and_none_without_candidates():
    out, labels = mask_tokens(np.array([CLS, 7, SEP, PAD]), SPEC, np.random.default_rng(0))
    assert labels.tolist() == [IGNORE, 7, IGNORE, IGNORE]
    _, labels = mask_tokens(np.array([CLS, SEP, PAD]), SPEC, np.random.default_rng(0))
    assert (labels == IGNORE).all()


def test_dynamic_masking_is_a_pure_function_of_seed_step_index():
    ids = row(np.random.default_rng(1))
    a = dynamic_mask(ids, SPEC, seed=0, step=5, index=3)
    b = dynamic_mask(ids, SPEC, seed=0, step=5, index=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    for other in (dict(seed=0, step=6, index=3), dict(seed=0, step=5, index=4),
                  dict(seed=1, step=5, index=3)):
        assert not np.array_equal(dynamic_mask(ids, SPEC, **other)[1], a[1])


def test_static_dupe_factor_gives_different_fixed_maskings():
    ids = row(np.random.default_rng(2))
    copies = [static_mask(ids, SPEC, seed=0, instance=7, dupe=j)[1] for j in range(10)]
    assert len({c.tobytes() for c in copies}) == 10
    assert np.array_equal(static_mask(ids, SPEC, seed=0, instance=7, dupe=3)[1], copies[3])


def test_spec_from_wordpiece_tokenizer():
    from lmlab.tokenizers.wordpiece import WordPieceTokenizer

    tok = WordPieceTokenizer.train(["the cat sat on the mat"] * 5, vocab_size=60)
    spec = MaskingSpec.from_tokenizer(tok)
    assert spec.mask_id == tok.mask_token_id and set(spec.never_mask) == {0, 2, 3, 4}
    assert not np.isin(spec.random_pool, [0, 1, 2, 3, 4]).any()
    assert spec.random_pool.size == tok.vocab_size - 5
    with pytest.raises(ConfigError, match="wordpiece"):
        MaskingSpec.from_tokenizer(object())


# --- the loss -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    docs = [[rng.integers(5, 100, size=rng.integers(2, 12)).tolist() for _ in range(6)] for _ in range(5)]
    spec = MaskingSpec(mask_id=MASK, vocab_size=100, never_mask=(0, 2, 3, 4), special_ids=(0, 1, 2, 3, 4))
    return PairSampler(PairData.from_ids(docs), 32, 6, spec, CLS, SEP, PAD, seed=0).batch(0)


def test_labelled_positions_list_every_label_first():
    labels = torch.tensor([[IGNORE, 5, IGNORE, 6], [7, IGNORE, IGNORE, IGNORE]])
    pos = labelled_positions(labels)
    assert pos[:, :2].tolist() == [[1, 3], [0, 1]] and pos.shape == (2, 4)
    assert labels.gather(1, pos).tolist() == [[5, 6, IGNORE, IGNORE], [7, IGNORE, IGNORE, IGNORE]]


def test_loss_equals_full_logits_cross_entropy(batch):
    torch.manual_seed(0)
    model = lmlab.build("bert", "tiny", vocab_size=100)
    model.eval()
    loss = mlm_nsp_loss(model, batch)
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"])
    mlm = F.cross_entropy(out.logits.reshape(-1, 100), batch["mlm_labels"].reshape(-1), ignore_index=IGNORE)
    nsp = F.cross_entropy(out.nsp_logits, batch["nsp_labels"])
    torch.testing.assert_close(loss, mlm + nsp)
    mlm, nsp = mlm.item(), nsp.item()
    m = metrics_from_sums(mlm_nsp_sums(model, batch))
    assert set(m) == {"loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"}
    assert m["mlm_loss"] == pytest.approx(mlm, rel=1e-5) and m["nsp_loss"] == pytest.approx(nsp, rel=1e-5)
    assert 0 <= m["mlm_acc"] <= 1 and 0 <= m["nsp_acc"] <= 1
    loss.backward()
    assert model.nsp.weight.grad.abs().sum() > 0 and model.word_emb.weight.grad.abs().sum() > 0


# --- lmlab pretrain --model bert ----------------------------------------------------------------------
WORDS = "the cat sat on a mat and dog ran to big red house with small blue car".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six documents, each drawing its words from its own part of the word list."""
    folder = tmp_path_factory.mktemp("docs")
    rng = random.Random(0)
    for d in range(6):
        words = WORDS[d * 2 : d * 2 + 8]
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) for _ in range(50)]
        (folder / f"doc{d}.txt").write_text("\n".join(lines) + "\n")
    return folder


def bert_args(corpus, out, **flags):
    values = {"model": "bert", "preset": "tiny", "data": str(corpus), "out": str(out), "steps": 30,
              "batch_size": 8, "seq_len": 64, "lr": 1e-3, "warmup": 3, "log_every": 1, "eval_every": 10,
              "eval_batches": 2, "save_every": 10, "device": "cpu", "vocab_size": 120, **flags}
    args = ["pretrain", "--no-progress", "--set", "dropout=0.1"]
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def rows(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]


def test_pretrain_bert_learns_and_resumes_bitwise(tmp_path, corpus, monkeypatch, capsys):
    reference = tmp_path / "reference"
    assert main(bert_args(corpus, reference)) == 0
    logged = rows(reference)
    losses = [r["loss"] for r in logged if "loss" in r]
    assert len(losses) == 30 and np.mean(losses[-5:]) < losses[0] - 0.5, losses
    evals = [r for r in logged if "val_mlm_acc" in r]
    assert len(evals) == 3 and evals[-1]["val_mlm_loss"] < evals[0]["val_mlm_loss"]
    assert {"val_loss", "val_mlm_loss", "val_nsp_loss", "val_mlm_acc", "val_nsp_acc"} <= set(evals[0])
    model, tok = lmlab.load(reference)
    assert lmlab.models.registry.family_of(model) == "bert" and tok.kind == "wordpiece"

    # Interrupt a second run at step 16 (after the step-10 checkpoint), then resume it.
    import lmlab.train.loop as loop

    calls, lr_at = [], loop.lr_at

    def failing_lr_at(*args, **kwargs):
        calls.append(1)
        if len(calls) == 16:
            raise RuntimeError("interrupted")
        return lr_at(*args, **kwargs)

    run = tmp_path / "resumed"
    monkeypatch.setattr(loop, "lr_at", failing_lr_at)
    with pytest.raises(RuntimeError, match="interrupted"):
        main(bert_args(corpus, run))
    monkeypatch.setattr(loop, "lr_at", lr_at)
    capsys.readouterr()
    assert main(bert_args(corpus, run, resume=True)) == 0
    assert "resumed from step 10" in capsys.readouterr().out
    assert rows(run) == logged


def test_masking_flags_are_for_bert_only(tmp_path, corpus):
    args = bert_args(corpus, tmp_path / "gpt", model="gpt2", masking="static")
    assert main(args) == 2
