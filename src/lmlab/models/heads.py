"""Task heads on top of any lmlab network: the TaskSpec, the TaskModel wrapper, one head per task.

What a saved fine-tuned model dir needs to be rebuilt lives here, below checkpoints/, so loading a
model never imports the task code (readers, features, metrics live in `lmlab.tasks`).

Readers (how a head reads the network; a family declares the ones it supports, see registry.py):
- `pooled_cls` (BERT §4.1): the pooled [CLS] state; inputs `[CLS] a [SEP] (b [SEP])` with segment ids.
- `extract_token` (GPT §3.3, Fig. 1): the last layer's state at the `<extract>` token, the only
  position that has seen the whole input; inputs `<start> a (<delim> b) <extract>`. The fine-tuning
  loss adds λ·L_LM over the task input (§3.2), so a TaskModel with `lm_coef > 0` asks its backbone
  for the per-token LM loss of the input (`TaskOutput.lm_nll`).
- `concat_pool` (ULMFiT §3.3): a recurrent backbone reads the document in chunks of `bptt` tokens,
  each continuing the state the last one left; the head sees [h_T; maxpool(H); meanpool(H)] over the
  last `pool_len` tokens of each document (`concat_pool_read`), then two blocks of batch norm,
  dropout and a linear layer (ReLU between). Only chunks that hold pooled positions keep a graph
  for the backward pass; the ones before run without gradients and only pass their state on
  (fastai's MultiBatchEncoder / SentenceEncoder). Within the pooled chunks the state is not
  detached: gradients reach every chunk whose states contributed to the prediction (the paper's
  "BPT3C"; fastai detaches at every chunk).
- `scalar_mix` (ELMo §3.3): the network stays frozen (no gradient, not in the optimizer, eval mode, run
  under no_grad) and a task model reads a learned mix of all its layers per word, beside fixed word
  vectors (`lmlab.models.feature_heads`). The backbone may be None: word vectors alone.
- `directions` (CVT, Clark et al. 2018): the head runs the backbone itself and reads its per-direction
  states (`lmlab.models.cvt.CrossViewHead`): a primary module over all of them, auxiliary modules
  over restricted views.
Token-level heads (tag, qa) read every position's last-layer state, whatever the reader.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from lmlab.errors import ConfigError, LmlabError
from lmlab.models.config import config_from_dict, config_to_dict
from lmlab.models.output import ModelOutput
from lmlab.nn.layers import parameter_groups
from lmlab.nn.lm_loss import IGNORE_INDEX

TASK_NAMES = ("classify", "pair", "tag", "qa", "choice")
# the readers task heads implement
TASK_READERS = ("pooled_cls", "extract_token", "concat_pool", "scalar_mix", "directions")
_LEGACY_ARCH = {"encoder": "pooled_cls", "decoder": "extract_token"}  # TaskSpec.arch before readers


@dataclass(frozen=True)
class TaskSpec:
    """Everything a task head and its loss need besides the weights; saved as config.json "task".

    name: classify | pair | tag | qa | choice. labels: class names in output order (empty for
    regression and for qa/choice). lm_coef: λ of GPT's auxiliary LM loss (extract_token only; 0 =
    off). pair_mode (pair, extract_token): "concat" = `<start> a <delim> b <extract>`; "similarity" =
    both orders, their extract states added (symmetric in a and b). max_len: the longest input in
    tokens, task tokens included (at most the model's position table). reader: pooled_cls or
    extract_token (module docstring). start/delim/extract_id: the task tokens' ids (extract_token).
    pad_id: the id padding carries (masked out, any id works).
    """

    name: str
    labels: tuple[str, ...] = ()
    regression: bool = False
    lm_coef: float = 0.5
    pair_mode: str = "concat"
    max_len: int = 128
    reader: str = "extract_token"
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
        need(self.reader in TASK_READERS,
             f"reader must be one of {', '.join(TASK_READERS)}, got {self.reader!r}")
        need(self.pair_mode in ("concat", "similarity"),
             f"pair_mode must be concat or similarity, got {self.pair_mode!r}")
        need(isinstance(self.lm_coef, (int, float)) and self.lm_coef >= 0,
             f"lm_coef must be >= 0, got {self.lm_coef!r}")
        need(isinstance(self.max_len, int) and self.max_len > 2, f"max_len must be > 2, got {self.max_len!r}")
        need(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        need(not (self.regression and self.labels), "a regression task has no labels")
        need(all(isinstance(x, str) for x in self.labels), "labels must be strings")
        need(self.reader != "concat_pool" or self.name == "classify",
             f"the concat_pool reader reads single documents: task classify only, not {self.name!r}")
        if self.reader == "extract_token" and self.name not in ("tag", "qa"):
            need(None not in (self.start_id, self.extract_id),
                 "the extract_token reader needs start_id and extract_id (lmlab.tasks.base.add_task_tokens)")

    @property
    def n_outputs(self) -> int:
        return 1 if self.regression else len(self.labels)

    @property
    def segment_ids(self) -> bool:
        """Whether inputs carry segment (token type) ids: BERT-style inputs."""
        return self.reader == "pooled_cls"

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "task spec") -> TaskSpec:
        if isinstance(values, dict) and "arch" in values and "reader" not in values:  # saved before readers
            values = {**values, "reader": _LEGACY_ARCH.get(values["arch"], values["arch"])}
            del values["arch"]
        return config_from_dict(cls, values, where=where)


@dataclass
class TaskOutput(ModelOutput):
    """A task head's output: `logits` (classify, pair, choice, tag) or span logits (qa), plus the
    backbone's per-token LM loss of the input when the spec asks for GPT's auxiliary loss."""

    start_logits: torch.Tensor | None = None  # (B, T) span QA
    end_logits: torch.Tensor | None = None
    lm_nll: torch.Tensor | None = None  # (B', T) nll of each next input token, 0 at pads and the end
    penalty: torch.Tensor | None = None  # a regulariser the head adds to the loss (ScalarMix's L2 on s)


class TaskModel(nn.Module):
    """A pretrained (or freshly built) lmlab network `.backbone` with a task `.head` on top.

    forward(**batch): input_ids (B, T) or (B, N, T) for N sequences per example (choice options,
    both orders of a similarity pair), attention_mask and token_type_ids alike; any other batch
    entries reach the head untouched (labels are ignored). The N sequences go through the
    backbone as B·N rows. Returns the head's TaskOutput with .hidden (B·N, T, D) and, for
    extract_token specs with lm_coef > 0, .lm_nll filled in. A scalar_mix spec runs the frozen
    backbone on input_ids (the encoder's input: token ids, or ELMo's character ids) and gives the head
    its hidden states and the batch (no input_ids at all without a backbone).
    """

    def __init__(self, backbone: nn.Module | None, head: nn.Module, spec: TaskSpec):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = spec
        if self.frozen:
            backbone.requires_grad_(False)  # never in the optimizer (it takes parameters that want grad)

    @property
    def frozen(self) -> bool:
        """Whether the backbone is a frozen feature extractor (the scalar_mix reader)."""
        return self.spec.reader == "scalar_mix" and self.backbone is not None

    @property
    def config(self):
        return None if self.backbone is None else self.backbone.config

    def train(self, mode: bool = True) -> TaskModel:
        """A frozen backbone stays in eval mode (no dropout) while the head trains."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's groups, then the head on top (only the head when the backbone is frozen)."""
        below = self.backbone.layer_groups() if self.backbone is not None and not self.frozen else []
        return [*below, *parameter_groups(self.head)]

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **batch) -> TaskOutput:
        if self.spec.reader == "directions":  # the head runs the backbone (lmlab.models.cvt)
            return self.head(self.backbone, input_ids, attention_mask, batch)
        if self.spec.reader == "scalar_mix":
            states = self.frozen_states(input_ids, attention_mask) if self.backbone is not None else None
            return self.head(states, batch)

        def rows(t):
            return None if t is None else t.reshape(-1, t.shape[-1])  # (B, N, T) -> (B·N, T)

        ids, mask = rows(input_ids), rows(attention_mask)
        kwargs = {"attention_mask": mask}
        if token_type_ids is not None:  # only BERT-style inputs (GPT would embed them as tokens)
            kwargs["token_type_ids"] = rows(token_type_ids)
        if self.spec.reader == "extract_token" and self.spec.lm_coef > 0:
            kwargs["targets"] = next_token_targets(ids, mask)
        if self.spec.reader == "concat_pool":
            out = concat_pool_read(self.backbone, ids, mask, self.spec.extra.get("bptt", BPTT),
                                   self.spec.extra.get("pool_len", POOL_LEN))
        else:
            out = self.backbone(ids, **kwargs)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids, **batch}
        result = self.head(out, batch)
        if "targets" in kwargs:
            result.lm_nll = out.nll
        if result.hidden is None:
            result.hidden = out.hidden
        return result

    @torch.no_grad()
    def frozen_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """Every layer of the frozen backbone (its `hidden_states`), without its output layer."""
        skip = SKIP_OUTPUT_LAYER.get(self.spec.extra.get("encoder_kind"), {})
        if self.spec.name == "pair":  # (B, 2, ...): both texts of each example, run as 2B rows
            input_ids, attention_mask = input_ids.flatten(0, 1), attention_mask.flatten(0, 1)
        return self.backbone(input_ids, attention_mask=attention_mask, output_hidden_states=True,
                             **skip).hidden_states


# Features need no (B, T, V) vocabulary scores: the forward arguments that skip them, per kind.
SKIP_OUTPUT_LAYER = {"bilm": {"with_logits": False}, "causal_lm": {"logits_to_keep": 1}}


def next_token_targets(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) the next input token of every position, IGNORE_INDEX after the last real one."""
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[:, :-1] = ids[:, 1:]
    if mask is not None:
        keep = (mask[:, 1:] * mask[:, :-1]).bool()
        targets[:, :-1] = targets[:, :-1].masked_fill(~keep, IGNORE_INDEX)
    return targets


# ---------------------------------------------------------------- what heads read


BPTT, POOL_LEN = 70, 1400  # ULMFiT's chunk length; fastai's max_len = 20 chunks pooled


@dataclass
class PooledOutput(ModelOutput):
    """concat_pool: `pooled` (B, 3D) = [h_T; maxpool(H); meanpool(H)] per document."""

    pooled: torch.Tensor | None = None


def concat_pool_read(backbone: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, bptt: int,
                     pool_len: int) -> PooledOutput:
    """Read right-padded documents ids (B, T) in chunks of `bptt`, carrying the backbone's state, and
    concat-pool the last layer over each document's last `pool_len` tokens (see the module docstring).
    .hidden holds the pooled chunks' states (B, T', D); .pooled the (B, 3D) features."""
    B, T = ids.shape
    lengths = mask.sum(1) if mask is not None else torch.full((B,), T, device=ids.device)
    first_pooled = (lengths - pool_len).clamp(min=0)  # (B,)
    state, kept, start = None, [], None
    for i in range(0, T, bptt):
        j = min(i + bptt, T)
        if start is None and bool(((first_pooled < j) & (lengths > i)).any()):
            start = i  # the first chunk holding a pooled position: keep the graph from here on
        with contextlib.nullcontext() if start is not None else torch.no_grad():
            out = backbone(ids[:, i:j], state=state)
        state = out.state
        if start is not None:
            kept.append(out.hidden)
    H = torch.cat(kept, 1)  # (B, T - start, D)
    pos = torch.arange(start, T, device=ids.device)[None, :]  # (1, T')
    pooled_mask = (pos >= first_pooled[:, None]) & (pos < lengths[:, None])  # (B, T')
    last = H[torch.arange(B, device=H.device), lengths - 1 - start]  # (B, D): h_T
    max_pool = H.masked_fill(~pooled_mask[..., None], float("-inf")).amax(1)
    mean_pool = (H * pooled_mask[..., None]).sum(1) / pooled_mask.sum(1, keepdim=True).clamp(min=1)
    return PooledOutput(hidden=H, pooled=torch.cat([last, max_pool, mean_pool], -1))  # (B, 3D)


def extract_positions(input_ids: torch.Tensor, extract_id: int | None,
                      given: torch.Tensor | None = None) -> torch.Tensor:
    """(B',) index of the <extract> token of each (flattened) row: `given` when the batch has it,
    else the last occurrence of extract_id (right padding never moves it)."""
    ids = input_ids.reshape(-1, input_ids.shape[-1])
    if given is not None:
        return given.reshape(-1).long()
    hit = ids == extract_id
    if not bool(hit.any(-1).all()):
        raise LmlabError("an extract_token task input has no <extract> token")
    pos = torch.arange(ids.shape[-1], device=ids.device).expand_as(ids)
    return torch.where(hit, pos, -1).amax(-1)


def sequence_state(out: ModelOutput, batch: dict, spec: TaskSpec) -> torch.Tensor:
    """(B', D): the state a sequence-level head reads, one per backbone row.

    pooled_cls: the pooled [CLS] state (the first position's last-layer state without a pooler).
    extract_token: the last layer's state at <extract>.
    """
    if spec.reader == "concat_pool":
        return out.pooled
    if spec.reader == "pooled_cls":
        return out.pooled if out.pooled is not None else out.hidden[:, 0]
    index = extract_positions(batch["input_ids"], spec.extract_id, batch.get("extract_index"))
    rows = torch.arange(out.hidden.shape[0], device=out.hidden.device)
    return out.hidden[rows, index.to(out.hidden.device)]  # (B', D)


# ---------------------------------------------------------------- the heads


def _linear(d_in: int, d_out: int, std: float = 0.02) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.normal_(layer.weight, std=std)  # GPT and BERT: N(0, 0.02), zero bias
    nn.init.zeros_(layer.bias)
    return layer


class SequenceHead(nn.Module):
    """classify / pair: dropout + linear on the extract / pooled state (a similarity pair: the two
    orders added, GPT's symmetric input)."""

    def __init__(self, d_model: int, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        self.drop = nn.Dropout(spec.dropout)
        self.linear = _linear(d_model, spec.n_outputs)

    def forward(self, out: ModelOutput, batch: dict) -> TaskOutput:
        h = sequence_state(out, batch, self.spec)  # (B', D)
        ids = batch["input_ids"]
        if ids.dim() == 3:  # (B, 2, T): GPT's similarity input, h_(a,b) + h_(b,a)
            h = h.view(ids.shape[0], ids.shape[1], -1).sum(1)
        return TaskOutput(logits=self.linear(self.drop(h)))  # (B, n_labels) or (B, 1)


class ConcatPoolHead(nn.Module):
    """classify with concat_pool (ULMFiT §3.3): [h_T; max; mean] (3D) -> BN, dropout, linear (hidden
    units, 50 in fastai) -> ReLU -> BN, dropout 0.1, linear -> the labels. The linear layers after a
    batch norm have no bias (fastai's LinBnDrop)."""

    def __init__(self, d_model: int, spec: TaskSpec, hidden: int = 50):
        super().__init__()
        self.spec = spec
        self.layers = nn.Sequential(
            nn.BatchNorm1d(3 * d_model), nn.Dropout(spec.dropout), nn.Linear(3 * d_model, hidden, bias=False),
            nn.ReLU(), nn.BatchNorm1d(hidden), nn.Dropout(0.1), nn.Linear(hidden, spec.n_outputs, bias=False))

    def forward(self, out: ModelOutput, batch: dict) -> TaskOutput:
        return TaskOutput(logits=self.layers(sequence_state(out, batch, self.spec)))  # (B, n_labels)


def sequence_head(backbone: nn.Module, spec: TaskSpec) -> nn.Module:
    if spec.reader == "concat_pool":
        return ConcatPoolHead(backbone.config.d_model, spec, spec.extra.get("head_hidden", 50))
    return SequenceHead(backbone.config.d_model, spec)


class ChoiceHead(nn.Module):
    """choice: one linear score per option from its extract / pooled state; missing options get -inf."""

    def __init__(self, d_model: int, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        self.drop = nn.Dropout(spec.dropout)
        self.linear = _linear(d_model, 1)

    def forward(self, out: ModelOutput, batch: dict) -> TaskOutput:
        B, N = batch["input_ids"].shape[:2]
        h = sequence_state(out, batch, self.spec)  # (B·N, D)
        scores = self.linear(self.drop(h)).view(B, N)  # (B, N)
        keep = batch.get("choice_mask")
        if keep is not None:
            scores = scores.masked_fill(~keep.bool(), torch.finfo(scores.dtype).min)
        return TaskOutput(logits=scores)


class TagHead(nn.Module):
    """tag: logits = W·dropout(h_t) + b at every position t (BERT §4.3 / Fig. 4d)."""

    def __init__(self, d_model: int, n_labels: int, dropout: float = 0.1, init_std: float = 0.02):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = _linear(d_model, n_labels, init_std)

    def forward(self, out: ModelOutput, batch: dict | None = None) -> TaskOutput:
        return TaskOutput(logits=self.proj(self.dropout(out.hidden)))  # (B, T, n_labels)


class QAHead(nn.Module):
    """qa: (start, end) logits = W·h_t + b at every position t (BERT §4.2: a start vector S and end
    vector E); padding is never an answer boundary."""

    def __init__(self, d_model: int, init_std: float = 0.02):
        super().__init__()
        self.proj = _linear(d_model, 2, init_std)

    def forward(self, out: ModelOutput, batch: dict | None = None) -> TaskOutput:
        logits = self.proj(out.hidden)  # (B, T, 2)
        mask = None if batch is None else batch.get("attention_mask")
        if mask is not None:
            pad = mask.reshape(logits.shape[:2]).unsqueeze(-1) == 0
            logits = logits.masked_fill(pad, torch.finfo(logits.dtype).min)
        start, end = logits.unbind(-1)  # (B, T) each
        return TaskOutput(start_logits=start, end_logits=end)


# Task name -> head builder (backbone, spec) -> nn.Module: what `lmlab.load` needs to rebuild a
# saved TaskModel. A literal dict: no import-time registration.
HEADS = {
    "classify": sequence_head,
    "pair": sequence_head,
    "choice": lambda backbone, spec: ChoiceHead(backbone.config.d_model, spec),
    "tag": lambda backbone, spec: TagHead(backbone.config.d_model, len(spec.labels), spec.dropout),
    "qa": lambda backbone, spec: QAHead(backbone.config.d_model),
}


def build_task_model(backbone: nn.Module, spec: TaskSpec) -> TaskModel:
    """`backbone` with a freshly initialised head for `spec` (weights come after, if loading)."""
    if spec.reader == "scalar_mix":  # imported here: feature_heads builds on this file's TaskOutput
        from lmlab.models.feature_heads import build_feature_head

        return TaskModel(backbone, build_feature_head(spec), spec)
    if spec.reader == "directions":
        from lmlab.models.cvt import CrossViewHead

        return TaskModel(backbone, CrossViewHead(spec), spec)
    if spec.name not in HEADS:
        raise ConfigError(f"no head for task {spec.name!r}; known tasks: {', '.join(HEADS)}")
    return TaskModel(backbone, HEADS[spec.name](backbone, spec), spec)
