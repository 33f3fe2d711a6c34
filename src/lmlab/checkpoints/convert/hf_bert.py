"""The Hugging Face `bert` layouts <-> lmlab's `bert` family.

Read: BertModel (keys with or without the `bert.` prefix; sentence-transformers' MiniLM has none),
BertForPreTraining (heads "mlm_nsp"), BertForMaskedLM ("mlm"), and the task layouts
BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering and
BertForMultipleChoice. What is built follows the tensors present, not only `architectures`:
released checkpoints often name BertForMaskedLM but still hold the NSP classifier and the pooler,
which then load too (heads "mlm_nsp"); a layout without `pooler.dense` gives `pooler=False`.

Names: HF keeps query, key and value as three Linear layers; lmlab's SelfAttention fuses them
into `c_attn` (rows q, then k, then v). The MLM decoder is tied to the word embedding (its
`cls.predictions.decoder.weight`, when stored, must equal it); its bias is
`cls.predictions.bias`. Older checkpoints name LayerNorm parameters gamma/beta and store an
`embeddings.position_ids` buffer: both are accepted. Activations: HF's "gelu" is the exact
(erf) GELU, lmlab's "gelu". lmlab has one dropout rate; it takes `hidden_dropout_prob`.

Task layouts: `from_hf` gives the encoder (heads "none"; not yet an lmlab.models.heads TaskModel) with
`model.hf_task_head = HFTaskHead(architecture, tensors, num_labels, id2label)`; the tensors keep
their HF names (`classifier.*` or `qa_outputs.*`, see `task_head_from_hf`). HF applies them as:
sequence classification and multiple choice on `pooled` (choices: logits (B·C, 1) -> (B, C)),
token classification on `hidden`, QA on `hidden` with start = [..., 0], end = [..., 1]. `to_hf`
writes a model carrying `hf_task_head` back in that layout (the attribute is not kept by
lmlab.save). `to_hf` otherwise writes BertForPreTraining ("mlm_nsp"), BertForMaskedLM ("mlm")
or BertModel ("none"). transformers reports the two cases lmlab has and its classes lack: an
"mlm" model with a pooler (its pooler tensors are UNEXPECTED for BertForMaskedLM and skipped, as
for released checkpoints) and a "none" model without one (BertModel gets a fresh pooler).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from lmlab.checkpoints.atomic import write_bytes_atomic
from lmlab.checkpoints.convert.common import (
    ReadWeights,
    added_tokens_decoder,
    build_loaded,
    check_names,
    concat,
    copy_into,
    lookup,
    same_values,
)
from lmlab.errors import ConversionError
from lmlab.tokenizers.wordpiece import WordPieceTokenizer

PRETRAINING, MASKED_LM, ENCODER = "BertForPreTraining", "BertForMaskedLM", "BertModel"
# Task architecture -> the HF module name of its head (both sequence/token classification heads
# are called `classifier`; the architecture tells them apart).
TASK_HEADS = {
    "BertForSequenceClassification": "classifier",
    "BertForTokenClassification": "classifier",
    "BertForMultipleChoice": "classifier",
    "BertForQuestionAnswering": "qa_outputs",
}
ARCHITECTURES = (ENCODER, PRETRAINING, MASKED_LM, *TASK_HEADS)
POOLED_TASKS = ("BertForSequenceClassification", "BertForMultipleChoice")

ACT_FROM = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
            "gelu_fast": "gelu_tanh", "relu": "relu"}
ACT_TO = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
# bert config fields whose non-default values change the computation in ways lmlab lacks.
REQUIRED = {"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False}
# Buffers some versions saved with the weights; not parameters.
BUFFERS = ("embeddings.position_ids",)

LAYER_PARTS = {  # lmlab block part -> HF encoder.layer.{i} part (q, k, v are fused separately)
    "attn.c_proj": "attention.output.dense",
    "ln_1": "attention.output.LayerNorm",
    "mlp.c_fc": "intermediate.dense",
    "mlp.c_proj": "output.dense",
    "ln_2": "output.LayerNorm",
}


class HFTaskHead(NamedTuple):
    """A task head read from a HF task layout, kept beside the encoder (see the module docstring)."""

    architecture: str
    tensors: dict[str, torch.Tensor]  # HF names: classifier.{weight,bias} or qa_outputs.{weight,bias}
    num_labels: int  # rows of the head's weight (2 for QA: start, end; 1 for multiple choice)
    id2label: dict[int, str]


def hf_names(n_layers: int, pooler: bool, heads: str) -> dict[str, tuple[str, ...]]:
    """lmlab parameter name -> the HF names concatenated (dim 0) into it, without the `bert.` prefix.

    The tied MLM decoder weight is left out: it is the word embedding.
    """
    pairs = {"word_emb": "embeddings.word_embeddings", "pos_emb": "embeddings.position_embeddings",
             "type_emb": "embeddings.token_type_embeddings"}
    names = {f"{ours}.weight": (f"{theirs}.weight",) for ours, theirs in pairs.items()}
    modules = {"emb_ln": "embeddings.LayerNorm"}
    for i in range(n_layers):
        layer = f"encoder.layer.{i}"
        for p in ("weight", "bias"):
            names[f"blocks.{i}.attn.c_attn.{p}"] = tuple(f"{layer}.attention.self.{x}.{p}"
                                                        for x in ("query", "key", "value"))
        modules.update({f"blocks.{i}.{ours}": f"{layer}.{theirs}" for ours, theirs in LAYER_PARTS.items()})
    if pooler:
        modules["pooler"] = "pooler.dense"
    if heads in ("mlm", "mlm_nsp"):
        modules.update({"mlm.dense": "cls.predictions.transform.dense",
                        "mlm.ln": "cls.predictions.transform.LayerNorm"})
        names["mlm.decoder.bias"] = ("cls.predictions.bias",)
    if heads == "mlm_nsp":
        modules["nsp"] = "cls.seq_relationship"
    for ours, theirs in modules.items():
        names.update({f"{ours}.{p}": (f"{theirs}.{p}",) for p in ("weight", "bias")})
    return names


# ---- from HF ----------------------------------------------------------------------------------
def bert_from_hf(hf_dir: Path, config: dict, read_weights: ReadWeights):
    where = f"{hf_dir / 'config.json'}"
    architecture = _architecture(config, where)
    for field, needed in REQUIRED.items():
        if config.get(field, needed) != needed:
            raise ConversionError(f"{where}: {field}={config[field]!r} is not supported "
                                  f"(lmlab's BERT needs {needed!r})")

    def split(meta: bool) -> tuple[dict, dict]:  # (encoder tensors, task head tensors), no `bert.` prefix
        state = _normalise(read_weights(meta))
        task = task_head_from_hf(state, architecture) if architecture in TASK_HEADS else {}
        return {n: t for n, t in state.items() if n not in task}, task

    state, task = split(True)  # names and shapes only: what to build follows the tensors present
    if task:
        rows = int(task[f"{TASK_HEADS[architecture]}.weight"].shape[0])
        labels = _id2label(config, rows, architecture, where)
    if "cls.seq_relationship.weight" in state:
        heads = "mlm_nsp"
    elif "cls.predictions.transform.dense.weight" in state:
        heads = "mlm"
    else:
        heads = "none"
    fields = dict(
        vocab_size=config.get("vocab_size", 30522), d_model=config.get("hidden_size", 768),
        n_layers=config.get("num_hidden_layers", 12), n_heads=config.get("num_attention_heads", 12),
        d_ff=config.get("intermediate_size", 3072), max_seq_len=config.get("max_position_embeddings", 512),
        dropout=config.get("hidden_dropout_prob", 0.1), type_vocab_size=config.get("type_vocab_size", 2),
        layer_norm_eps=config.get("layer_norm_eps", 1e-12), init_std=config.get("initializer_range", 0.02),
        activation=lookup(ACT_FROM, config.get("hidden_act", "gelu"), "hidden_act", where),
        pad_token_id=config.get("pad_token_id", 0), heads=heads, pooler="pooler.dense.weight" in state,
    )
    model = build_loaded("bert", fields, where, lambda meta: split(meta)[0],
                         lambda m, encoder: _load(m, encoder, hf_dir))
    if task:
        model.hf_task_head = HFTaskHead(architecture, split(False)[1], rows, labels)  # read once, cached
    return model, WordPieceTokenizer.find_in_dir(hf_dir)


def task_head_from_hf(state: dict[str, torch.Tensor], architecture: str) -> dict[str, torch.Tensor]:
    """The head tensors of a HF task layout, under their HF names (`state` without `bert.` prefix)."""
    if architecture not in TASK_HEADS:
        raise ConversionError(f"{architecture!r} is not a BERT task layout; expected one of "
                              f"{', '.join(TASK_HEADS)}")
    names = [f"{TASK_HEADS[architecture]}.{p}" for p in ("weight", "bias")]
    missing = [n for n in names if n not in state]
    if missing:
        raise ConversionError(f"{architecture} weights: missing tensor(s) {', '.join(missing)}")
    weight, bias = (state[n] for n in names)
    if weight.dim() != 2 or bias.shape != weight.shape[:1]:
        raise ConversionError(f"{architecture} weights: head shapes {tuple(weight.shape)} and "
                              f"{tuple(bias.shape)} do not form a linear layer")
    if architecture == "BertForQuestionAnswering" and weight.shape[0] != 2:
        raise ConversionError(f"{architecture} weights: qa_outputs has {weight.shape[0]} outputs, "
                              f"expected 2 (start, end)")
    return {n: state[n] for n in names}


def _architecture(config: dict, where: str) -> str:
    archs = config.get("architectures") or [ENCODER]
    archs = [archs] if isinstance(archs, str) else list(archs)
    for arch in archs:
        if arch not in ARCHITECTURES:
            raise ConversionError(f"{where}: architecture {arch!r} is not supported; "
                                  f"expected one of {', '.join(ARCHITECTURES)}")
    return archs[0]


def _normalise(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the `bert.` prefix, rename gamma/beta, drop saved buffers."""
    state = {}
    for name, tensor in hf_state.items():
        name = name.removeprefix("bert.")
        if name in BUFFERS:
            continue
        if ".LayerNorm." in name:
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
            name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        state[name] = tensor
    return state


def _id2label(config: dict, rows: int, architecture: str, where: str) -> dict[int, str]:
    """config.json's label names (transformers leaves out its default LABEL_i names)."""
    raw = config.get("id2label") or {i: f"LABEL_{i}" for i in range(rows)}
    try:
        labels = {int(k): str(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        raise ConversionError(f"{where}: id2label must map label ids to names, got {raw!r}") from None
    # QA always has 2 rows (start, end) and multiple choice 1 (a score per choice): their labels
    # are not per row.
    if TASK_HEADS[architecture] == "classifier" and architecture != "BertForMultipleChoice" \
            and sorted(labels) != list(range(rows)):
        raise ConversionError(f"{where}: id2label has ids {sorted(labels)}, but the classifier has "
                              f"{rows} outputs")
    return labels


def _load(model, state: dict[str, torch.Tensor], hf_dir: Path) -> None:
    """Copy HF tensors into `model` by the explicit map of `hf_names`, asserting every shape."""
    c = model.config
    names = hf_names(c.n_layers, c.pooler, c.heads)
    where = f"{hf_dir} weights"
    decoder = {n: state.pop(n) for n in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
               if n in state}
    if "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in decoder:
        state["cls.predictions.bias"] = decoder["cls.predictions.decoder.bias"]
    check_names(state, {n for parts in names.values() for n in parts}, where)
    own = model.state_dict()
    converted = {}
    for ours, theirs in names.items():
        tensor = concat([state[n] for n in theirs]) if len(theirs) > 1 else state[theirs[0]]
        if tensor is None or tuple(tensor.shape) != tuple(own[ours].shape):
            shapes = ", ".join(f"{n} {tuple(state[n].shape)}" for n in theirs)
            raise ConversionError(f"{where}: {shapes} do not fit the shape {tuple(own[ours].shape)} "
                                  f"config.json implies")
        converted[ours] = tensor
    embed = state["embeddings.word_embeddings.weight"]
    head = decoder.get("cls.predictions.decoder.weight")
    if head is not None and (head.shape != embed.shape or not same_values(head, embed)):
        raise ConversionError(f"{where}: cls.predictions.decoder.weight differs from the word embedding; "
                              f"lmlab ties them, an untied MLM decoder is not supported")
    copy_into(own, converted, where)


# ---- to HF ------------------------------------------------------------------------------------
def bert_to_hf(model, tokenizer) -> tuple[dict, dict[str, torch.Tensor]]:
    c = model.config
    task = getattr(model, "hf_task_head", None)
    if task is not None and c.heads != "none":
        raise ConversionError(f"a bert model with heads={c.heads!r} cannot also carry a "
                              f"{task.architecture} head")
    if task is not None and task.architecture in POOLED_TASKS and not c.pooler:
        raise ConversionError(f"{task.architecture} classifies the pooled [CLS] state; this model has "
                              f"no pooler")
    architecture = task.architecture if task is not None else \
        {"mlm_nsp": PRETRAINING, "mlm": MASKED_LM, "none": ENCODER}[c.heads]
    config = {
        "model_type": "bert", "architectures": [architecture], "vocab_size": c.vocab_size,
        "hidden_size": c.d_model, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
        "intermediate_size": c.d_ff, "max_position_embeddings": c.max_seq_len,
        "type_vocab_size": c.type_vocab_size, "hidden_act": lookup(ACT_TO, c.activation, "activation",
                                                                   "Hugging Face bert layout"),
        "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.dropout,
        "layer_norm_eps": c.layer_norm_eps, "initializer_range": c.init_std, "pad_token_id": c.pad_token_id,
        "position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False,
        "tie_word_embeddings": True, "dtype": str(model.word_emb.weight.dtype).removeprefix("torch."),
    }
    prefix = "" if architecture == ENCODER else "bert."
    state = {}
    own = model.state_dict()
    for ours, theirs in hf_names(c.n_layers, c.pooler, c.heads).items():
        tensor = own[ours].detach()
        parts = tensor.chunk(len(theirs)) if len(theirs) > 1 else (tensor,)  # c_attn -> q, k, v
        for name, part in zip(theirs, parts, strict=True):
            state[name if name.startswith("cls.") else prefix + name] = part.contiguous().cpu().clone()
    if task is not None:
        fields, tensors = task_head_to_hf(task.architecture, task.tensors, task.id2label)
        config.update(fields)
        state.update(tensors)
    return config, state


def task_head_to_hf(architecture: str, tensors: dict[str, torch.Tensor],
                    id2label: dict[int, str] | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json fields, HF-named head tensors) of a task head; inverse of `task_head_from_hf`."""
    head = task_head_from_hf(tensors, architecture)
    n = head[f"{TASK_HEADS[architecture]}.weight"].shape[0]
    labels = dict(id2label) if id2label else {i: f"LABEL_{i}" for i in range(n)}
    fields = {"id2label": {str(i): name for i, name in sorted(labels.items())},
              "label2id": {name: i for i, name in sorted(labels.items())}}
    return fields, {k: v.detach().contiguous().cpu().clone() for k, v in head.items()}


def write_wordpiece_tokenizer(tokenizer: WordPieceTokenizer, out: Path, config: dict) -> None:
    """vocab.txt + a tokenizer_config.json that makes transformers read it as BertTokenizer."""
    # A stale HF tokenizer.json would be preferred over vocab.txt by the fast tokenizer.
    (out / "tokenizer.json").unlink(missing_ok=True)
    tokenizer.save_vocab_file(out)
    spec = {"tokenizer_class": "BertTokenizer", "model_max_length": config["max_position_embeddings"],
            "do_lower_case": tokenizer.lowercase, "strip_accents": tokenizer.strip_accents,
            "tokenize_chinese_chars": tokenizer.tokenize_chinese_chars, "do_basic_tokenize": True,
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
            "mask_token": "[MASK]", "added_tokens_decoder": added_tokens_decoder(tokenizer)}
    write_bytes_atomic(out / "tokenizer_config.json", json.dumps(spec, indent=2, ensure_ascii=False).encode())
