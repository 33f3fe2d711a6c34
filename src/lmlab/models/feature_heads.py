"""Task models over frozen features, the way ELMo is used (Peters et al. 2018, §3.3 and §5): the reader
`scalar_mix`.

Per word k the task model reads
    x_k = [GloVe(w_k); ELMo_k],   ELMo_k = γ · Σ_j softmax(s)_j · h_{k,j}          (§3.3, eq. 1)
where h_{k,j} are the frozen network's layers at word k (any lmlab encoder: ELMo's token layer and
biLSTM layers, BERT's or GPT's embedding output and blocks), s and γ are learned with the task model
(`lmlab.nn.scalar_mix.ScalarMix`: optional layer norm of each layer, L2 penalty λ·Σ s_j² added to the
loss), and GloVe(w) are fixed word vectors (never trained: a buffer, not a parameter). Either part may
be absent: word vectors alone are the baseline, a mix alone is ELMo without word vectors.

A word read as several sub-tokens (WordPiece, BPE) gets its first sub-token's state ("first", BERT
§5.3) or the mean of its sub-tokens ("mean"); ELMo reads one token per word.

Task networks (small versions of the paper's baselines, §4: a biLSTM over the words):
- `FeatureClassifier` (classify): dropout, a biLSTM, max-pool over the words, dropout, linear
  (the max-pooled biLSTM of BCN / InferSent; §4's SST model is the biattentive classification network);
- `FeaturePairClassifier` (pair): each text pooled so, then [u; v; |u - v|; u ⊙ v] and a linear layer
  (InferSent's pair features; §4's SNLI model is ESIM, with attention between the texts);
- `FeatureTagger` (tag): dropout, a biLSTM, dropout, a linear layer per word (§4's NER and chunking
  taggers without the CRF).

The batch (`lmlab.tasks.features` builds it): word_ids (B, W) rows of the word-vector table (0 = out of
vocabulary or padding: a zero vector), word_mask (B, W), and with an encoder word_start / word_end
(B, W): each word's first sub-token position and one past its last in the encoder's input. The
encoder's hidden states arrive from `TaskModel` (run frozen, under no_grad, in eval mode).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmlab.errors import ConfigError
from lmlab.models.heads import TaskOutput, TaskSpec
from lmlab.nn.scalar_mix import ScalarMix

WORD_POOLS = ("first", "mean")
PER_WORD = ("word_ids", "word_mask", "word_start", "word_end")  # the batch's (B, W) word tensors


def word_states(h: torch.Tensor, start: torch.Tensor, end: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, W, D) per word from sub-token states h (B, T, D): the state at `start`, or the mean over
    [start, end) (prefix sums: no (B, W, T) matrix)."""
    index = start.clamp(min=0)[..., None].expand(-1, -1, h.shape[-1])  # (B, W, D)
    if pool == "first":
        return h.gather(1, index)
    sums = torch.cat([h.new_zeros(h.shape[0], 1, h.shape[-1]), h.cumsum(1)], 1)  # (B, T + 1, D)
    stop = end.clamp(min=1)[..., None].expand(-1, -1, h.shape[-1])
    count = (end - start).clamp(min=1)[..., None].to(h.dtype)  # (B, W, 1)
    return (sums.gather(1, stop) - sums.gather(1, index)) / count


class WordFeatures(nn.Module):
    """x_k = [GloVe(w_k); mix(h_k)] per word: (B, W, vector_dim + encoder_dim)."""

    def __init__(self, n_words: int, vector_dim: int, n_layers: int, encoder_dim: int,
                 layer_norm: bool = False, l2_coef: float = 0.0, pool: str = "first"):
        super().__init__()
        if pool not in WORD_POOLS:
            raise ConfigError(f"word pool must be one of {', '.join(WORD_POOLS)}, got {pool!r}")
        if not (vector_dim or n_layers):
            raise ConfigError("a feature-based task model needs word vectors, an encoder's layers, or both")
        self.pool, self.dim = pool, vector_dim + (encoder_dim if n_layers else 0)
        # Row 0 is the zero vector of out-of-vocabulary words and padding; fixed, so a buffer.
        self.register_buffer("vectors", torch.zeros(n_words + 1, vector_dim) if vector_dim else None)
        self.mix = ScalarMix(n_layers, layer_norm, l2_coef) if n_layers else None

    def forward(self, hidden_states, batch: dict) -> torch.Tensor:
        parts = []
        if self.vectors is not None:
            parts.append(self.vectors[batch["word_ids"]])  # (B, W, vector_dim)
        if self.mix is not None:
            if hidden_states is None:
                raise ConfigError("this task model mixes an encoder's layers, but it has no encoder")
            start, end = batch["word_start"], batch["word_end"]
            layers = [word_states(h.float(), start, end, self.pool) for h in hidden_states]  # (B, W, D) each
            parts.append(self.mix(layers, batch["word_mask"].bool()))
        return torch.cat(parts, -1)

    def penalty(self) -> torch.Tensor | None:
        return None if self.mix is None else self.mix.l2_penalty()


class BiLSTM(nn.Module):
    """A bidirectional LSTM over right-padded words: (B, W, D) -> (B, W, 2H), zero at padding; packed,
    so a row's outputs do not depend on the padding after it."""

    def __init__(self, d_in: int, hidden: int, n_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, n_layers, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, W, 2H)
        return out


class FeatureClassifier(nn.Module):
    """classify: [GloVe; mix] -> dropout -> biLSTM -> max-pool over the words -> dropout -> linear."""

    inputs = 1  # pooled vectors per example the linear layer reads

    def __init__(self, words: WordFeatures, hidden: int, n_layers: int, n_outputs: int, dropout: float):
        super().__init__()
        self.words, self.drop = words, nn.Dropout(dropout)
        self.lstm = BiLSTM(words.dim, hidden, n_layers)
        self.out = nn.Linear(self.inputs * 2 * hidden, n_outputs)

    def pooled(self, hidden_states, batch: dict) -> torch.Tensor:
        """(rows, 2H): each row's biLSTM states max-pooled over its words."""
        mask = batch["word_mask"].bool()
        h = self.lstm(self.drop(self.words(hidden_states, batch)), mask)  # (rows, W, 2H)
        return h.masked_fill(~mask[..., None], torch.finfo(h.dtype).min).amax(1)

    def forward(self, hidden_states, batch: dict) -> TaskOutput:
        pooled = self.pooled(hidden_states, batch)  # (B, 2H)
        return TaskOutput(logits=self.out(self.drop(pooled)), penalty=self.words.penalty())


class FeaturePairClassifier(FeatureClassifier):
    """pair: both texts through the same biLSTM + max-pool (u, v), then [u; v; |u - v|; u ⊙ v] ->
    dropout -> linear (the sentence-pair features of InferSent, Conneau et al. 2017 §3.1). The batch's
    word tensors are (B, 2, W), the hidden states (2B, T, D) (rows a_0 b_0 a_1 b_1 ...)."""

    inputs = 4

    def forward(self, hidden_states, batch: dict) -> TaskOutput:
        rows = {k: batch[k].flatten(0, 1) for k in PER_WORD if k in batch}  # (B, 2, W) -> (2B, W)
        pooled = self.pooled(hidden_states, rows)  # (2B, 2H)
        u, v = pooled.view(-1, 2, pooled.shape[-1]).unbind(1)  # (B, 2H) each
        pair = torch.cat([u, v, (u - v).abs(), u * v], -1)  # (B, 8H)
        return TaskOutput(logits=self.out(self.drop(pair)), penalty=self.words.penalty())


class FeatureTagger(nn.Module):
    """tag: [GloVe; mix] -> dropout -> biLSTM -> dropout -> linear at every word."""

    def __init__(self, words: WordFeatures, hidden: int, n_layers: int, n_labels: int, dropout: float):
        super().__init__()
        self.words, self.drop = words, nn.Dropout(dropout)
        self.lstm = BiLSTM(words.dim, hidden, n_layers)
        self.out = nn.Linear(2 * hidden, n_labels)

    def forward(self, hidden_states, batch: dict) -> TaskOutput:
        mask = batch["word_mask"].bool()
        h = self.lstm(self.drop(self.words(hidden_states, batch)), mask)  # (B, W, 2H)
        return TaskOutput(logits=self.out(self.drop(h)), penalty=self.words.penalty())  # (B, W, n_labels)


FEATURE_TASKS = {"classify": FeatureClassifier, "pair": FeaturePairClassifier, "tag": FeatureTagger}


def build_feature_head(spec: TaskSpec) -> nn.Module:
    """The head a `scalar_mix` spec describes; every size comes from `spec.extra` (lmlab.tasks.features
    fills it in), so `lmlab.load` rebuilds it from config.json alone."""
    if spec.name not in FEATURE_TASKS:
        raise ConfigError(f"the scalar_mix reader has task models for {', '.join(FEATURE_TASKS)}, "
                          f"not {spec.name!r}")
    x = spec.extra
    try:
        words = WordFeatures(len(x["words"]), int(x["vector_dim"]), int(x["mix_layers"]),
                             int(x["encoder_dim"]), bool(x["mix_layer_norm"]), float(x["mix_l2"]),
                             str(x["word_pool"]))
        return FEATURE_TASKS[spec.name](words, int(x["lstm_dim"]), int(x["lstm_layers"]), spec.n_outputs,
                                        spec.dropout)
    except KeyError as e:
        raise ConfigError(f"task spec extra: missing {e.args[0]!r} (a scalar_mix task model)") from None
