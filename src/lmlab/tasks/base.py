"""What every downstream task shares: the TaskSpec, the TaskModel wrapper, the decoder input
transformations of Radford et al. 2018 (new special tokens and a resized embedding), the hidden
state a sequence-level head reads, GPT's auxiliary LM loss, padding and the evaluation loop.

GPT §3.3 / Fig. 1: every task input becomes one token sequence `<start> ... <extract>` (pairs put
`<delim>` between the two texts) and a linear layer reads the last layer's state at `<extract>`.
The three tokens are new: their embedding rows start as N(0, 0.02), the paper's init. §3.2: the
fine-tuning loss is `L_cls + λ·L_LM` with λ = 0.5, where L_LM is the causal LM loss over the
task input itself. BERT (Devlin et al. 2018, §4.1) reads the pooled `[CLS]` state instead and
has no auxiliary loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import ConfigError, LmlabError
from lmlab.models.config import config_from_dict, config_to_dict
from lmlab.models.output import ModelOutput

TASK_NAMES = ("classify", "pair", "tag", "qa", "choice")
TASK_TOKENS = ("<start>", "<delim>", "<extract>")  # GPT §3.3, Fig. 1
ENCODER_FAMILIES = ("bert",)  # read [CLS]/pooled, token_type_ids; every other family is a decoder
NEW_ROW_STD = 0.02  # init of the new task-token embedding rows (GPT's N(0, 0.02))


@dataclass(frozen=True)
class TaskSpec:
    """Everything a task head and its loss need besides the weights; saved as config.json "task".

    name: classify | pair | tag | qa | choice. labels: class names in output order (empty for
    regression and for qa/choice). lm_coef: λ of GPT's auxiliary LM loss (decoders only; 0 = off).
    pair_mode (pair, decoders): "concat" = `<start> a <delim> b <extract>`; "similarity" = both
    orders, their extract states added (symmetric in a and b). max_len: the longest input in tokens,
    task tokens included (at most the model's position table). arch: "encoder" (BERT: pooled [CLS],
    token_type_ids) or "decoder" (GPT: the state at <extract>). start/delim/extract_id: the task
    tokens' ids (decoders). pad_id: the id padding carries (masked out, any id works).
    """

    name: str
    labels: tuple[str, ...] = ()
    regression: bool = False
    lm_coef: float = 0.5
    pair_mode: str = "concat"
    max_len: int = 128
    arch: str = "decoder"
    start_id: int | None = None
    delim_id: int | None = None
    extract_id: int | None = None
    pad_id: int = 0
    dropout: float = 0.1  # on the head's input (GPT §4.1: 0.1 on the classifier)
    extra: dict = field(default_factory=dict)  # task-specific plain values (e.g. qa's max answer length)

    def __post_init__(self):
        def need(ok, message):
            if not ok:
                raise ConfigError(f"task spec: {message}")

        need(self.name in TASK_NAMES, f"name must be one of {', '.join(TASK_NAMES)}, got {self.name!r}")
        need(self.arch in ("encoder", "decoder"), f"arch must be encoder or decoder, got {self.arch!r}")
        need(self.pair_mode in ("concat", "similarity"),
             f"pair_mode must be concat or similarity, got {self.pair_mode!r}")
        need(isinstance(self.lm_coef, (int, float)) and self.lm_coef >= 0,
             f"lm_coef must be >= 0, got {self.lm_coef!r}")
        need(isinstance(self.max_len, int) and self.max_len > 2, f"max_len must be > 2, got {self.max_len!r}")
        need(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        need(not (self.regression and self.labels), "a regression task has no labels")
        need(all(isinstance(x, str) for x in self.labels), "labels must be strings")
        if self.arch == "decoder" and self.name != "tag" and self.name != "qa":
            need(None not in (self.start_id, self.extract_id),
                 "a decoder task needs start_id and extract_id (see add_task_tokens)")

    @property
    def n_outputs(self) -> int:
        return 1 if self.regression else len(self.labels)

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "task spec") -> TaskSpec:
        return config_from_dict(cls, values, where=where)


class TaskModel(nn.Module):
    """A pretrained (or freshly built) lmlab model `.backbone` with a task `.head` on top.

    forward(**batch): input_ids (B, T) or (B, N, T) for N sequences per example (choice options,
    both orders of a similarity pair), attention_mask and token_type_ids alike; any other batch
    entries reach the head untouched (labels are ignored). The N sequences go through the
    backbone as B·N rows. Returns the head's ModelOutput (logits, or start/end_logits for qa) with
    .hidden (B·N, T, D) and .lm_logits (the backbone's LM logits, for GPT's auxiliary loss) filled in.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: TaskSpec):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = spec

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **batch) -> ModelOutput:
        def rows(t):
            return None if t is None else t.reshape(-1, t.shape[-1])  # (B, N, T) -> (B·N, T)

        kwargs = {"attention_mask": rows(attention_mask)}
        if token_type_ids is not None:  # only encoders get segment ids (GPT would embed them as tokens)
            kwargs["token_type_ids"] = rows(token_type_ids)
        out = self.backbone(rows(input_ids), **kwargs)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids, **batch}
        result = self.head(out, batch)
        result.lm_logits = out.logits
        if result.hidden is None:
            result.hidden = out.hidden
        return result


# ---------------------------------------------------------------- decoder input transformations


def add_task_tokens(backbone: nn.Module, tokenizer) -> dict[str, int]:
    """Add <start>, <delim>, <extract> to the tokenizer and the embedding (GPT §3.3).

    Returns {"start_id", "delim_id", "extract_id"}. Tokens the tokenizer already has (a model
    fine-tuned before) keep their trained rows; new ones get N(0, 0.02) rows.
    """
    new = [t for t in TASK_TOKENS if tokenizer.token_to_id(t) is None]
    start, delim, extract = tokenizer.add_special_tokens(list(TASK_TOKENS))
    resize_token_embeddings(backbone, max(tokenizer.vocab_size, backbone.config.vocab_size))
    with torch.no_grad():
        for token in new:
            backbone.wte.weight[tokenizer.token_to_id(token)].normal_(0.0, NEW_ROW_STD)
    return {"start_id": start, "delim_id": delim, "extract_id": extract}


def resize_token_embeddings(model: nn.Module, size: int) -> None:
    """Grow `model.wte` (and `model.lm_head`) to `size` rows, keeping the tie; new rows N(0, 0.02)."""
    old = getattr(model, "wte", None)
    head = getattr(model, "lm_head", None)
    if not isinstance(old, nn.Embedding) or not isinstance(head, nn.Linear):
        raise ConfigError(f"{type(model).__name__} has no wte/lm_head pair: the decoder task "
                          f"transformations need a GPT-style causal model")
    n, d = old.weight.shape
    if size <= n:
        return
    w = old.weight
    emb = nn.Embedding(size, d, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        emb.weight[:n] = w
        emb.weight[n:].normal_(0.0, NEW_ROW_STD)
    new_head = nn.Linear(d, size, bias=head.bias is not None, device=w.device, dtype=w.dtype)
    if head.weight is w:
        new_head.weight = emb.weight  # keep the tie (GPT §3.1)
    else:
        with torch.no_grad():
            new_head.weight[:n] = head.weight
            new_head.weight[n:].normal_(0.0, NEW_ROW_STD)
    if head.bias is not None:
        with torch.no_grad():
            new_head.bias.zero_()
            new_head.bias[:n] = head.bias
    model.wte, model.lm_head = emb, new_head
    model.config = dataclasses.replace(model.config, vocab_size=size)


def arch_of(family: str) -> str:
    return "encoder" if family in ENCODER_FAMILIES else "decoder"


# ---------------------------------------------------------------- what heads read


def extract_positions(input_ids: torch.Tensor, extract_id: int | None,
                      given: torch.Tensor | None = None) -> torch.Tensor:
    """(B',) index of the <extract> token of each (flattened) row: `given` when the batch has it,
    else the last occurrence of extract_id (right padding never moves it)."""
    ids = input_ids.reshape(-1, input_ids.shape[-1])
    if given is not None:
        return given.reshape(-1).long()
    hit = ids == extract_id
    if not bool(hit.any(-1).all()):
        raise LmlabError("a decoder task input has no <extract> token")
    pos = torch.arange(ids.shape[-1], device=ids.device).expand_as(ids)
    return torch.where(hit, pos, -1).amax(-1)


def sequence_state(out: ModelOutput, batch: dict, spec: TaskSpec) -> torch.Tensor:
    """(B', D): the state a sequence-level head reads, one per backbone row.

    Encoder: the pooled [CLS] state (the first position's last-layer state without a pooler).
    Decoder: the last layer's state at <extract>, the only position that has seen all the input.
    """
    if spec.arch == "encoder":
        return out.pooled if out.pooled is not None else out.hidden[:, 0]
    index = extract_positions(batch["input_ids"], spec.extract_id, batch.get("extract_index"))
    rows = torch.arange(out.hidden.shape[0], device=out.hidden.device)
    return out.hidden[rows, index.to(out.hidden.device)]  # (B', D)


def lm_aux_loss(out: ModelOutput, batch: dict) -> torch.Tensor:
    """Mean causal-LM loss over the task input's real tokens (GPT §3.2, L_LM on the task data)."""
    ids = batch["input_ids"]
    ids = ids.reshape(-1, ids.shape[-1])
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask.reshape(-1, ids.shape[-1])
    logits = out.lm_logits[:, :-1].float()  # (B', T-1, V)
    nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    keep = (mask[:, 1:] * mask[:, :-1]).float()
    return (nll * keep).sum() / keep.sum().clamp(min=1.0)


# ---------------------------------------------------------------- batching and evaluation


def pad_2d(rows: list[list[int]], value: int) -> torch.Tensor:
    """(B, T_max) LongTensor, right-padded with `value`."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def pad_3d(groups: list[list[list[int]]], value: int) -> torch.Tensor:
    """(B, N_max, T_max) LongTensor; missing sequences are all `value`."""
    n = max(len(g) for g in groups)
    width = max(len(r) for g in groups for r in g)
    out = torch.full((len(groups), n, width), value, dtype=torch.long)
    for i, g in enumerate(groups):
        for j, r in enumerate(g):
            out[i, j, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


@torch.no_grad()
def run_model(model: nn.Module, features: list, collate, batch_size: int):
    """Yield (output, batch) over `features` in order, in eval mode, without gradients."""
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(features), batch_size):
        batch = {k: v.to(device) for k, v in collate(features[start:start + batch_size]).items()}
        yield model(**batch), batch
