"""Features of a translation encoder (kind `seq2seq`; CoVe, McCann et al. 2017 §4): per word,
[GloVe(w); CoVe(w)], the fixed input vector beside the MT-LSTM's state.

Per sentence, (n_layers, n_words, d_input + 2·d_model): entry j is [GloVe(w); h_{j+1}(w)], the input
vectors beside encoder layer j + 1 ([→h; ←h]); the last entry is the paper's [GloVe(x); CoVe(x)], and
`[..., d_input:]` is a CoVe layer on its own. A sentence is a list of words or a string split on
whitespace; every sentence is read on its own (no state goes from one to the next).

Word vectors: those the model was trained with when they are built in (`config.word_vectors`, e.g.
builtin:glove-6b-50d), any word looked up; `word_vectors=` (a GloVe text file, e.g. the release's
glove.840B.300d.txt) overrides them; without either, the model's own table (the source words of its
training data; others read zeros, as words without a vector do).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from lmlab.errors import ConfigError
from lmlab.eval.embed_bilm import Where, sentence_words


def _sentence(i: int) -> str:
    return f"sentence {i}"


def word_inputs(net, tokenizer, sentences: list[list[str]], word_vectors: str | None) -> list[torch.Tensor]:
    """Per sentence, (n_words, d_input) input vectors (module docstring for where they come from)."""
    trained = net.config.word_vectors or ""
    source = word_vectors or (trained if trained.startswith("builtin:") else None)
    if source is None:
        if tokenizer is None or not callable(getattr(tokenizer, "encode_source_words", None)):
            raise ConfigError(f"this model holds no source vocabulary; give the word vectors it reads "
                              f"(word_vectors= / --word-vectors, e.g. {net.config.word_vectors or 'GloVe'})")
        table = net.source_vectors.float().cpu()
        return [table[torch.tensor(tokenizer.encode_source_words(s), dtype=torch.long)] for s in sentences]
    from lmlab.data.word_vectors import lookup

    found = lookup(source, (w for s in sentences for w in s))
    if found.dim != net.config.d_input:
        raise ConfigError(f"{source} holds {found.dim}-d vectors; this model reads {net.config.d_input}-d")
    if found.missing:
        print(f"lmlab: {len(found.missing)} word types have no vector in {source} and read zeros "
              f"(e.g. {', '.join(found.missing[:5])})", file=sys.stderr)
    index = {w: i for i, w in enumerate(found.words)}
    vectors = torch.from_numpy(np.ascontiguousarray(found.vectors))
    return [vectors[torch.tensor([index[w] for w in s], dtype=torch.long)] for s in sentences]


@torch.no_grad()
def seq2seq_features(net, tokenizer, sentences: list[list[str]], batch_size: int = 64,
                     word_vectors: str | None = None) -> list[torch.Tensor]:
    """Per sentence (n_layers, n_words, d_input + 2·d_model), float32 on the CPU."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    net.eval()
    device = next(net.parameters()).device
    inputs = word_inputs(net, tokenizer, sentences, word_vectors)
    out = []
    for b in range(0, len(sentences), batch_size):
        chunk = inputs[b:b + batch_size]
        width = max(len(x) for x in chunk)
        x = torch.zeros(len(chunk), width, net.config.d_input)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, v in enumerate(chunk):
            x[r, :len(v)], mask[r, :len(v)] = v, 1
        result = net(x.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        for r, v in enumerate(chunk):
            n = len(v)
            layers = [torch.cat([v, h[r, :n].float().cpu()], -1) for h in result.hidden_states]
            out.append(torch.stack(layers))  # (n_layers, n, d_input + 2H)
    return out


def embed_sentences_seq2seq(net, tokenizer, sentences, word_vectors: str | None = None) -> list[torch.Tensor]:
    """`lmlab.embed` for a translation encoder."""
    return seq2seq_features(net, tokenizer, sentence_words(sentences), word_vectors=word_vectors)


def seq2seq_embed_texts(net, tokenizer, texts: list[str], chosen: list[int], pool: str, batch_size: int,
                        max_len: int | None, lines: list[int], source: str,
                        word_vectors: str | None = None) -> dict[str, torch.Tensor]:
    """What `lmlab embed` writes for a translation encoder: "text.{i}.layer.{j}" (n_words, d_input + 2H)
    (pool none or word: the same, one position per word), or "layer.{j}" (N, ...) means (pool mean).
    Layer j is encoder layer j + 1 beside the input vectors (module docstring)."""
    if max_len is not None and max_len < 1:
        raise ConfigError(f"--max-len must be >= 1, got {max_len}")
    where: Where = lambda i: f"{source}:{lines[i]}"  # noqa: E731
    words = [w[:max_len] if max_len else w for w in sentence_words(texts, where)]
    feats = seq2seq_features(net, tokenizer, words, batch_size, word_vectors)
    if pool == "mean":
        return {f"layer.{j}": torch.stack([f[j].mean(0) for f in feats]) for j in chosen}
    return {f"text.{i}.layer.{j}": f[j].contiguous() for i, f in enumerate(feats) for j in chosen}
