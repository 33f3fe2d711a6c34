"""ULMFiT's language model (Howard & Ruder 2018, §3): AWD-LSTM (Merity et al. 2017) as ULMFiT used it.

Network (Merity §4, ULMFiT §3 "AWD-LSTM ... with an embedding size of 400, 3 layers, 1150 hidden
activations per layer"; the released fastai model has 1152): a token embedding (d_model), n_layers
LSTMs (d_model -> d_hidden -> ... -> d_model: the last layer's width is the embedding's, so the
output layer can be tied to it, Merity §4.5 / Inan et al. 2017), and a decoder `logits = h W_E^T +
b` whose matrix is the embedding table.

Regularisation (lmlab.nn.dropout), in training only:
- embedding dropout (whole words, `embed_p`, §4.3), then locked dropout on the LSTM input (`input_p`);
- DropConnect on every layer's hidden-to-hidden matrix (`weight_p`, §4.1; lmlab.nn.fused_lstm);
- locked dropout between layers (`hidden_p`) and on the last layer's output (`output_p`, §4.2).
`dropout` multiplies all five (fastai's drop_mult): 0 turns every dropout off.
Activation and temporal activation regularisation (AR/TAR, §4.6) are part of the objective
(lmlab.objectives.awd): the output carries the last layer's raw states (`hidden`) and the same states
after the output dropout (`hidden_dropped`); AR = α·mean(dropped²), TAR = β·mean((h_t - h_{t-1})²).
Variable-length BPTT (§4.4) is the sampler's (lmlab.data.sampler.VariableBPTTStreams).

State (the decoding-state protocol, `state="rnn"`): a list with one `[h (B, H_l), c (B, H_l)]` per
layer, batch first, passed in and returned explicitly (`out.state`); fastai keeps it in
`self.hidden` instead. A call with `state=None` starts from zeros.

Layer groups (ULMFiT §3.2, fastai's `awd_lstm_clas_split` / `awd_lstm_lm_split`): the output layer
(the embedding, which is the tied output matrix, with the decoder bias), then each LSTM layer; a task
head goes above them, and LM fine-tuning moves the output layer to the top (lmlab.tasks.lm).

Known deviations: no `padding_idx` on the embedding (fastai keeps the xxpad row's gradient at zero;
padding is never a target or pooled here). `attention_mask` may only mark right padding of a call
without a carried state: the recurrence reads left to right, so pads after a row's last token do not
change its real positions (their outputs and the returned state are not meaningful for that row).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.config import check_positive, require
from lmlab.models.output import CausalLMOutput
from lmlab.nn.dropout import embedding_dropout, locked_dropout
from lmlab.nn.fused_lstm import DropConnectLSTM
from lmlab.nn.layers import parameter_groups
from lmlab.nn.lm_loss import output_nll, tied_lookup

NO_HARD_LIMIT = 2 ** 31 - 1
DROPOUTS = ("embed_p", "input_p", "weight_p", "hidden_p", "output_p")


@dataclass(frozen=True)
class ULMFiTConfig:
    vocab_size: int = 60000
    d_model: int = 400  # embedding size = the last LSTM layer's width (tied)
    d_hidden: int = 1152  # the other LSTM layers' width
    n_layers: int = 3
    dropout: float = 1.0  # multiplies the five probabilities below (fastai's drop_mult)
    # fastai's awd_lstm_lm_config, the settings of the released WT-103 model
    embed_p: float = 0.02
    input_p: float = 0.25
    weight_p: float = 0.2
    hidden_p: float = 0.15
    output_p: float = 0.1
    init_range: float = 0.1  # embedding ~ U(-r, r) (fastai's initrange)

    def __post_init__(self):
        check_positive(self, "vocab_size", "d_model", "d_hidden", "n_layers")
        require(isinstance(self.dropout, (int, float)) and self.dropout >= 0,
                f"config field dropout (the multiplier of every dropout) must be >= 0, got {self.dropout!r}")
        for name in DROPOUTS:
            p = getattr(self, name)
            require(isinstance(p, (int, float)) and 0 <= p and p * self.dropout < 1,
                    f"config field {name}={p!r} times dropout={self.dropout} must be in [0, 1)")

    @property
    def max_seq_len(self) -> int:
        """No hard limit (a recurrence): a very large number for code that checks lengths."""
        return NO_HARD_LIMIT

    def p(self, name: str) -> float:
        """The effective dropout probability `name` (times the multiplier)."""
        return float(getattr(self, name)) * float(self.dropout)


def layer_sizes(c: ULMFiTConfig) -> list[tuple[int, int]]:
    """(input, output) width of each LSTM layer: d_model -> d_hidden ... -> d_model."""
    widths = [c.d_model] + [c.d_hidden] * (c.n_layers - 1) + [c.d_model]
    return list(zip(widths[:-1], widths[1:], strict=True))


class ULMFiT(nn.Module):
    """AWD-LSTM language model: embedding, n_layers weight-dropped LSTMs, tied decoder with a bias."""

    def __init__(self, config: ULMFiTConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(DropConnectLSTM(i, o, c.p("weight_p")) for i, o in layer_sizes(c))
        self.decoder_bias = nn.Parameter(torch.zeros(c.vocab_size))
        nn.init.uniform_(self.embed.weight, -c.init_range, c.init_range)

    def init_state(self, batch_size: int, max_len: int | None = None, device=None) -> list:
        """Zero (h, c) of every layer for `batch_size` rows (max_len: unused, a recurrence needs none)."""
        w = self.embed.weight
        return [list(layer.zero_state(batch_size, device or w.device, w.dtype)) for layer in self.layers]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The output layer (embedding = tied matrix, and the decoder bias), then each LSTM layer.

        The bias shares the embedding's group, as fastai's `awd_lstm_lm_split` (encoder and decoder in
        one group) and the paper's classifier (embedding, 3 LSTMs, head): a group of its own would be
        a group the classifier never uses, costing one unfreezing epoch and another ÷2.6 on every LSTM."""
        return parameter_groups([self.embed, self.decoder_bias], *self.layers)

    def init_token_rows(self, ids: list[int], vocab_size: int) -> None:
        """Grow the vocabulary to `vocab_size` rows (if smaller); rows `ids` (new words) start at the
        mean embedding and the mean decoder bias (ULMFiT's initialisation of words the pretrained
        model did not have, fastai's `match_embeds`)."""
        old, bias = self.embed.weight.detach(), self.decoder_bias.detach()
        n, d = old.shape
        if vocab_size > n:
            self.embed = nn.Embedding(vocab_size, d, device=old.device, dtype=old.dtype)
            self.decoder_bias = nn.Parameter(torch.zeros(vocab_size, device=old.device, dtype=old.dtype))
            with torch.no_grad():
                self.embed.weight[:n] = old
                self.decoder_bias[:n] = bias
            self.config = dataclasses.replace(self.config, vocab_size=vocab_size)
        with torch.no_grad():
            mean_row, mean_bias = old.mean(0), bias.mean()
            for i in ids:
                self.embed.weight[i] = mean_row
                self.decoder_bias[i] = mean_bias

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: list | None = None, targets: torch.Tensor | None = None, logits_to_keep: int = 0,
                output_hidden_states: bool = False) -> CausalLMOutput:
        """input_ids (B, T); state from init_state or a previous call's out.state (None: zeros).

        With `targets` (B, T) (or (B, logits_to_keep)) of next tokens (-100 = not scored) the output
        holds their per-token loss `nll` instead of logits."""
        c = self.config
        self._check_mask(attention_mask, input_ids, state)
        if state is not None and len(state) != c.n_layers:
            raise LmlabError(f"state has {len(state)} layers; this model has {c.n_layers}")
        rows, head = tied_lookup(input_ids, self.embed.weight, scoring=targets is not None)
        x = embedding_dropout(input_ids, self.embed.weight, c.p("embed_p"), self.training, embedded=rows)
        states = [x] if output_hidden_states else None
        x = locked_dropout(x, c.p("input_p"), self.training)
        new_state = []
        for i, layer in enumerate(self.layers):
            x, (h, cell) = layer(x, None if state is None else tuple(state[i]))  # (B, T, H_i)
            new_state.append([h, cell])
            if states is not None:
                states.append(x)
            raw = x
            if i < c.n_layers - 1:
                x = locked_dropout(x, c.p("hidden_p"), self.training)
        dropped = locked_dropout(raw, c.p("output_p"), self.training)  # (B, T, D)
        kept = dropped[:, -logits_to_keep:] if logits_to_keep else dropped
        out = CausalLMOutput(hidden=raw, state=new_state, hidden_states=tuple(states) if states else None,
                             hidden_dropped=dropped)
        if targets is None:
            out.logits = nn.functional.linear(kept, self.embed.weight, self.decoder_bias)  # (B, T, V)
        elif targets.shape != kept.shape[:2]:
            raise LmlabError(f"targets have shape {tuple(targets.shape)}; expected {tuple(kept.shape[:2])}, "
                             f"one next token per scored position")
        else:
            # The bias as one more input column: h W^T + b = [h, 1] [W, b]^T, so the chunked loss
            # (lmlab.nn.lm_loss) scores it without ever holding the (B, T, V) logits.
            ones = kept.new_ones(*kept.shape[:2], 1)
            weight = torch.cat([head, self.decoder_bias[:, None]], 1)  # (V, D + 1)
            out.nll = output_nll(torch.cat([kept, ones], -1), weight, targets)  # (B, T)
        return out

    @staticmethod
    def _check_mask(mask: torch.Tensor | None, ids: torch.Tensor, state) -> None:
        if mask is None or bool(mask.all()):
            return
        right_padded = mask.shape == ids.shape and bool((mask[:, 1:] <= mask[:, :-1]).all())
        if state is not None or not right_padded:
            raise LmlabError("AWD-LSTM reads left to right: padding must follow each row's tokens (right "
                             "padding) in a call without carried state; give prompts of different lengths "
                             "one at a time")


# fastai's awd_lstm_clas_config: the dropouts ULMFiT's classifier fine-tuning uses (§3.3; fastai).
CLASSIFIER_DROPOUTS = {"embed_p": 0.05, "input_p": 0.4, "weight_p": 0.5, "hidden_p": 0.3, "output_p": 0.4}

PRESETS = {
    # A wider embedding init than fastai's 0.1 (tuned for 400 dims): the 24-wide tied table of the test
    # size otherwise needs hundreds of steps before its logits move.
    "tiny": dict(vocab_size=256, d_model=24, d_hidden=48, n_layers=3, init_range=1.0),
    "small": dict(vocab_size=10000, d_model=200, d_hidden=400, n_layers=3),
    "wt103": dict(vocab_size=60000, d_model=400, d_hidden=1152, n_layers=3),
}
