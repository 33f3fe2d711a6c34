"""CoVe (McCann et al. 2017, "Learned in Translation: Contextualized Word Vectors"): an attentional
encoder-decoder for machine translation whose encoder, the MT-LSTM, gives context vectors for other tasks.

§2 / §3 the network:
- input: fixed word vectors GloVe(w) (never trained: a buffer `source_vectors`, not a parameter,
  so no optimizer sees it and no gradient reaches it);
- encoder: a two-layer bidirectional LSTM, h = MT-LSTM(GloVe(w^x)) (eq. 1); layer l > 1 reads the
  two directions of layer l - 1 side by side; each direction is `lmlab.nn.lstm.LSTMP` without
  projection (torch.nn.LSTM's equations and parameters), the backward one reading each row right
  to left within its own length;
- decoder: a two-layer unidirectional LSTM fed with the previous target word's embedding and the
  previous context-adjusted state ("input feeding"), h_t^dec = LSTM([z_{t-1}; h~_{t-1}], h_{t-1}^dec)
  (eq. 2); attention α_t = softmax(H (W_1 h_t^dec + b_1)) over the encoder states H (eq. 3),
  padding masked out; h~_t = tanh(W_2 [H^T α_t; h_t^dec] + b_2) (eq. 4); p(w_t^z | ...) =
  softmax(W_out h~_t + b_out) (eq. 5): Luong et al.'s "general" attention with input feeding.
§4 features: CoVe(w) = MT-LSTM(GloVe(w)), the top layer; a task reads [GloVe(w); CoVe(w)]. Here
`hidden_states` are the encoder's layers, (B, S, 2·d_model) each (the input vectors are not a layer:
a task concatenates GloVe(w) itself); `hidden` is the top one.

As in the released training code (OpenNMT-py, salesforce/cove): the decoder's hidden size is the
encoder's two directions together (2·d_model), its initial state is each encoder layer's final
states [→h; ←h] (the forward one after the row's last word, the backward one after its first),
the first input feed is zero, and dropout hits the input vectors, the inputs of the upper LSTM
layers and h~ (which is also what is fed back).

Inputs: `input_ids` (B, S) rows of `source_vectors` (row 0 is the zero vector: padding and words
without a vector), or (B, S, d_input) floating-point word vectors given directly (features of any
word); `attention_mask` (B, S) marks the real words, a prefix of each row (right padding), at
least one per row. `decoder_input_ids` (B, T) target ids, `<bos>` first (teacher forcing).

Decoding state (kind "rnn" of `lmlab.models.registry`): [memory H (B, S, 2·d_model), source mask
(B, S), [(h, c) (B, 2·d_model) per decoder layer], input feed h~ (B, 2·d_model)], every tensor
batch-first. `model(input_ids).state` (or `init_state(B, source=ids)`) is the state before the
first target word; `model(decoder_input_ids=y, state=s)` continues it (greedy and beam search in
`lmlab.generate.beam`).

The released MT-LSTM (`lmlab.from_original("cove", path)`) holds the encoder only: such a model has
vocab_size 0 and no decoder (features; decoding raises).

Known deviations: the paper trains on WMT 2017 (7M pairs, 840B GloVe); lmlab's built-in corpus is
LibreOffice's help (lmlab.data.parallel). The target vocabulary is words (OpenNMT's), not subwords.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import ConfigError, LmlabError
from lmlab.models.config import check_positive, check_probability, require
from lmlab.models.output import Seq2SeqOutput
from lmlab.nn.layers import parameter_groups
from lmlab.nn.lm_loss import output_nll
from lmlab.nn.lstm import LSTMP, lengths_to_mask, reverse_padded

NO_HARD_LIMIT = 2 ** 31 - 1  # an LSTM has no position limit


@dataclass(frozen=True)
class CoVeConfig:
    vocab_size: int = 40000  # target words (the decoder's softmax); 0 = an encoder alone (the release)
    source_vocab_size: int = 2  # rows of the fixed word-vector table, row 0 the zero vector
    d_input: int = 300  # word vector width (GloVe 840B: 300)
    d_model: int = 300  # encoder LSTM units per direction; features and decoder are 2·d_model wide
    n_layers: int = 2  # encoder layers and decoder layers
    d_embed: int = 300  # target word embeddings (trained)
    dropout: float = 0.2
    word_vectors: str | None = None  # where the source vectors came from (builtin:NAME or a file name)

    def __post_init__(self):
        check_positive(self, "source_vocab_size", "d_input", "d_model", "n_layers", "d_embed")
        require(type(self.vocab_size) is int and self.vocab_size >= 0,
                f"config field vocab_size must be an integer >= 0, got {self.vocab_size!r}")
        check_probability(self, "dropout")
        require(self.word_vectors is None or isinstance(self.word_vectors, str),
                f"config field word_vectors must be a name or null, got {self.word_vectors!r}")

    @property
    def max_seq_len(self) -> int:
        return NO_HARD_LIMIT

    @property
    def d_decoder(self) -> int:
        return 2 * self.d_model


class MTLSTM(nn.Module):
    """The encoder: n_layers bidirectional layers (`fwd`, `bwd` LSTMP each) over right-padded rows.

    forward(x (B, S, D), mask (B, S)) -> (every layer's [→h; ←h] (B, S, 2H), zero at padding;
    each layer's final (h, c) with the two directions side by side, (B, 2H))."""

    def __init__(self, d_input: int, hidden: int, n_layers: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.layers = nn.ModuleList()
        for i in range(n_layers):
            d_in = d_input if i == 0 else 2 * hidden
            layer = nn.Module()
            layer.fwd, layer.bwd = LSTMP(d_in, hidden), LSTMP(d_in, hidden)
            self.layers.append(layer)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        lengths = mask.sum(1)
        outputs, finals = [], []
        for layer in self.layers:
            x = F.dropout(x, self.dropout, self.training)
            y_f, (h_f, c_f) = layer.fwd(x, mask)  # (B, S, H)
            # The backward direction reads each row reversed within its length (padding stays put).
            y_b, (h_b, c_b) = layer.bwd(reverse_padded(x, lengths), mask)
            x = torch.cat([y_f, reverse_padded(y_b, lengths)], -1)  # (B, S, 2H)
            outputs.append(x)
            finals.append((torch.cat([h_f, h_b], -1), torch.cat([c_f, c_b], -1)))  # (B, 2H) each
        return outputs, finals


class AttentionDecoder(nn.Module):
    """The decoder LSTM with input feeding and attention over the encoder states (eqs. 2-5)."""

    def __init__(self, vocab_size: int, d_embed: int, d_decoder: int, n_layers: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.embed = nn.Embedding(vocab_size, d_embed)
        self.cells = nn.ModuleList(nn.LSTMCell(d_embed + d_decoder if i == 0 else d_decoder, d_decoder)
                                   for i in range(n_layers))
        self.attn_in = nn.Linear(d_decoder, d_decoder)  # W_1, b_1 (the memory is 2·d_model = d_decoder wide)
        self.attn_out = nn.Linear(2 * d_decoder, d_decoder)  # W_2, b_2
        self.out = nn.Linear(d_decoder, vocab_size)  # W_out, b_out

    def step(self, z: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, layers: list,
             feed: torch.Tensor):
        """One target position: z (B, E) the previous word's embedding -> (h~ (B, D), new layer states,
        attention weights (B, S))."""
        x = torch.cat([z, feed], -1)  # input feeding: [z_{t-1}; h~_{t-1}]
        new = []
        for i, (cell, (h, c)) in enumerate(zip(self.cells, layers, strict=True)):
            if i:
                x = F.dropout(x, self.dropout, self.training)
            h, c = cell(x, (h, c))
            new.append((h, c))
            x = h
        query = self.attn_in(x)  # (B, D): W_1 h_t + b_1
        scores = torch.bmm(memory, query[:, :, None]).squeeze(-1)  # (B, S)
        alpha = scores.masked_fill(~mask, float("-inf")).softmax(-1)  # padding gets weight 0 exactly
        context = torch.bmm(alpha[:, None, :], memory).squeeze(1)  # (B, D): H^T α_t
        h_tilde = torch.tanh(self.attn_out(torch.cat([context, x], -1)))
        return F.dropout(h_tilde, self.dropout, self.training), new, alpha


class CoVe(nn.Module):
    """MT-LSTM encoder over fixed word vectors + attentional LSTM decoder; see the module docstring."""

    def __init__(self, config: CoVeConfig):
        super().__init__()
        self.config = c = config
        # Fixed: a buffer (saved with the model, never a parameter). Row 0 is the zero vector.
        self.register_buffer("source_vectors", torch.empty(c.source_vocab_size, c.d_input))
        self.encoder = MTLSTM(c.d_input, c.d_model, c.n_layers, c.dropout)
        self.decoder = AttentionDecoder(c.vocab_size, c.d_embed, c.d_decoder, c.n_layers, c.dropout) \
            if c.vocab_size else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # LSTMs, LSTM cells and linear layers initialise themselves (torch's uniform ±1/√fan). Until
        # set_source_vectors gives real ones, source word i has a random stand-in vector.
        if not self.source_vectors.is_meta:
            with torch.no_grad():
                self.source_vectors.normal_(0.0, 0.5)
                self.source_vectors[0].zero_()

    def set_source_vectors(self, table) -> None:
        """Read source word i as `table[i]`, (source_vocab_size, d_input); row 0 must be zeros."""
        table = torch.as_tensor(table, dtype=self.source_vectors.dtype)
        if tuple(table.shape) != tuple(self.source_vectors.shape):
            raise ConfigError(f"source word vectors have shape {tuple(table.shape)}; this model reads "
                              f"{tuple(self.source_vectors.shape)} (source_vocab_size, d_input)")
        if table.numel() and (bool(table[0].any()) or not bool(torch.isfinite(table).all())):
            raise ConfigError("source word vectors: row 0 (padding, no vector) must be zeros and every "
                              "value finite")
        with torch.no_grad():
            self.source_vectors.copy_(table)

    def with_source_vectors(self, table) -> CoVe:
        """The same network reading another fixed table (n + 1, d_input), row 0 zeros: the encoder of a
        task reads the task's own word vectors (lmlab.tasks.feature_setup)."""
        table = torch.as_tensor(table, dtype=torch.float32)
        if table.dim() != 2 or table.shape[1] != self.config.d_input:
            raise ConfigError(f"word vectors of width {table.shape[-1]}: this CoVe model reads "
                              f"{self.config.d_input}-d vectors ({self.config.word_vectors or 'its own'})")
        other = CoVe(dataclasses.replace(self.config, source_vocab_size=table.shape[0]))
        other.family = getattr(self, "family", None)
        state = {k: v for k, v in self.state_dict().items() if k != "source_vectors"}
        other.load_state_dict(state, strict=False)
        other.set_source_vectors(table)
        return other.to(self.source_vectors.device)

    def init_state(self, batch_size: int, max_len: int | None = None, device=None, source=None,
                   attention_mask=None) -> list:
        """The decoding state before the first target word: the encoded `source` (B, S) or (B, S, D)."""
        if source is None:
            raise LmlabError("a translation model's decoding state starts from its source: "
                             "init_state(batch_size, source=ids) or model(ids).state")
        if source.shape[0] != batch_size:
            raise LmlabError(f"source has {source.shape[0]} rows, batch_size is {batch_size}")
        return self(source, attention_mask=attention_mask).state

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Encoder layer by layer, then the decoder's embedding and LSTM, then attention and output."""
        d = self.decoder
        if d is None:
            return parameter_groups(*self.encoder.layers)
        return parameter_groups(*self.encoder.layers, [d.embed, d.cells], [d.attn_in, d.attn_out, d.out])

    # ---------------------------------------------------------------- encoder

    def input_vectors(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, S, d_input) word vectors of (B, S) source ids or of given (B, S, d_input) vectors."""
        c = self.config
        if input_ids.dim() == 3 and input_ids.is_floating_point():
            if input_ids.shape[-1] != c.d_input:
                raise LmlabError(f"input vectors are {input_ids.shape[-1]}-d; this model reads {c.d_input}-d")
            return input_ids.to(self.source_vectors.dtype)
        if input_ids.dim() != 2 or input_ids.is_floating_point():
            raise LmlabError(f"input_ids have shape {tuple(input_ids.shape)}; expected (B, S) source word "
                             f"ids or (B, S, {c.d_input}) word vectors")
        low, high = (int(input_ids.min()), int(input_ids.max())) if input_ids.numel() else (0, 0)
        if not (0 <= low and high < c.source_vocab_size):
            raise LmlabError(f"source word ids must be in [0, {c.source_vocab_size}), got [{low}, {high}]")
        return self.source_vectors[input_ids]

    @staticmethod
    def source_mask(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, S) bool real words, checked: a prefix of each row, at least one word."""
        B, S = x.shape[:2]
        if attention_mask is None:
            real = torch.ones(B, S, dtype=torch.bool, device=x.device)
        else:
            if tuple(attention_mask.shape) != (B, S):
                raise LmlabError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected {(B, S)}")
            real = attention_mask.bool()
        lengths = real.sum(1)
        if B and int(lengths.min()) == 0:
            raise LmlabError(f"row {int((lengths == 0).nonzero()[0, 0])} has an empty source; every "
                             f"source needs at least one word")
        if not torch.equal(real, lengths_to_mask(lengths, S)):
            row = int((real != lengths_to_mask(lengths, S)).any(1).nonzero()[0, 0])
            raise LmlabError(f"row {row} has a word after padding; sources are right-padded")
        return real

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """(encoder layers [(B, S, 2·d_model)], source mask (B, S), the decoding state before word 1)."""
        x = self.input_vectors(input_ids)  # (B, S, d_input)
        mask = self.source_mask(x, attention_mask)
        layers, finals = self.encoder(x, mask)
        memory = layers[-1]
        feed = memory.new_zeros(memory.shape[0], self.config.d_decoder)
        return layers, mask, [memory, mask, finals, feed]

    # ---------------------------------------------------------------- decoder

    def _check_state(self, state) -> list:
        c = self.config
        pair = lambda s: isinstance(s, (list, tuple)) and len(s) == 2  # noqa: E731
        ok = isinstance(state, (list, tuple)) and len(state) == 4 and isinstance(state[2], (list, tuple)) \
            and len(state[2]) == c.n_layers and all(pair(s) for s in state[2])
        if ok:
            memory, mask, layers, feed = state
            B, D = memory.shape[0], c.d_decoder
            ok = memory.dim() == 3 and memory.shape[-1] == D and mask.shape == memory.shape[:2] \
                and feed.shape == (B, D) and all(t.shape == (B, D) for s in layers for t in s)
        if not ok:
            raise LmlabError(f"state must be [memory (B, S, {c.d_decoder}), source mask (B, S), {c.n_layers} "
                             f"decoder layers of (h, c), input feed (B, {c.d_decoder})]: model(source).state "
                             f"or a previous out.state")
        return list(state)

    def decode(self, decoder_input_ids: torch.Tensor, state: list):
        """Teacher-forced (or stepped) decoding: (h~ (B, T, D), the state after the last word,
        attention (B, T, S))."""
        memory, mask, layers, feed = state
        if self.decoder is None:
            raise LmlabError("this CoVe model is an encoder alone (vocab_size 0, as the released MT-LSTM): "
                             "it gives features, not translations")
        if decoder_input_ids.dim() != 2 or decoder_input_ids.shape[0] != memory.shape[0]:
            raise LmlabError(f"decoder_input_ids have shape {tuple(decoder_input_ids.shape)}; expected "
                             f"({memory.shape[0]}, T) target ids")
        V = self.config.vocab_size
        ids = decoder_input_ids
        if ids.numel() and not (int(ids.min()) >= 0 and int(ids.max()) < V):
            raise LmlabError(f"target ids must be in [0, {V}), got [{int(ids.min())}, {int(ids.max())}]")
        z = F.dropout(self.decoder.embed(ids), self.config.dropout, self.training)  # (B, T, E)
        outs, alphas = [], []
        for t in range(ids.shape[1]):
            feed, layers, alpha = self.decoder.step(z[:, t], memory, mask, layers, feed)
            outs.append(feed)
            alphas.append(alpha)
        if not outs:
            return memory.new_zeros(ids.shape[0], 0, self.config.d_decoder), state, None
        return torch.stack(outs, 1), [memory, mask, layers, feed], torch.stack(alphas, 1)

    # ---------------------------------------------------------------- forward

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                state=None, output_hidden_states: bool = False) -> Seq2SeqOutput:
        """Encode `input_ids` (or continue `state`), then decode `decoder_input_ids` if given: logits
        (B, T, V), or per-token `nll` (B, T) of `targets` (-100 = not scored). Without decoder input:
        the encoder's layers and the decoding state only."""
        out = Seq2SeqOutput()
        if state is None:
            if input_ids is None:
                raise LmlabError("give input_ids (the source) or the state of an earlier call")
            layers, mask, state = self.encode(input_ids, attention_mask)
            out.hidden, out.mask = layers[-1], mask
            if output_hidden_states:
                out.hidden_states = tuple(layers)
        else:
            if input_ids is not None:
                raise LmlabError("the state holds the encoded source already: pass decoder_input_ids only")
            state = self._check_state(state)
        if decoder_input_ids is None:
            if targets is not None:
                raise LmlabError("targets are scored by the decoder: pass decoder_input_ids too")
            out.state = state
            return out
        h, out.state, out.attention = self.decode(decoder_input_ids, state)
        out.decoder_hidden = h
        if targets is None:
            out.logits = self.decoder.out(h)  # (B, T, V)
            return out
        if targets.shape != decoder_input_ids.shape:
            raise LmlabError(f"targets have shape {tuple(targets.shape)}; expected "
                             f"{tuple(decoder_input_ids.shape)} (one per decoder input)")
        w, b = self.decoder.out.weight, self.decoder.out.bias
        # The bias as one more input column, so the chunked loss (no (B, T, V) logits) applies as is.
        ones = h.new_ones(*h.shape[:2], 1)
        out.nll = output_nll(torch.cat([h, ones], -1), torch.cat([w, b[:, None]], 1), targets)
        return out


PRESETS = {
    # Tests: ~30k parameters, random stand-in word vectors.
    "tiny": dict(vocab_size=64, source_vocab_size=64, d_input=8, d_model=16, n_layers=2, d_embed=16,
                 dropout=0.1),
    # The tiny model over real 50-d GloVe (`lmlab zoo --run`: its features go beside the same GloVe).
    "tiny-glove": dict(vocab_size=64, source_vocab_size=64, d_input=50, d_model=16, n_layers=2, d_embed=16,
                       dropout=0.1, word_vectors="builtin:glove-6b-50d"),
    # CPU-sized, on builtin:glove-6b-50d (the default --word-vectors of `lmlab pretrain --model cove`).
    "small": dict(vocab_size=8000, d_input=50, d_model=128, n_layers=2, d_embed=128, dropout=0.2,
                  word_vectors="builtin:glove-6b-50d"),
    # The paper's MT-LSTM: 300-d GloVe (840B) in, 300 units per direction, two layers (§4, the released
    # wmtlstm weights); the decoder as in its OpenNMT-py training code.
    "original": dict(vocab_size=40000, d_input=300, d_model=300, n_layers=2, d_embed=300, dropout=0.2,
                     word_vectors="glove.840B.300d.txt"),
}
