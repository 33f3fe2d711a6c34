"""TaskModel: GPT's input transformations, what the heads read, the auxiliary loss, save/load."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.errors import CheckpointError
from lmlab.models.heads import TaskSpec, build_task_model
from lmlab.tasks import choice, classify
from lmlab.tasks.base import add_task_tokens, lm_aux_loss
from lmlab.tasks.finetune import make_objective


def decoder_task(tokenizer, name="classify", pair_mode="concat", labels=("bad", "good"), family="gpt2"):
    """(model, tokenizer, spec): a tiny decoder with task tokens and a non-trivial head, in eval mode."""
    tok = copy.deepcopy(tokenizer)  # add_special_tokens changes the tokenizer
    torch.manual_seed(0)
    backbone = lmlab.build(family, "tiny", vocab_size=tok.vocab_size)
    ids = add_task_tokens(backbone, tok)
    spec = TaskSpec(name, labels=labels, pair_mode=pair_mode, dropout=0.0, pad_id=0, **ids)
    model = build_task_model(backbone, spec).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.5)
    return model, tok, spec


def logits(model, **batch):
    with torch.no_grad():
        return model(**batch).logits


def test_task_tokens_grow_the_tied_embedding(word_tokenizer):
    torch.manual_seed(0)
    backbone = lmlab.build("gpt", "tiny", vocab_size=word_tokenizer.vocab_size)
    old = backbone.wte.weight.detach().clone()
    tok = copy.deepcopy(word_tokenizer)
    ids = add_task_tokens(backbone, tok)
    n = old.shape[0]
    assert sorted(ids.values()) == [n, n + 1, n + 2] and tok.vocab_size == n + 3
    assert backbone.config.vocab_size == n + 3 and backbone.wte.weight.shape == (n + 3, old.shape[1])
    assert backbone.lm_head.weight is backbone.wte.weight  # the tie survives
    assert torch.equal(backbone.wte.weight[:n], old)
    assert 0 < float(backbone.wte.weight[n:].detach().std()) < 0.1  # N(0, 0.02) rows
    assert add_task_tokens(backbone, tok) == ids and backbone.config.vocab_size == n + 3  # idempotent


def test_classifier_reads_exactly_the_extract_position(word_tokenizer):
    model, tok, spec = decoder_task(word_tokenizer)
    text = tok.encode("the cat good sat")
    row = [spec.start_id, *text, spec.extract_id]
    T, L = len(row) + 3, len(row)
    ids = torch.tensor([row + [0, 0, 0]])
    mask = torch.tensor([[1] * L + [0] * 3])
    index = torch.tensor([L - 1])
    base = logits(model, input_ids=ids, attention_mask=mask, extract_index=index)

    other_pad = ids.clone()
    other_pad[0, L:] = torch.tensor(tok.encode("red blue car"))
    torch.testing.assert_close(logits(model, input_ids=other_pad, attention_mask=mask, extract_index=index),
                               base, rtol=0, atol=1e-6)
    # Real tokens after <extract> (unmasked) cannot reach it: the decoder is causal.
    # (No extract_index: the position is found from extract_id.)
    full = torch.ones(1, T, dtype=torch.long)
    unmasked = logits(model, input_ids=other_pad, attention_mask=full)
    torch.testing.assert_close(unmasked, base, rtol=0, atol=1e-6)
    # Alone, unpadded, or next to a longer row: the same logits.
    torch.testing.assert_close(logits(model, input_ids=torch.tensor([row])), base, rtol=0, atol=1e-6)
    longer = [spec.start_id, *tok.encode("a big red house with a dog bad"), spec.extract_id]
    two = torch.tensor([row + [0] * (len(longer) - L), longer])
    two_mask = torch.tensor([[1] * L + [0] * (len(longer) - L), [1] * len(longer)])
    both = logits(model, input_ids=two, attention_mask=two_mask)
    torch.testing.assert_close(both[:1], base, rtol=0, atol=1e-5)
    # The token at the extract position matters.
    changed = ids.clone()
    changed[0, L - 1] = tok.encode("dog")[0]
    moved = logits(model, input_ids=changed, attention_mask=mask, extract_index=index)
    assert not torch.allclose(moved, base)


def test_similarity_is_symmetric_concat_is_not(word_tokenizer):
    a, b = "the cat sat good", "red car with a dog"
    for mode, symmetric in (("similarity", True), ("concat", False)):
        model, tok, spec = decoder_task(word_tokenizer, name="pair", pair_mode=mode)
        examples = [classify.Example(a, b, "good", "x:1"), classify.Example(b, a, "good", "x:2")]
        batch = classify.collate(classify.featurize(examples, tok, spec), spec)
        batch.pop("labels")
        out = logits(model, **batch)
        assert out.shape == (2, 2)
        if symmetric:
            assert batch["input_ids"].shape[:2] == (2, 2)
            torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-6)
        else:
            assert not torch.allclose(out[0], out[1])


def test_aux_lm_loss_and_objective(word_tokenizer):
    model, tok, spec = decoder_task(word_tokenizer)
    examples = [classify.Example("the cat good", None, "good", "x:1"),
                classify.Example("a dog ran to the big red house bad", None, "bad", "x:2")]
    batch = classify.collate(classify.featurize(examples, tok, spec), spec)
    out = model(**batch)
    # By hand: next-token NLL over the real tokens of each row, averaged over all of them.
    lm_logits = model.backbone(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll = []
    for i, n in enumerate(batch["attention_mask"].sum(-1).tolist()):
        lp = torch.log_softmax(lm_logits[i, :n - 1].float(), -1)
        nll += [-lp[t, batch["input_ids"][i, t + 1]] for t in range(n - 1)]
    torch.testing.assert_close(lm_aux_loss(out, batch), torch.stack(nll).mean())
    cls = classify.loss(out, batch, spec)
    for coef in (0.0, 0.5):
        s = TaskSpec(**{**spec.to_dict(), "labels": spec.labels, "lm_coef": coef})
        torch.testing.assert_close(make_objective(classify, s)(model, batch),
                                   cls + coef * lm_aux_loss(out, batch))


def test_choice_options_are_scored_and_missing_ones_masked(word_tokenizer):
    model, tok, spec = decoder_task(word_tokenizer, name="choice", labels=())
    examples = [choice.Example("the cat sat", ("good", "bad", "red car"), 0, "x:1"),
                choice.Example("a dog ran", ("bad", "good"), 1, "x:2")]
    feats = choice.featurize(examples, tok, spec)
    assert feats[0]["input_ids"][0] == [spec.start_id, *tok.encode("the cat sat"), spec.delim_id,
                                        *tok.encode("good"), spec.extract_id]
    batch = choice.collate(feats, spec)
    assert batch["input_ids"].shape[:2] == (2, 3) and batch["choice_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    out = logits(model, **batch)
    assert torch.softmax(out, -1)[1, 2] == 0
    alone = logits(model, **choice.collate(feats[1:], spec))
    torch.testing.assert_close(out[1, :2], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt", "gpt2"])
def test_save_load_task_model_identical_logits(tmp_path, word_tokenizer, family):
    model, tok, spec = decoder_task(word_tokenizer, family=family)
    examples = [classify.Example("the cat good", None, "good", "x:1")]
    batch = classify.collate(classify.featurize(examples, tok, spec), spec)
    lmlab.save(model, tok, tmp_path / "ft")
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["family"] == family and config["task"]["labels"] == ["bad", "good"]
    assert config["vocab_size"] == tok.vocab_size
    keys = set(load_file(str(tmp_path / "ft" / "model.safetensors")))
    assert keys and all(k.startswith(("backbone.", "head.")) for k in keys)
    loaded, tok2 = lmlab.load(tmp_path / "ft")
    assert type(loaded).__name__ == "TaskModel" and loaded.spec == spec
    assert tok2.token_to_id("<extract>") == spec.extract_id
    torch.testing.assert_close(logits(loaded, **batch), logits(model, **batch), rtol=0, atol=0)
    config["task"]["name"] = "nope"
    (tmp_path / "ft" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json"):
        lmlab.load(tmp_path / "ft", verify=False)


def test_encoder_reads_pooled_cls_and_ignores_padding():
    wordpiece = pytest.importorskip("lmlab.tokenizers.wordpiece")
    tok = wordpiece.WordPieceTokenizer.train(["the cat sat on a mat good bad red car"] * 5, vocab_size=60)
    torch.manual_seed(0)
    backbone = lmlab.build("bert", "tiny", vocab_size=tok.vocab_size)
    spec = TaskSpec("pair", labels=("bad", "good"), reader="pooled_cls", pad_id=tok.pad_token_id, dropout=0.0)
    model = build_task_model(backbone, spec).eval()
    examples = [classify.Example("the cat good", "red car", "good", "x:1"),
                classify.Example("a mat", "the cat sat on a red car", "bad", "x:2")]
    feats = classify.featurize(examples, tok, spec)
    assert feats[0]["input_ids"][0] == tok.cls_token_id and feats[0]["token_type_ids"][-1] == 1
    batch = classify.collate(feats, spec)
    both = logits(model, **batch)
    alone = logits(model, **classify.collate(feats[:1], spec))
    torch.testing.assert_close(both[:1], alone, rtol=0, atol=1e-5)
    with torch.no_grad():
        pooled = backbone(batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch["token_type_ids"]).pooled
        torch.testing.assert_close(both, model.head.linear(pooled))
