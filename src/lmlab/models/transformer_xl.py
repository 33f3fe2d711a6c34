"""Transformer-XL (Dai et al. 2019): a decoder with segment-level recurrence and relative positions.

§3.2 segment-level recurrence: the input of every layer is cached after each segment; the next
segment's layer n attends over [SG(memory of layer n); its own input], where SG stops the gradient.
The memory keeps the last `mem_len` positions (new hidden states appended, oldest dropped).
§3.3 relative positional encodings: no absolute position embedding; each attention score has a
content term (q + u)·k and a position term (q + v)·W_R R_{i-j} with sinusoid R over distances,
computed with the shift of appendix B (see `lmlab.nn.relative`).
Word embeddings and output layer: adaptive input / adaptive softmax with projections, optionally
tied (`lmlab.nn.adaptive`), as in the released code for WikiText-103; character models (enwik8)
use `cutoffs=()`: one plain table and an ordinary softmax.

Outputs: `logits` are log-probabilities (log_softmax already applied, like the original code and the
HF `prediction_scores`), with or without cutoffs; softmax / argmax / sampling treat them as logits.
`model.nll(ids, targets, state)` (= `model(ids, state=state, targets=targets).nll`) is the cheap
training/eval path (no full-vocabulary tensor).

Memory API (lmlab's decoding-state protocol, state kind "memory"): the state is a list of n_layers
tensors (B, M, d_model), batch first, oldest position first. `state=None` (or
`model.init_state(B)`) means no history: M = 0, as in the paper's code. (HF's `init_mems` starts
from mem_len zero vectors instead, which the first segment then attends to.) Every call returns
the new memory in `out.state`, detached; pass it to the next call.

Known deviations: `ext_len` (extended context at evaluation) and the sampled softmax of the original
code are not implemented; there is no padding support (attention_mask must be all ones).
`config.max_seq_len` is a property with a very large value: relative positions put no hard limit on
the length of one segment or of the whole stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.config import check_positive, check_probability, require
from lmlab.models.output import CausalLMOutput
from lmlab.nn.adaptive import AdaptiveEmbedding, AdaptiveLogSoftmax
from lmlab.nn.layers import parameter_groups
from lmlab.nn.lm_loss import IGNORE_INDEX
from lmlab.nn.relative import RelativeMultiHeadAttention, relative_distances, relative_mask, sinusoid_table

NO_HARD_LIMIT = 2 ** 31 - 1


@dataclass(frozen=True)
class TransfoXLConfig:
    vocab_size: int = 267735
    d_model: int = 410
    n_layers: int = 16
    n_heads: int = 10
    d_head: int = 41
    d_ff: int = 2100
    tgt_len: int = 150  # segment length for training and for consuming a prompt
    mem_len: int = 150  # positions of memory kept per layer (0: no recurrence)
    clamp_len: int = 0  # > 0: distances beyond it share one embedding
    same_length: bool = False  # every query sees exactly mem_len keys (its own included)
    untie_r: bool = False  # u, v per layer (True) or shared by all layers (False, the paper)
    pre_ln: bool = False  # the paper's code default is post-LN
    cutoffs: tuple[int, ...] = (20000, 40000, 200000)  # () = one plain softmax
    div_val: int = 1  # cluster i embeds in d_embed // div_val**i dimensions
    d_embed: int | None = None  # None = d_model
    tie_weight: bool = True  # softmax cluster weights = embedding tables
    tie_projs: tuple[bool, ...] = ()  # per cluster: softmax projection = embedding projection
    dropout: float = 0.1
    dropatt: float = 0.0
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    proj_init_std: float = 0.01

    def __post_init__(self):
        check_positive(self, "vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_ff",
                       "tgt_len", "div_val")
        check_probability(self, "dropout", "dropatt")
        for name in ("mem_len", "clamp_len"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                    f"config field {name} must be an integer >= 0, got {value!r}")
        require(self.d_model % 2 == 0, f"config field d_model={self.d_model} must be even (sin/cos halves)")
        require(not self.same_length or self.mem_len > 0,
                "config field same_length=True needs mem_len > 0 (the window every query sees)")
        self._check_cutoffs()
        d_embed = self.d_embed if self.d_embed is not None else self.d_model
        require(isinstance(d_embed, int) and not isinstance(d_embed, bool) and d_embed > 0,
                f"config field d_embed must be a positive integer or null, got {self.d_embed!r}")
        smallest = d_embed // self.div_val ** len(self.cutoffs)
        require(smallest > 0, f"config fields d_embed={d_embed}, div_val={self.div_val}: the last of "
                              f"{len(self.cutoffs) + 1} clusters would have width 0")
        require(len(self.tie_projs) in (0, len(self.cutoffs) + 1)
                and all(isinstance(t, bool) for t in self.tie_projs),
                f"config field tie_projs must be empty or {len(self.cutoffs) + 1} booleans "
                f"(one per cluster), got {self.tie_projs!r}")

    def _check_cutoffs(self):
        c = self.cutoffs
        require(isinstance(c, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in c),
                f"config field cutoffs must be a list of integers, got {c!r}")
        bounds = (0, *c, self.vocab_size)
        ok = all(a < b for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        require(ok, f"config field cutoffs={list(c)} must be strictly increasing, positive and below "
                    f"vocab_size={self.vocab_size}")

    @property
    def max_seq_len(self) -> int:
        """No hard limit (relative positions): a very large number for code that checks lengths."""
        return NO_HARD_LIMIT

    @property
    def embed_dim(self) -> int:
        return self.d_embed if self.d_embed is not None else self.d_model


class FeedForward(nn.Module):
    """ReLU MLP with its residual and LayerNorm (pre- or post-LN like the attention sub-layer)."""

    def __init__(self, c: TransfoXLConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.d_model, c.d_ff)
        self.c_proj = nn.Linear(c.d_ff, c.d_model)
        self.layer_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.pre_ln = c.pre_ln

    def forward(self, x):
        h = self.layer_norm(x) if self.pre_ln else x
        h = self.drop(self.c_proj(self.drop(torch.relu(self.c_fc(h)))))
        return x + h if self.pre_ln else self.layer_norm(x + h)


class Layer(nn.Module):
    def __init__(self, c: TransfoXLConfig):
        super().__init__()
        self.attn = RelativeMultiHeadAttention(c.d_model, c.n_heads, c.d_head, c.dropout, c.dropatt,
                                               c.pre_ln, own_biases=c.untie_r,
                                               layer_norm_eps=c.layer_norm_eps)
        self.ff = FeedForward(c)

    def forward(self, x, pos, mask, mem, u, v):
        return self.ff(self.attn(x, pos, mask, mem, u, v))


class TransfoXL(nn.Module):
    """Adaptive embedding, n_layers relative-attention layers with memory, adaptive softmax."""

    def __init__(self, config: TransfoXLConfig):
        super().__init__()
        self.config = c = config
        self.embed = AdaptiveEmbedding(c.vocab_size, c.embed_dim, c.d_model, c.cutoffs, c.div_val)
        self.drop = nn.Dropout(c.dropout)
        if not c.untie_r:  # one u and one v shared by every layer (§3.3)
            self.u = nn.Parameter(torch.zeros(c.n_heads, c.d_head))
            self.v = nn.Parameter(torch.zeros(c.n_heads, c.d_head))
        else:
            self.u = self.v = None
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.n_layers))
        self.softmax = AdaptiveLogSoftmax(c.vocab_size, c.embed_dim, c.d_model, c.cutoffs, c.div_val)
        self.reset_parameters()
        self._tie()

    def reset_parameters(self) -> None:
        """The released code's init: N(0, init_std) weights and u/v, N(0, proj_init_std)
        projections, zero biases, LayerNorm gains N(1, init_std)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if ".projs." in name:
                nn.init.normal_(p, 0.0, self.config.proj_init_std)
            elif "layer_norm.weight" in name:
                nn.init.normal_(p, 1.0, std)
            elif name.endswith("bias"):  # Linear / LayerNorm biases and cluster_bias
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, std)

    def _tie(self) -> None:
        c = self.config
        if c.tie_weight:
            for out, emb in zip(self.softmax.layers, self.embed.layers, strict=True):
                out.weight = emb.weight
        for i, tie in enumerate(c.tie_projs):
            if not tie or str(i) not in self.softmax.projs:
                continue
            source = "0" if c.div_val == 1 else str(i)  # div_val 1: one input projection for all
            if source in self.embed.projs:
                self.softmax.projs[str(i)] = self.embed.projs[source]

    def init_state(self, batch_size: int, max_len: int | None = None, device=None) -> list[torch.Tensor]:
        """Empty memory (B, 0, d_model) for every layer: the start of a stream. (`max_len` is not
        needed: the memory keeps the last mem_len positions whatever the length.)"""
        p = self.embed.layers[0].weight
        return [torch.zeros(batch_size, 0, self.config.d_model, dtype=p.dtype, device=device or p.device)
                for _ in range(self.config.n_layers)]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Adaptive embedding (with the shared u, v), each layer, the adaptive softmax: bottom to top."""
        shared = [p for p in (self.u, self.v) if p is not None]
        return parameter_groups([self.embed, *shared], *self.layers, self.softmax)

    # ---- input checks: one clear error each, before any computation ----------------------------
    def _check_ids(self, ids: torch.Tensor, what: str = "input_ids") -> None:
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise LmlabError(f"{what} must be (batch, length) with length >= 1, got shape {tuple(ids.shape)}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise LmlabError(f"{what} must be integer token ids, got dtype {ids.dtype}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise LmlabError(f"{what} must be in [0, {self.config.vocab_size}), got [{lo}, {hi}]")

    def _check_state(self, mems, batch: int) -> list[torch.Tensor] | None:
        if mems is None:
            return None
        c = self.config
        if not isinstance(mems, (list, tuple)) or len(mems) != c.n_layers:
            got = len(mems) if isinstance(mems, (list, tuple)) else type(mems).__name__
            raise LmlabError(f"the memory (state) must be a list of {c.n_layers} tensors (one per layer), "
                             f"got {got}")
        for i, m in enumerate(mems):
            if not isinstance(m, torch.Tensor) or m.dim() != 3 or m.shape[0] != batch \
                    or m.shape[2] != c.d_model or m.shape[1] != mems[0].shape[1]:
                shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
                raise LmlabError(f"memory (state) layer {i} has shape {shape}; this model and batch need "
                                 f"({batch}, M, {c.d_model}) with the same M in every layer")
        return list(mems)

    # ---- forward -----------------------------------------------------------------------------
    def transformer(self, ids: torch.Tensor, mems=None, output_hidden_states: bool = False):
        """ids (B, T) -> (hidden (B, T, D), new mems, per-layer inputs + output or None)."""
        B, T = ids.shape
        c = self.config
        M = mems[0].shape[1] if mems else 0
        K = M + T
        x = self.drop(self.embed(ids))  # (B, T, D)
        pos = sinusoid_table(relative_distances(K, c.clamp_len, ids.device), c.d_model)  # (K, D)
        pos = self.drop(pos.to(x.dtype))
        mask = relative_mask(T, K, c.mem_len if c.same_length else None, ids.device)  # (T, K)
        inputs = []
        for i, layer in enumerate(self.layers):
            inputs.append(x)  # what layer i attends from: cached as its memory (§3.2)
            x = layer(x, pos, mask, mems[i] if mems else None, self.u, self.v)
        x = self.drop(x)
        new_mems = self._update_mems(inputs, mems)
        states = tuple(inputs) + (x,) if output_hidden_states else None
        return x, new_mems, states

    @torch.no_grad()
    def _update_mems(self, inputs, mems) -> list[torch.Tensor]:
        """[old memory; this segment's layer inputs], the last mem_len positions, detached."""
        keep = self.config.mem_len
        out = []
        for i, h in enumerate(inputs):
            cat = h if not mems else torch.cat([mems[i].to(h.dtype), h], dim=1)  # (B, M+T, D)
            out.append(cat[:, max(0, cat.shape[1] - keep):].detach())
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: list[torch.Tensor] | None = None, output_hidden_states: bool = False,
                logits_to_keep: int = 0, targets: torch.Tensor | None = None) -> CausalLMOutput:
        """input_ids (B, T) continuing the memory `state` -> logits = log-probabilities (B, T, V), and
        the new memory in `out.state`.

        logits_to_keep > 0 computes the log-probabilities of the last that many positions only.
        With `targets` (B, T) - or (B, logits_to_keep) - the output holds `nll` of that shape
        instead of logits: the cheap path of the adaptive softmax, through forward so that DDP and
        torch.compile wrappers see the call."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise LmlabError("transfo-xl does not support padding: attention_mask must be all ones")
        self._check_ids(input_ids)
        if targets is not None:
            self._check_targets(input_ids[:, -logits_to_keep:] if logits_to_keep else input_ids, targets)
        mems = self._check_state(state, input_ids.shape[0])
        x, new_mems, states = self.transformer(input_ids, mems, output_hidden_states)
        kept = x[:, -logits_to_keep:] if logits_to_keep else x
        out = CausalLMOutput(hidden=x, hidden_states=states, state=new_mems)
        if targets is not None:
            scored = targets != IGNORE_INDEX
            nll = self.softmax.nll(kept.flatten(0, 1), torch.where(scored, targets, 0).flatten())
            out.nll = nll.view(targets.shape) * scored
        else:
            out.logits = self.softmax.log_prob(kept)
        return out

    def nll(self, input_ids: torch.Tensor, targets: torch.Tensor, state=None):
        """(nll (B, T) in nats, new memory): -log p(targets[b, t] | input_ids[b, :t+1], memory).

        The efficient path of the adaptive softmax (each tail cluster only for its targets);
        mean it for a training loss and feed the memory into the next segment."""
        out = self(input_ids, state=state, targets=targets)
        return out.nll, out.state

    def _check_targets(self, ids: torch.Tensor, targets: torch.Tensor) -> None:
        self._check_ids(torch.where(targets == IGNORE_INDEX, 0, targets), "targets")  # -100: not scored
        if targets.shape != ids.shape:
            raise LmlabError(f"targets have shape {tuple(targets.shape)}, input_ids "
                             f"{tuple(ids.shape)}; they must match")


_TINY = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_head=16, d_ff=64, tgt_len=16,
             mem_len=16, cutoffs=(), dropout=0.0)
_WT103 = dict(vocab_size=267735, cutoffs=(20000, 40000, 200000), tie_weight=True)
_ENWIK8 = dict(vocab_size=204, cutoffs=(), dropout=0.1)

# Preset -> config fields; sizes from the paper (Table 1-2) and its released training scripts.
# wt103-base uses the scripts' adaptive softmax with div_val 1 and tied projections, the large
# model div_val 4.
PRESETS = {
    "tiny": _TINY,
    "wt103-base": {**_WT103, "d_model": 410, "n_layers": 16, "n_heads": 10, "d_head": 41, "d_ff": 2100,
                   "tgt_len": 150, "mem_len": 150, "div_val": 1, "tie_projs": (False, True, True, True)},
    "wt103-large": {**_WT103, "d_model": 1024, "n_layers": 18, "n_heads": 16, "d_head": 64, "d_ff": 4096,
                    "tgt_len": 384, "mem_len": 384, "div_val": 4, "dropout": 0.2, "dropatt": 0.2,
                    "tie_projs": (False, True, True, True)},
    "enwik8-12l": {**_ENWIK8, "d_model": 512, "n_layers": 12, "n_heads": 8, "d_head": 64, "d_ff": 2048,
                   "tgt_len": 512, "mem_len": 512},
    "enwik8-24l": {**_ENWIK8, "d_model": 1024, "n_layers": 24, "n_heads": 8, "d_head": 128, "d_ff": 3072,
                   "tgt_len": 768, "mem_len": 768, "dropout": 0.15, "dropatt": 0.15},
}
