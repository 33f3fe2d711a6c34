"""ULMFiT's second and third stages (Howard & Ruder 2018, §3.2-3.3) through `lmlab finetune`: task
"lm" on target text, classify with the concat_pool reader (documents read in BPTT chunks, only the
chunks the pooling needs keep a graph), new words at the mean embedding, `--recipe ulmfit` for
GPT too, and bad input as one line."""

from __future__ import annotations

import json

import pytest
import torch

import lmlab
from lmlab.cli import main
from lmlab.errors import DataError
from lmlab.models.heads import concat_pool_read
from lmlab.tasks.finetune import evaluate_task, finetune

FILLER = "the cat sat on a mat and".split()


@pytest.fixture(scope="module")
def ulmfit_dir(tiny_model_dir, word_tokenizer):
    return tiny_model_dir("ulmfit", word_tokenizer)


def test_concat_pool_equals_pooling_the_whole_document_read_at_once():
    torch.manual_seed(0)
    model = lmlab.build("ulmfit", "tiny", dropout=0.0).eval()
    lengths = torch.tensor([11, 4, 7])
    ids = torch.randint(0, 256, (3, 11))
    mask = torch.arange(11)[None, :] < lengths[:, None]
    with torch.no_grad():
        out = concat_pool_read(model, ids, mask, bptt=3, pool_len=5)
        for b, n in enumerate(lengths.tolist()):
            h = model(ids[b:b + 1, :n]).hidden[0]  # (n, D), one call, no chunks
            pooled = h[max(0, n - 5):]
            want = torch.cat([h[-1], pooled.amax(0), pooled.mean(0)])
            torch.testing.assert_close(out.pooled[b], want, rtol=1e-5, atol=1e-6)


def test_chunks_before_the_pooled_tokens_keep_no_graph():
    torch.manual_seed(0)
    model = lmlab.build("ulmfit", "tiny", dropout=0.0).train()
    ids = torch.full((1, 12), 7)
    ids[0, 0], ids[0, 11] = 3, 5  # token 3 only in the first chunk, token 5 only in the pooled last one
    out = concat_pool_read(model, ids, None, bptt=4, pool_len=4)
    assert out.hidden.shape[1] == 4  # only the last chunk's states were kept
    out.pooled.sum().backward()
    grad = model.embed.weight.grad
    assert float(grad[3].abs().sum()) == 0.0 and float(grad[5].abs().sum()) > 0.0


def test_lm_then_classify_with_the_ulmfit_recipe(ulmfit_dir, task_files, tmp_path):
    text = tmp_path / "target.txt"
    records = [json.loads(line) for line in open(task_files["train"], encoding="utf-8")]
    text.write_text("".join(r["text"] + " zebra zebra\n" for r in records), encoding="utf-8")
    lm = finetune(ulmfit_dir, "lm", str(text), str(text), tmp_path / "lm", recipe="ulmfit", epochs=1,
                  batch_size=4, bptt=10, extend_vocab=5, device="cpu", progress=False)
    assert lm["schedule"] == "stlr" and lm["discriminative"] == 2.6 and lm["new_words"] == 1  # zebra
    model, tok = lmlab.load(tmp_path / "lm")
    assert tok.token_to_id("zebra") is not None and model.config.vocab_size == tok.vocab_size
    report = finetune(tmp_path / "lm", "classify", task_files["train"], task_files["dev"], tmp_path / "clf",
                      recipe="ulmfit", epochs=3, batch_size=16, bptt=4, device="cpu", progress=False)
    assert report["reader"] == "concat_pool" and report["unfreeze_every"] == 256 // 16
    assert report["lr"] == 0.01 and report["dev_metrics"]["n"] == 64
    clf, _ = lmlab.load(tmp_path / "clf")
    assert clf.spec.extra == {"bptt": 4, "pool_len": 1400}
    again = evaluate_task(tmp_path / "clf", "classify", task_files["dev"], device="cpu")
    assert again["accuracy"] == report["dev_metrics"]["accuracy"]  # the saved head and BN statistics


def test_lm_fine_tuning_puts_the_tied_embedding_on_top():
    from lmlab.tasks.lm import output_on_top

    model = lmlab.build("ulmfit", "tiny")
    before = model.layer_groups()
    output_on_top(model)
    after = model.layer_groups()
    assert after[-1] == before[0] == [model.embed.weight, model.decoder_bias] and after[:-1] == before[1:]
    assert lmlab.build("ulmfit", "tiny").layer_groups()[0][0].shape == (256, 24)  # other models unchanged


def test_every_classifier_layer_group_gets_a_gradient_and_unfreezing_reaches_the_embedding():
    # A layer group the classifier never uses (the LM's decoder bias had one of its own) would spend an
    # epoch of gradual unfreezing on nothing and divide every LSTM's rate by a further 2.6.
    from lmlab.models.heads import TaskSpec, build_task_model

    torch.manual_seed(0)
    spec = TaskSpec(name="classify", labels=("a", "b"), regression=False, lm_coef=0.0, pair_mode="concat",
                    max_len=64, reader="concat_pool", pad_id=0, dropout=0.1, extra={"bptt": 4, "pool_len": 8})
    model = build_task_model(lmlab.build("ulmfit", "tiny"), spec)
    groups = model.layer_groups()  # embedding (+ the unused bias), 3 LSTM layers, the head: fastai's split
    assert len(groups) == 5 and groups[0][0] is model.backbone.embed.weight
    out = model(torch.randint(0, 256, (3, 10)), torch.ones(3, 10, dtype=torch.long))
    out.logits.sum().backward()
    for k, group in enumerate(groups):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in group), f"group {k}: no gradient"


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_the_ulmfit_recipe_fine_tunes_gpt_and_bert_too(family, tiny_gpt_dir, tiny_model_dir, task_files,
                                                       tmp_path):
    from lmlab.tokenizers.wordpiece import WordPieceTokenizer

    pieces = WordPieceTokenizer.train([" ".join(FILLER + ["good", "bad"])] * 2, vocab_size=60)
    model_dir = tiny_gpt_dir if family == "gpt2" else tiny_model_dir("bert", pieces)
    report = finetune(model_dir, "classify", task_files["train"], task_files["dev"], tmp_path / "g",
                      recipe="ulmfit", epochs=2, batch_size=32, device="cpu", progress=False)
    assert report["schedule"] == "stlr" and report["discriminative"] == 2.6
    assert report["unfreeze_every"] == 256 // 32 and report["lr"] == 0.01
    model, _ = lmlab.load(tmp_path / "g")
    groups = model.layer_groups()
    assert len(groups) >= 3 and groups[-1] == list(model.head.parameters())  # the head on top


def test_a_document_without_tokens_is_one_line(ulmfit_dir, jsonl, tmp_path, capsys):
    bad = jsonl(tmp_path / "bad.jsonl", [{"text": "good cat", "label": "a"}, {"text": "  ", "label": "b"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: the text has no tokens"):
        finetune(ulmfit_dir, "classify", bad, bad, tmp_path / "o", device="cpu", progress=False)


def test_bptt_longer_than_the_target_text_is_one_line(ulmfit_dir, tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text(" ".join(FILLER[:6]) + "\n", encoding="utf-8")
    code = main(["finetune", str(ulmfit_dir), "--task", "lm", "--train", str(text), "--dev", str(text),
                 "--out", str(tmp_path / "o"), "--bptt", "70", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "fewer than seq_len + 1 = 71" in err and "\n" not in err


@pytest.mark.parametrize("task, features", [("tag", False), ("classify", True)])
def test_extend_vocab_outside_classify_and_lm_is_one_line(ulmfit_dir, task_files, tmp_path, capsys, task,
                                                          features):
    args = ["finetune", str(ulmfit_dir), "--task", task, "--train", task_files["train"], "--dev",
            task_files["dev"], "--out", str(tmp_path / "o"), "--extend-vocab", "5", "--device", "cpu"]
    code = main(args + (["--features"] if features else []))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--extend-vocab applies to tasks classify and lm" in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # refused before anything is written
