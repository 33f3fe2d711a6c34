"""Features of a bidirectional language model (kind `bilm`; ELMo, Peters et al. 2018 §3.2): for every
token, the token representation and every biLSTM layer, the layers a task's scalar mix combines.

Per sentence, (n_layers + 1, n_tokens, 2·D): layer 0 is [x_k; x_k] (the character-CNN token
representation, duplicated to the width of the biLSTM layers), layer j is [→h_{k,j}; ←h_{k,j}]. The
model reads each sentence as `<S> w_1 ... w_n </S>` (the tokenizer's `char_ids`); the two boundary
positions are removed from the output, as bilm-tf's `lm_embeddings` removes them. A sentence is a
list of tokens, or a string split on whitespace; every token is read from its characters, so words
the softmax never saw get features of their own.

Two modes:
- stateless (the default): every sentence starts from a zero state. Its features then depend on it
  alone: not on the other sentences of the call, their order or how the batch is padded, and the
  same call gives the same numbers every time. Use it for features of independent sentences, the
  usual task setting.
- stateful: batch row r starts from the LSTM states (both directions) that row r left at the previous
  call, as bilm-tf's inference graph does ("the LSTMs are stateful, and carry their state forward
  from batch to batch"). Use it to reproduce the original's numbers (its golden outputs were made
  this way), or to give each row the context of what was read before it (one document per row, fed
  sentence by sentence). The rows live in an `EmbeddingState`: in `lmlab.embed(model, tokenizer,
  sentences, stateful=...)`, sentence i of the call is row i; `stateful=True` uses the model's own
  (`embedding_state(model)`), `stateful=EmbeddingState()` one of yours; `.reset()` starts every row
  over; rows a call does not reach keep their state. `lmlab embed --stateful` reads the file in
  batches of --batch-size lines, line i being row i mod batch size, in file order.
  The forward LM's state carried on is the one after a sentence's `</S>`, the backward LM's the
  one after it read back to `<S>` (bilm-tf's final states).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from lmlab.errors import ConfigError, DataError, LmlabError
from lmlab.nn.state import state_from_tensors, state_rows, state_to_tensors


class EmbeddingState:
    """The LSTM state of every batch row between stateful embedding calls; `reset()` clears it."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}  # lmlab.nn.state names -> (rows, ...)

    @property
    def rows(self) -> int:
        return next(iter(self.tensors.values())).shape[0] if self.tensors else 0

    def reset(self) -> None:
        """Every row starts from a zero state at its next call."""
        self.tensors = {}

    def take(self, model, start: int, stop: int):
        """The model state of rows start..stop-1 (zeros for rows that have none yet)."""
        if self.rows < stop:
            device = next(model.parameters()).device
            grown = state_to_tensors(model.init_state(stop - self.rows, device=device))
            old = self.tensors
            self.tensors = {k: torch.cat([old[k], t]) if old else t for k, t in grown.items()}
        return state_rows(state_from_tensors(self.tensors), slice(start, stop))

    def put(self, start: int, state) -> None:
        """Rows start.. leave `state` (a model state of those rows)."""
        for name, t in state_to_tensors(state).items():
            self.tensors[name] = self.tensors[name].clone()
            self.tensors[name][start:start + t.shape[0]] = t


_DEFAULT_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def embedding_state(model) -> EmbeddingState:
    """The state `lmlab.embed(model, ..., stateful=True)` carries for `model` (made on first use)."""
    if model not in _DEFAULT_STATES:
        _DEFAULT_STATES[model] = EmbeddingState()
    return _DEFAULT_STATES[model]


Where = Callable[[int], str]  # sentence index -> how messages name it


def _sentence(i: int) -> str:
    return f"sentence {i}"


def sentence_words(sentences, where: Where = _sentence) -> list[list[str]]:
    """Each sentence as a list of tokens; DataError (one line) for an empty one or one that is not text."""
    out = []
    for i, s in enumerate(sentences):
        if isinstance(s, (bytes, bytearray)):
            try:
                s = bytes(s).decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where(i)}: not UTF-8 text (byte {e.start})") from None
        words = s.split() if isinstance(s, str) else list(s)
        if not all(isinstance(w, str) and w and not any(c.isspace() for c in w) for w in words):
            raise DataError(f"{where(i)}: expected a string or a list of tokens without spaces, "
                            f"got {s!r:.60}")
        if not words:
            raise DataError(f"{where(i)} is empty")
        out.append(words)
    return out


def char_batch(tokenizer, sentences: list[list[str]], first: int = 0,
               where: Where = _sentence) -> torch.Tensor:
    """(B, T_max + 2, C) character ids of `sentences` framed by <S> ... </S>, right-padded with zero rows.
    `first` is the index of sentences[0] for `where`, which names a sentence in messages."""
    char_ids = getattr(tokenizer, "char_ids", None)
    if not callable(char_ids):
        raise ConfigError(f"a bidirectional LM reads characters; the {getattr(tokenizer, 'kind', '?')} "
                          f"tokenizer gives none (expected a word_chars tokenizer)")
    rows = []
    for i, words in enumerate(sentences):
        try:
            rows.append(torch.from_numpy(char_ids(words)))
        except LmlabError as e:
            raise DataError(f"{where(first + i)}: {e}") from None
    batch = torch.zeros(len(rows), max(len(r) for r in rows), rows[0].shape[1], dtype=torch.long)
    for r, ids in enumerate(rows):
        batch[r, :len(ids)] = ids
    return batch


@torch.no_grad()
def bilm_features(net, tokenizer, sentences: list[list[str]], carry: EmbeddingState | None = None,
                  batch_size: int = 64, where: Where = _sentence) -> list[torch.Tensor]:
    """Per sentence (n_layers + 1, n_tokens, 2·D), float32 on the CPU; sentence i is row i of `carry`
    (stateful) or starts from zeros (carry None). Sentences go through in chunks of batch_size rows."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    net.eval()
    device = next(net.parameters()).device
    out = []
    for b in range(0, len(sentences), batch_size):
        chunk = sentences[b:b + batch_size]
        chars = char_batch(tokenizer, chunk, b, where).to(device)
        state = carry.take(net, b, b + len(chunk)) if carry is not None else None
        result = net(chars, state=state, output_hidden_states=True, with_logits=False)
        if carry is not None:
            carry.put(b, result.state)
        layers = torch.stack(result.hidden_states, 1)  # (B, n_layers + 1, T + 2, 2D)
        for r, words in enumerate(chunk):
            out.append(layers[r, :, 1:len(words) + 1].float().cpu().contiguous())  # without <S>, </S>
    return out


def embed_sentences(net, tokenizer, sentences, stateful=False) -> list[torch.Tensor]:
    """`lmlab.embed` for a biLM: stateful False, True (the model's own EmbeddingState) or an
    EmbeddingState."""
    if stateful is True:
        carry = embedding_state(net)
    elif isinstance(stateful, EmbeddingState):
        carry = stateful
    elif stateful is False:
        carry = None
    else:
        raise ConfigError(f"stateful must be True, False or an EmbeddingState, got {stateful!r}")
    return bilm_features(net, tokenizer, sentence_words(sentences), carry)


def bilm_embed_texts(net, tokenizer, texts: list[str], chosen: list[int], pool: str, batch_size: int,
                     max_len: int | None, lines: list[int], source: str,
                     stateful: bool) -> dict[str, torch.Tensor]:
    """What `lmlab embed` writes for a biLM: "text.{i}.layer.{j}" (n_words, 2D) (pool none or word: the
    same, every token is a word), or "layer.{j}" (N, 2D) means (pool mean). --max-len keeps the first
    max_len words of a line; --stateful carries each row's state from batch to batch."""
    if max_len is not None and max_len < 1:
        raise ConfigError(f"--max-len must be >= 1, got {max_len}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    words = sentence_words(texts, lambda i: f"{source}:{lines[i]}")
    words = [w[:max_len] if max_len else w for w in words]
    carry = EmbeddingState() if stateful else None
    feats: list[torch.Tensor] = []
    for b in range(0, len(words), batch_size):  # one batch = rows 0..batch_size-1 of the carried state
        feats += bilm_features(net, tokenizer, words[b:b + batch_size], carry, batch_size,
                               lambda i, b=b: f"{source}:{lines[b + i]}")
    if pool == "mean":
        return {f"layer.{j}": torch.stack([f[j].mean(0) for f in feats]) for j in chosen}
    return {f"text.{i}.layer.{j}": f[j].contiguous() for i, f in enumerate(feats) for j in chosen}
