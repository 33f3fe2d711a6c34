"""CVT (Clark et al. 2018, "Semi-Supervised Sequence Modeling with Cross-View Training"): a sequence
tagger with auxiliary prediction modules that see restricted views of the sentence.

§3.1, sequence tagging. The encoder (a CNN-BiLSTM):

    x_t          = [word_embedding(w_t); char_cnn(w_t)]          the token representation
    →h_1, ←h_1   = the first biLSTM layer over x                  each direction its own LSTM
    →h_2, ←h_2   = the second biLSTM layer over h_1 = [→h_1; ←h_1]

and the prediction modules, each a one-hidden-layer network NN(h) = softmax(U·ReLU(W·h + b) + b'):

    primary   p(y_t | x)        = NN([h_1; h_2]_t)               the whole sentence
    forward   p^fwd(y_t | x)    = NN^fwd(→h_1,t)                 words <= t
    backward  p^bwd(y_t | x)    = NN^bwd(←h_1,t)                 words >= t
    future    p^future(y_t | x) = NN^future(→h_1,t-1)            words < t: not even w_t
    past      p^past(y_t | x)   = NN^past(←h_1,t+1)              words > t

The auxiliary modules read the first layer because the second layer's input holds both directions
(→h_2,t has seen the whole sentence). Outside the sentence (the first word's future view, the last
word's past view) they read zeros, the LSTMs' initial state. Only the primary module predicts at
test time; the auxiliary ones exist for training (`lmlab.objectives.cvt`: the labeled cross-entropy,
the cross-view consistency on unlabeled text, the moving average of the weights).

§3.4, multi-task: one encoder, one set of prediction modules per tag set (`n_labels` has one entry
per task). `forward(task=k)` scores tag set k; `every_task=True` scores all of them from one encoder
pass (an unlabeled batch trains every task's auxiliary modules).

`CrossViewHead` puts the same prediction modules on a pretrained encoder that declares the
`directions` reader (ELMo, kind `bilm`: its layers are [→h_j; ←h_j] and its two LSTM stacks never
mix, so every layer is a restricted view: the auxiliary modules read the top one, the primary module
every layer). It is a task head (`lmlab.models.heads.TaskModel`), built from the TaskSpec alone.

Input: `input_ids` (B, T) word ids (the word_chars tokenizer's vocabulary, unknown words <unk>),
`chars` (B, T, max_chars) the words' character ids (`lmlab.nn.char_ids`: the spelling of every word,
known or not; without `chars` the character encoder reads padding), `attention_mask` (B, T) for
right-padded rows. Padding positions give zero LSTM outputs and never reach a real position.

Sizes: the paper's taggers (its appendix) use 300-d GloVe word vectors, 1024 LSTM units per
direction in the first layer, 512 in the second and 512-unit prediction modules (preset "base").
The character CNN here (widths 2-4, no highway, no projection) is lmlab's choice. State: none (a
tagger reads whole sentences).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import ConfigError, LmlabError
from lmlab.models.config import check_positive, check_probability, require
from lmlab.models.heads import SKIP_OUTPUT_LAYER, TaskSpec
from lmlab.models.output import TaggerOutput
from lmlab.nn.char_cnn import CharCNN
from lmlab.nn.char_ids import N_CHARS
from lmlab.nn.layers import parameter_groups
from lmlab.nn.lstm import LSTMPStack, run_reversed

NO_HARD_LIMIT = 2 ** 31 - 1  # an LSTM has no position limit
VIEWS = ("forward", "backward", "future", "past")  # the auxiliary modules, §3.1
IGNORE = -100  # targets left out of the loss


@dataclass(frozen=True)
class CVTConfig:
    vocab_size: int = 50000  # words with an embedding row (the tokenizer's vocabulary)
    n_labels: tuple[int, ...] = (45,)  # labels of each tag set, one entry per task (§3.4)
    d_word: int = 300
    char_dim: int = 50
    char_filters: tuple[tuple[int, int], ...] = ((2, 100), (3, 100), (4, 100))  # (width, filters)
    max_chars: int = 30  # character ids per word (longer words are cut, lmlab.nn.char_ids)
    d_lstm: int = 1024  # the first biLSTM layer, units per direction
    d_lstm2: int = 512  # every layer above the first
    n_layers: int = 2
    d_pm: int = 512  # the prediction modules' hidden layer
    dropout: float = 0.5  # on the LSTM inputs and on every prediction module's input

    def __post_init__(self):
        object.__setattr__(self, "char_filters", tuple(tuple(f) for f in self.char_filters))
        object.__setattr__(self, "n_labels", tuple(self.n_labels))
        check_positive(self, "vocab_size", "d_word", "char_dim", "max_chars", "d_lstm", "d_lstm2",
                       "n_layers", "d_pm")
        check_probability(self, "dropout")
        require(len(self.n_labels) > 0 and all(type(n) is int and n > 0 for n in self.n_labels),
                f"config field n_labels must be a non-empty list of positive label counts, got "
                f"{list(self.n_labels)}")
        require(self.max_chars >= 3, f"config field max_chars must be >= 3, got {self.max_chars}")
        require(len(self.char_filters) > 0 and all(len(f) == 2 and 1 <= f[0] <= self.max_chars and f[1] >= 1
                                                   for f in self.char_filters),
                f"config field char_filters must be [width, number] pairs with 1 <= width <= max_chars="
                f"{self.max_chars}, got {[list(f) for f in self.char_filters]}")

    @property
    def max_seq_len(self) -> int:
        return NO_HARD_LIMIT

    def width(self, layer: int) -> int:
        """LSTM units per direction of layer `layer` (0-based)."""
        return self.d_lstm if layer == 0 else self.d_lstm2


# ---------------------------------------------------------------- prediction modules


class PredictionModule(nn.Module):
    """NN(h) = U·ReLU(W·dropout(h) + b) + b' (the logits of §3.1's softmax)."""

    def __init__(self, d_in: int, d_hidden: int, n_labels: int, dropout: float):
        super().__init__()
        self.hidden = nn.Linear(d_in, d_hidden)
        self.out = nn.Linear(d_hidden, n_labels)
        self.dropout = dropout

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = F.dropout(h, self.dropout, self.training)
        return self.out(F.relu(self.hidden(h)))  # (B, T, n_labels)


def view_inputs(fwd: torch.Tensor, bwd: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each auxiliary module reads at position t, from the per-direction states (B, T, D) (zero
    at padding): →h_t, ←h_t, →h_{t-1} (zero at t = 0) and ←h_{t+1} (zero after the last word)."""
    pad = fwd.new_zeros(fwd.shape[0], 1, fwd.shape[-1])
    return {"forward": fwd, "backward": bwd,
            "future": torch.cat([pad, fwd[:, :-1]], 1),  # (B, T, D): position t holds →h_{t-1}
            "past": torch.cat([bwd[:, 1:], pad], 1)}  # position t holds ←h_{t+1}


class CrossViewModules(nn.Module):
    """One tag set's primary module over the full states and its four auxiliary modules."""

    def __init__(self, d_full: int, d_direction: int, d_hidden: int, n_labels: int, dropout: float):
        super().__init__()
        self.primary = PredictionModule(d_full, d_hidden, n_labels, dropout)
        # In VIEWS order (a ModuleDict would clash with nn.Module.forward).
        self.aux = nn.ModuleList(PredictionModule(d_direction, d_hidden, n_labels, dropout) for _ in VIEWS)

    def forward(self, full: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor,
                views: bool) -> dict[str, torch.Tensor]:
        """{"primary": logits, and with `views` every view's logits}, each (B, T, n_labels)."""
        out = {"primary": self.primary(full)}
        if views:
            inputs = view_inputs(fwd, bwd)
            out.update({name: module(inputs[name]) for name, module in zip(VIEWS, self.aux, strict=True)})
        return out


def score(tasks: nn.ModuleList, full, fwd, bwd, mask, task: int, views: bool, every_task: bool,
          targets: torch.Tensor | None) -> TaggerOutput:
    """The TaggerOutput of prediction modules `tasks` over the encoder states (see TaggerOutput)."""
    if not 0 <= task < len(tasks):
        raise LmlabError(f"task {task} does not exist; this tagger has {len(tasks)} tag set(s)")
    chosen = range(len(tasks)) if every_task else [task]
    results = {k: tasks[k](full, fwd, bwd, views) for k in chosen}
    mine = results[task]
    out = TaggerOutput(logits=mine["primary"], mask=mask,
                       views={k: v for k, v in mine.items() if k != "primary"} if views else None,
                       tasks=[results[k] for k in chosen] if every_task else None)
    if targets is not None:
        if targets.shape != mask.shape:
            raise LmlabError(f"targets have shape {tuple(targets.shape)}; expected {tuple(mask.shape)}")
        out.nll = token_nll(out.logits, targets)
        if views:
            out.view_nll = {k: token_nll(v, targets) for k, v in out.views.items()}
    return out


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) cross-entropy of each target label, 0 where the target is IGNORE."""
    flat = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                           reduction="none")
    return flat.view(targets.shape)


# ---------------------------------------------------------------- the tagger


class CVTTagger(nn.Module):
    """Word embeddings + character CNN, an n-layer biLSTM, prediction modules per tag set."""

    def __init__(self, config: CVTConfig):
        super().__init__()
        self.config = c = config
        self.words = nn.Embedding(c.vocab_size, c.d_word)
        self.chars = CharCNN(N_CHARS, c.char_dim, c.char_filters, sum(n for _, n in c.char_filters),
                             n_highway=0, padding_idx=0)
        d_in = c.d_word + self.chars.d_out
        widths = [c.width(k) for k in range(c.n_layers)]
        inputs = [d_in] + [2 * w for w in widths[:-1]]  # layer k > 0 reads both directions below it
        self.forward_layers = nn.ModuleList(LSTMPStack(i, w) for i, w in zip(inputs, widths, strict=True))
        self.backward_layers = nn.ModuleList(LSTMPStack(i, w) for i, w in zip(inputs, widths, strict=True))
        self.tasks = nn.ModuleList(CrossViewModules(2 * sum(widths), widths[0], c.d_pm, n, c.dropout)
                                   for n in c.n_labels)
        nn.init.normal_(self.words.weight, std=0.1)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The token representation, each biLSTM layer (both directions), the prediction modules."""
        layers = [[f, b] for f, b in zip(self.forward_layers, self.backward_layers, strict=True)]
        return parameter_groups([self.words, self.chars], *layers, self.tasks)

    def init_word_vectors(self, rows: list[int], vectors: torch.Tensor) -> None:
        """Set the embeddings of word ids `rows` to `vectors` (len(rows), d_word): pretrained vectors."""
        if vectors.shape != (len(rows), self.config.d_word):
            raise ConfigError(f"word vectors have shape {tuple(vectors.shape)}; expected "
                              f"({len(rows)}, {self.config.d_word}) (d_word)")
        with torch.no_grad():
            self.words.weight[torch.as_tensor(rows, dtype=torch.long)] = vectors.to(self.words.weight)

    def tokens(self, input_ids, chars, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (B, T, d_word + d_char), zero at padding; lengths (B,)), inputs checked."""
        c = self.config
        if input_ids.dim() != 2:
            raise LmlabError(f"input_ids have shape {tuple(input_ids.shape)}; expected (B, T) word ids")
        if input_ids.numel() and not (int(input_ids.min()) >= 0 and int(input_ids.max()) < c.vocab_size):
            raise LmlabError(f"word ids must be in [0, {c.vocab_size}), got [{int(input_ids.min())}, "
                             f"{int(input_ids.max())}]")
        if chars is None:
            chars = input_ids.new_zeros(*input_ids.shape, c.max_chars)
        if chars.shape != (*input_ids.shape, c.max_chars):
            raise LmlabError(f"chars have shape {tuple(chars.shape)}; expected "
                             f"{(*input_ids.shape, c.max_chars)}")
        real = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.bool())
        lengths = real.sum(1)
        if not torch.equal(real, torch.arange(real.shape[1], device=real.device)[None] < lengths[:, None]):
            raise LmlabError("attention_mask: the tagger reads right-padded rows (padding only at the end)")
        x = torch.cat([self.words(input_ids), self.chars(chars.long())], -1)  # (B, T, d_in)
        return x.masked_fill(~real[..., None], 0.0), lengths

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[list, list]:
        """Per layer, the forward and the backward states (B, T, width), zero at padding."""
        fwd, bwd, h = [], [], x
        for f_layer, b_layer in zip(self.forward_layers, self.backward_layers, strict=True):
            h = F.dropout(h, self.config.dropout, self.training)
            f = f_layer(h, lengths=lengths)[0][-1]  # (B, T, width): read left to right
            b = run_reversed(b_layer, h, lengths)[0][-1]  # read right to left, in position order
            fwd.append(f)
            bwd.append(b)
            h = torch.cat([f, b], -1)  # (B, T, 2·width): the next layer sees both directions
        return fwd, bwd

    def forward(self, input_ids: torch.Tensor, chars: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                task: int = 0, views: bool = False, every_task: bool = False,
                output_hidden_states: bool = False) -> TaggerOutput:
        x, lengths = self.tokens(input_ids, chars, attention_mask)
        fwd, bwd = self.encode(x, lengths)
        layers = [torch.cat([f, b], -1) for f, b in zip(fwd, bwd, strict=True)]  # (B, T, 2·width) each
        mask = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
        out = score(self.tasks, torch.cat(layers, -1), fwd[0], bwd[0], mask, task, views, every_task,
                    targets)
        out.hidden = layers[-1]
        if output_hidden_states:
            out.hidden_states = (x, *layers)
        return out


# ---------------------------------------------------------------- on a pretrained encoder


class CrossViewHead(nn.Module):
    """The task head of the `directions` reader: CVT's prediction modules on a pretrained encoder.

    spec.extra: `encoder_kind` (the backbone family's declared kind), `tasks` ([{"name", "labels"}],
    one per tag set, the first = spec.labels), and for kind `bilm` `encoder_dim` (the width of one
    direction) and `encoder_layers` (its biLSTM layers) and `d_pm`. A `tagger` backbone (a CVT
    tagger) has its own modules: the head hands the batch on. The batch holds `score_mask` (B, T):
    the positions that are words (ELMo reads `<S> words </S>`).
    """

    def __init__(self, spec: TaskSpec):
        super().__init__()
        x = spec.extra
        try:
            self.kind, counts = x["encoder_kind"], [len(t["labels"]) for t in x["tasks"]]
            if self.kind == "bilm":
                d, n = int(x["encoder_dim"]), int(x["encoder_layers"])
                self.tasks = nn.ModuleList(CrossViewModules(2 * d * n, d, int(x["d_pm"]), k, spec.dropout)
                                           for k in counts)
            elif self.kind != "tagger":
                raise ConfigError(f"cross-view training reads per-direction states of a bilm or a tagger, "
                                  f"not of a {self.kind} model")
        except (KeyError, TypeError) as e:
            raise ConfigError(f"task spec extra: missing or malformed {e} (a directions task model)"
                              ) from None

    def forward(self, backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                batch: dict) -> TaggerOutput:
        task = batch.get("task")
        task = 0 if task is None else int(task.reshape(-1)[0])  # one tag set per batch
        views, every_task = bool(batch.get("views", False)), bool(batch.get("every_task", False))
        if self.kind == "tagger":
            return backbone(input_ids, chars=batch.get("chars"), attention_mask=attention_mask, task=task,
                            views=views, every_task=every_task)
        out = backbone(input_ids, attention_mask=attention_mask, output_hidden_states=True,
                       **SKIP_OUTPUT_LAYER.get(self.kind, {}))
        layers = out.hidden_states[1:]  # layer 0 is the token representation, [x; x]
        d = layers[-1].shape[-1] // 2
        fwd, bwd = layers[-1][..., :d], layers[-1][..., d:]  # [→h; ←h] of the top layer
        mask = batch["score_mask"].bool()
        result = score(self.tasks, torch.cat(layers, -1), fwd, bwd, mask, task, views, every_task, None)
        result.hidden = out.hidden
        return result


_TINY = dict(vocab_size=256, n_labels=(8,), d_word=16, char_dim=8, char_filters=((2, 8), (3, 8)),
             max_chars=16, d_lstm=32, d_lstm2=24, n_layers=2, d_pm=16, dropout=0.1)
PRESETS = {
    "tiny": _TINY,
    # the experiment of docs/cvt.md (CPU minutes): 50-d GloVe words, small LSTMs
    "small": dict(d_word=50, char_dim=16, char_filters=((2, 25), (3, 25), (4, 25)), max_chars=20,
                  d_lstm=128, d_lstm2=64, d_pm=64, dropout=0.5),
    "base": dict(d_word=300, char_dim=50, char_filters=((2, 100), (3, 100), (4, 100)), max_chars=30,
                 d_lstm=1024, d_lstm2=512, d_pm=512, dropout=0.5),
}
