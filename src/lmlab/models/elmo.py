"""ELMo (Peters et al. 2018): a character-based bidirectional language model whose layers are features.

§3.1 biLM: a forward LM p(t_k | t_1 .. t_{k-1}) and a backward LM p(t_k | t_{k+1} .. t_N) trained
jointly (the sum of both log likelihoods), sharing the token representation and the softmax, each
with its own LSTMs.
§3.4 the network: a context-insensitive token representation from characters only (2048 n-gram
filters of widths 1-7, two highway layers, a linear projection to 512: `lmlab.nn.char_cnn`,
`lmlab.nn.highway`), then L = 2 LSTM layers per direction with 4096 cells and 512-dimensional
projections and a residual connection from the first to the second layer (`lmlab.nn.lstm`).
§3.2 features: for token k, h_{k,0} = [x_k; x_k] (the token representation, duplicated to the width
of the biLSTM layers) and h_{k,j} = [→h_{k,j}; ←h_{k,j}]; `hidden_states` holds them, (B, T, 2·D)
each. The task-weighted mix γ Σ_j s_j h_{k,j} belongs to the task (`lmlab.nn.scalar_mix`).

The released code's conventions (bilm-tf), which `lmlab.from_original` relies on: character ids
with begin/end-of-word marks and a +1 shift so that a row of zeros is a padding token
(`lmlab.nn.char_ids`), cell and projection clipping at 3, forget-gate bias 1.0 added at run time,
the residual on every layer but the first, dropout on each LSTM layer's input and on the top
outputs before the softmax (training only).

Input: `input_ids` (B, T, C) character ids, one row of `max_chars` per token (the tokenizer's
`char_ids`: each sentence framed `<S> ... </S>`, padding rows all zero and only at the end of a
row); or (B, T) word ids of the softmax vocabulary, which the model spells with its `word_chars`
buffer (V, C) - the tokenizer's `char_table()`, set by `set_word_chars` (pretraining does it);
until then word id i is spelled as the digits of i. Word ids lose the spelling of unknown words
(all `<unk>`), so features of real text read characters (`lmlab.embed` does).

Backward LM: by default it reads each row right to left within the row's length and its outputs
are turned back into position order (`run_reversed`), as bilm-tf's inference graph does.
`backward_ids` gives it an input of its own instead, already in reading order: pretraining reads
the corpus backwards as a separate stream (bilm-tf `LMDataset(reverse=True)`); `hidden_states`
are then not formed (the two directions read different text).

Scoring: `targets` (B, T) are the forward LM's targets (the next word; -100 = not scored),
`backward_targets` the backward LM's (the previous word in position order, or the next word of
the backward input in its reading order). The softmax (V x D + bias) is shared by the directions.
`sampled_softmax=S` (training with a gradient only) scores with S sampled candidates
(`lmlab.nn.sampled_softmax`), as bilm-tf trains on its 793k-word vocabulary.

State (kind "rnn"): [forward LM state, backward LM state], each a list per layer of (h (B, D),
c (B, H)); `state=None` is zeros. `out.state` is the state after this call: the forward LM's after
each row's last real token, the backward LM's after its first (what the next call continues:
bilm-tf's stateful inference carries both, batch row to batch row).

Known deviations: the released files hold no softmax, so a converted model has `vocab_size=0`
(features only; scoring raises). bilm-tf's word-input mode (a fixed table of precomputed token
vectors) is not implemented: the table can be rebuilt from characters at any time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import ConfigError, LmlabError
from lmlab.models.config import check_positive, check_probability, require
from lmlab.models.output import BiLMOutput
from lmlab.nn.char_cnn import CNN_ACTIVATIONS, CharCNN
from lmlab.nn.char_ids import N_CHARS, spell_numbers
from lmlab.nn.layers import parameter_groups
from lmlab.nn.lm_loss import output_nll
from lmlab.nn.lstm import LSTMPStack, lengths_to_mask, run_reversed
from lmlab.nn.sampled_softmax import sampled_softmax_nll

NO_HARD_LIMIT = 2 ** 31 - 1  # an LSTM has no position limit
PAPER_FILTERS = ((1, 32), (2, 32), (3, 64), (4, 128), (5, 256), (6, 512), (7, 1024))  # §3.4: 2048


@dataclass(frozen=True)
class ELMoConfig:
    vocab_size: int = 793471  # softmax words (the 1B Word Benchmark vocabulary); 0 = no softmax
    d_model: int = 512  # the token representation and each LSTM layer's output (the projection)
    d_lstm: int = 4096  # LSTM cells; d_model < d_lstm projects, d_model == d_lstm does not
    n_layers: int = 2
    char_dim: int = 16
    char_filters: tuple[tuple[int, int], ...] = PAPER_FILTERS  # (width, number of filters)
    n_highway: int = 2
    char_activation: str = "relu"
    max_chars: int = 50  # character ids per token
    cell_clip: float | None = 3.0
    proj_clip: float | None = 3.0
    residual: bool = True  # from the second layer on
    forget_bias: float = 1.0  # added to the forget gate at run time (TF's LSTMCell)
    dropout: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "char_filters", tuple(tuple(f) for f in self.char_filters))
        check_positive(self, "d_model", "d_lstm", "n_layers", "char_dim", "max_chars")
        check_probability(self, "dropout")
        for name in ("vocab_size", "n_highway"):
            value = getattr(self, name)
            require(type(value) is int and value >= 0,
                    f"config field {name} must be an integer >= 0, got {value!r}")
        require(self.d_model <= self.d_lstm, f"config field d_model={self.d_model} must be at most "
                                             f"d_lstm={self.d_lstm} (the LSTM projects down to it)")
        require(self.char_activation in CNN_ACTIVATIONS,
                f"config field char_activation must be one of {', '.join(CNN_ACTIVATIONS)}, "
                f"got {self.char_activation!r}")
        require(len(self.char_filters) > 0 and all(len(f) == 2 and 1 <= f[0] <= self.max_chars and f[1] >= 1
                                                   for f in self.char_filters),
                f"config field char_filters must be [width, number] pairs with 1 <= width <= max_chars="
                f"{self.max_chars}, got {[list(f) for f in self.char_filters]}")
        require(self.max_chars >= 3,
                f"config field max_chars must be >= 3 (<S> takes 3), got {self.max_chars}")
        for name in ("cell_clip", "proj_clip"):
            value = getattr(self, name)
            require(value is None or value > 0, f"config field {name} must be a positive number or null, "
                                                f"got {value!r}")
        require(self.proj_clip is None or self.d_model < self.d_lstm,
                "config field proj_clip must be null when d_model == d_lstm (there is no projection to clip)")

    @property
    def max_seq_len(self) -> int:
        return NO_HARD_LIMIT


class ELMo(nn.Module):
    """Character CNN token encoder, forward and backward LSTM LMs, one softmax; see the module docstring."""

    def __init__(self, config: ELMoConfig):
        super().__init__()
        self.config = c = config
        self.token_encoder = CharCNN(N_CHARS, c.char_dim, c.char_filters, c.d_model, c.n_highway,
                                     c.char_activation, padding_idx=0)
        proj = c.d_model if c.d_model < c.d_lstm else None
        self.forward_lm, self.backward_lm = (
            LSTMPStack(c.d_model, c.d_lstm, proj, c.n_layers, c.cell_clip, c.proj_clip, c.forget_bias,
                       residual=c.residual, dropout=c.dropout) for _ in range(2))
        self.softmax = nn.Linear(c.d_model, c.vocab_size) if c.vocab_size else None  # shared (§3.1)
        self.register_buffer("word_chars", torch.empty(c.vocab_size, c.max_chars, dtype=torch.int16))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The char CNN and the LSTMs initialise themselves; the softmax as bilm-tf: N(0, 1/D), bias 0.
        if self.softmax is not None:
            nn.init.normal_(self.softmax.weight, std=1.0 / math.sqrt(self.config.d_model))
            nn.init.zeros_(self.softmax.bias)
        if not self.word_chars.is_meta:
            c = self.config
            self.word_chars.copy_(torch.from_numpy(spell_numbers(c.vocab_size, c.max_chars)))

    def set_word_chars(self, table) -> None:
        """Spell word id i as `table[i]`, (n <= vocab_size, max_chars) character ids: the tokenizer's
        `char_table()`. Ids from n on (a vocabulary padded past the tokenizer's) keep their spelling."""
        table = torch.as_tensor(table)
        V, C = self.word_chars.shape
        if table.dim() != 2 or table.shape[0] > V or table.shape[1] != C:
            raise ConfigError(f"word spelling table has shape {tuple(table.shape)}; this model needs at most "
                              f"{V} rows (vocab_size) of {C} character ids (max_chars)")
        if table.numel() and not (int(table.min()) >= 0 and int(table.max()) < N_CHARS):
            raise ConfigError(f"word spelling table holds ids outside [0, {N_CHARS})")
        with torch.no_grad():
            self.word_chars[:table.shape[0]] = table.to(self.word_chars)

    def init_state(self, batch_size: int, max_len: int | None = None, device=None) -> list:
        """Zero state for `batch_size` rows (max_len is not needed: an LSTM state has no length)."""
        return [self.forward_lm.zero_state(batch_size, device),
                self.backward_lm.zero_state(batch_size, device)]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The token encoder, each layer of both directions together, the softmax: bottom to top."""
        layers = [[f, b] for f, b in zip(self.forward_lm.layers, self.backward_lm.layers, strict=True)]
        return parameter_groups(self.token_encoder, *layers, *([self.softmax] if self.softmax else []))

    # ---------------------------------------------------------------- input

    def characters(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T, C) character ids of (B, T, C) character ids or (B, T) word ids, checked."""
        c = self.config
        words = input_ids.dim() == 2
        if not words and not (input_ids.dim() == 3 and input_ids.shape[-1] == c.max_chars):
            raise LmlabError(f"input_ids have shape {tuple(input_ids.shape)}; expected (B, T) word ids or "
                             f"(B, T, {c.max_chars}) character ids")
        limit, what = (c.vocab_size, "word ids") if words else (N_CHARS, "character ids")
        if input_ids.numel() and not (int(input_ids.min()) >= 0 and int(input_ids.max()) < limit):
            raise LmlabError(f"{what} must be in [0, {limit}), got [{int(input_ids.min())}, "
                             f"{int(input_ids.max())}]")
        return self.word_chars[input_ids].long() if words else input_ids.long()  # (B, T, C)

    @staticmethod
    def real_tokens(chars: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T) bool: tokens that are not padding (a zero row, or attention_mask 0), checked to be
        each row's first ones (the LSTMs and the backward reversal read right-padded rows)."""
        real = chars.ne(0).any(-1)
        if attention_mask is not None:
            real = real & attention_mask.bool()
        prefix = lengths_to_mask(real.sum(1), real.shape[1])
        if not torch.equal(real, prefix):
            row = int((real != prefix).any(1).nonzero()[0, 0])
            raise LmlabError(f"row {row} has a token after padding; ELMo reads right-padded rows")
        return real

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """(token representations (B, T, D), zero at padding; real-token mask (B, T))."""
        chars = self.characters(input_ids)
        real = self.real_tokens(chars, attention_mask)
        return self.token_encoder(chars).masked_fill(~real[..., None], 0.0), real

    def _check_state(self, state, batch: int):
        if state is None:
            return None, None
        c = self.config

        def rows(s) -> bool:  # one layer's (h, c)
            return isinstance(s, (list, tuple)) and len(s) == 2 and all(t.shape[0] == batch for t in s)

        ok = isinstance(state, (list, tuple)) and len(state) == 2 and all(
            isinstance(d, (list, tuple)) and len(d) == c.n_layers and all(rows(s) for s in d) for d in state)
        if not ok:
            raise LmlabError(f"state must be [forward, backward], each {c.n_layers} layers of (h, c) with "
                             f"{batch} rows (model.init_state or a previous out.state)")
        return state[0], state[1]

    # ---------------------------------------------------------------- forward

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, state=None,
                targets: torch.Tensor | None = None, backward_targets: torch.Tensor | None = None,
                backward_ids: torch.Tensor | None = None, output_hidden_states: bool = False,
                sampled_softmax: int = 0, with_logits: bool = True) -> BiLMOutput:
        """See the module docstring; `with_logits=False` skips the (B, T, V) softmax (features only)."""
        x, real = self.encode_tokens(input_ids, attention_mask)  # (B, T, D), (B, T)
        s_fwd, s_bwd = self._check_state(state, x.shape[0])
        fwd, s_fwd = self.forward_lm(x, mask=real, state=s_fwd)  # n_layers x (B, T, D)
        if backward_ids is None:
            bwd, s_bwd = run_reversed(self.backward_lm, x, real.sum(1), s_bwd)
        else:
            xb, real_b = self.encode_tokens(backward_ids)
            if xb.shape[0] != x.shape[0]:
                raise LmlabError(f"backward_ids have {xb.shape[0]} rows, input_ids {x.shape[0]}")
            bwd, s_bwd = self.backward_lm(xb, mask=real_b, state=s_bwd)
        out = BiLMOutput(mask=real, state=[s_fwd, s_bwd])
        if backward_ids is None:
            top = torch.cat([fwd[-1], bwd[-1]], -1)  # (B, T, 2D)
            out.hidden = top
            if output_hidden_states:
                middle = (torch.cat([f, b], -1) for f, b in zip(fwd[:-1], bwd[:-1], strict=True))
                out.hidden_states = (torch.cat([x, x], -1), *middle, top)
        h_fwd, h_bwd = fwd[-1], bwd[-1]
        if self.training and self.config.dropout:  # bilm-tf drops the top outputs before the softmax
            h_fwd, h_bwd = F.dropout(h_fwd, self.config.dropout), F.dropout(h_bwd, self.config.dropout)
        if targets is None and backward_targets is None:
            if self.softmax is not None and with_logits:
                out.logits, out.logits_backward = self.softmax(h_fwd), self.softmax(h_bwd)  # (B, T, V)
            return out
        if targets is not None:
            out.nll = self._nll(h_fwd, targets, sampled_softmax, "targets")
        if backward_targets is not None:
            out.nll_backward = self._nll(h_bwd, backward_targets, sampled_softmax, "backward_targets")
        return out

    def _nll(self, hidden: torch.Tensor, targets: torch.Tensor, sampled: int, name: str) -> torch.Tensor:
        """Per-token NLL (B, T) of `targets` under the shared softmax (exact, or sampled in training)."""
        if self.softmax is None:
            raise LmlabError("this ELMo has no softmax (vocab_size 0, as the released weights): it gives "
                             "features, not word probabilities")
        if targets.shape != hidden.shape[:2]:
            raise LmlabError(f"{name} have shape {tuple(targets.shape)}; expected {tuple(hidden.shape[:2])}")
        weight, bias = self.softmax.weight, self.softmax.bias
        if sampled and self.training and torch.is_grad_enabled():
            flat = sampled_softmax_nll(hidden.flatten(0, 1), weight, bias, targets.flatten(), sampled)
            return flat.view(targets.shape)
        # The bias as one more input column, so the chunked loss (no (B, T, V) logits) applies as is.
        ones = hidden.new_ones(*hidden.shape[:2], 1)
        return output_nll(torch.cat([hidden, ones], -1), torch.cat([weight, bias[:, None]], 1), targets)


_TINY_FILTERS = ((1, 8), (2, 8), (3, 16), (4, 16))
# The released models (allennlp.org/elmo): 2 layers, the paper's 2048 filters, 16-dim characters,
# 50 characters per token, clips 3, skip connections, dropout 0.1, the 793,471-word vocabulary.
_RELEASED = dict(vocab_size=793471, n_layers=2, char_dim=16, char_filters=PAPER_FILTERS, max_chars=50,
                 cell_clip=3.0, proj_clip=3.0, residual=True, dropout=0.1)

# small, medium, original: the shapes of elmo_2x1024_128_2048cnn_1xhighway, elmo_2x2048_256_2048cnn_1xhighway
# and elmo_2x4096_512_2048cnn_2xhighway (the paper's model; 93.6M parameters without the softmax).
PRESETS = {
    "tiny": dict(vocab_size=256, d_model=16, d_lstm=64, n_layers=2, char_dim=8, char_filters=_TINY_FILTERS,
                 n_highway=1, dropout=0.1),
    "small": {**_RELEASED, "d_model": 128, "d_lstm": 1024, "n_highway": 1},
    "medium": {**_RELEASED, "d_model": 256, "d_lstm": 2048, "n_highway": 1},
    "original": {**_RELEASED, "d_model": 512, "d_lstm": 4096, "n_highway": 2},
}
