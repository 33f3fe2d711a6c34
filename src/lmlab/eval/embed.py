"""`lmlab embed`: per-token features of chosen layers, as ELMo/BERT/GPT features for a task model.

Bidirectional LMs (kind `bilm`, ELMo) read characters and may carry their state from batch to batch
(`--stateful`): their features come from `lmlab.eval.embed_bilm`, in the same file layout.

Layers are the model's `output_hidden_states`: index 0 is the embedding output, index L the last
layer (BERT: the output of block L; GPT/GPT-2: block inputs, then the final (LayerNorm'd) state);
negative indices count from the end (-1 = last), as BERT §5.3's feature-based runs pick them.

Inputs, one text per line of a UTF-8 file (blank lines are skipped; `line_numbers` in the
metadata maps outputs back to lines): BERT reads `[CLS] text [SEP]`; GPT/GPT-2 read the text's
tokens alone (causal: a token's state sees only the tokens before it). Pooling:
- "none": every position's state, (T_i, D), [CLS]/[SEP] included for BERT, with the ids beside it;
- "word": the mean of the sub-token states of each whitespace-separated word, (W_i, D), from the
  tokenizer's character offsets (WordPiece offsets; byte-level BPE byte lengths). Special tokens
  belong to no word; a word with no token left (cut by --max-len, or dropped by the tokenizer's
  clean-up) is omitted, and `words.{i}` lists the word indices kept;
- "mean": the mean over the text's real (non-pad) positions, [CLS]/[SEP] included as
  sentence-transformers does, stacked to (N, D) per layer.

Output: safetensors, "text.{i}.layer.{j}" (and "text.{i}.input_ids" / "text.{i}.words"), or
"layer.{j}" when pooled "mean"; metadata "layers", "pool", "model_dir", "family",
"line_numbers" as JSON strings. A text longer than the model's positions is an error naming the
line, unless --max-len truncates it (BERT keeps its final [SEP]).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmlab.errors import ConfigError, DataError, OutputError
from lmlab.eval.embed_bilm import EmbeddingState, bilm_embed_texts, embed_sentences, embedding_state
from lmlab.models.heads import TaskModel
from lmlab.models.registry import FAMILIES, spec_of
from lmlab.options import option
from lmlab.paths import output_file

POOLS = ("none", "word", "mean")
__all__ = ["embed", "embed_command", "embed_texts", "EmbeddingState", "embedding_state"]


@dataclass(frozen=True)
class EmbedOptions:
    """`lmlab embed`: the hidden states of chosen layers for each line of a text file, to safetensors:
    text.{i}.layer.{j} (T_i x D, or W_i x D with --pool word), or layer.{j} (N x D) with --pool mean."""

    model_dir: str = option(help="an lmlab model dir", positional=True)
    input: str = option(help="UTF-8 text file, one text per line (blank lines skipped)")
    out: str = option(help="safetensors file to write")
    layers: str = option("-1", "'all' or comma-separated indices; 0 = embeddings, -1 = last")
    pool: str = option("none", "none: every token; word: mean of each word's sub-tokens; mean: one vector "
                               "per text", choices=POOLS)
    batch_size: int = option(16, "texts per forward")
    max_len: int | None = option(None, "truncate texts to this many tokens (default: stop with an error at "
                                       "a text longer than the model's context)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    stateful: bool = option(False, "biLMs (elmo): each batch row carries its LSTM state into the same row "
                                   "of the next batch (line i is row i mod --batch-size), as bilm-tf did")


def embeddable(family) -> bool:
    """Families whose layers `embed` reads: encoders and decoders without carried memory, and biLMs."""
    return (family.kind in ("masked_lm", "causal_lm") and family.state in ("none", "kv_cache")
            or family.kind == "bilm")


def _network(model):
    """The pretrained network of `model` (a fine-tuned dir: its backbone), checked to be embeddable."""
    net = model.backbone if isinstance(model, TaskModel) else model
    spec = spec_of(net)
    if not embeddable(spec):
        names = ", ".join(name for name, f in FAMILIES.items() if embeddable(f))
        raise ConfigError(f"embed supports {names} models, not {spec.name!r}")
    return net, spec


def parse_layers(spec: str | list[int] | None, num_states: int) -> list[int]:
    """"all", "-1,-2" or a list of ints -> non-negative indices into the hidden states."""
    if spec is None or spec == "all":
        return list(range(num_states))
    if isinstance(spec, str):
        try:
            spec = [int(p) for p in spec.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"--layers must be 'all' or comma-separated integers, got {spec!r}") from None
    if not spec:
        raise ConfigError("--layers names no layer")
    out = []
    for j in spec:
        if not -num_states <= j < num_states:
            raise ConfigError(f"layer {j} does not exist: the model has {num_states} states "
                              f"(0 = embeddings .. {num_states - 1} = last, or -1 .. -{num_states})")
        if j % num_states not in out:
            out.append(j % num_states)
    return out


def read_lines(path: str | Path) -> tuple[list[str], list[int]]:
    """(texts, 1-based line numbers) of the non-blank lines of `path`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    pairs = [(line, n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not pairs:
        raise DataError(f"{path}: no text (expected one text per line)")
    return [p[0] for p in pairs], [p[1] for p in pairs]


def token_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of `text` and each token's (start, end) character span."""
    if hasattr(tokenizer, "encode_with_offsets"):
        return tokenizer.encode_with_offsets(text)
    ids = tokenizer.encode(text)
    if not hasattr(tokenizer, "decode_bytes"):
        raise ConfigError(f"--pool word needs token offsets; the {getattr(tokenizer, 'kind', '?')} tokenizer "
                          "has none (wordpiece and byte_bpe do)")
    # Byte-level BPE is lossless: the tokens' bytes concatenate to the text's UTF-8 bytes.
    lengths = [len(tokenizer.decode_bytes([i])) for i in ids]
    char_of_byte = np.repeat(np.arange(len(text) + 1), [len(c.encode()) for c in text] + [1])
    if sum(lengths) != len(char_of_byte) - 1:
        raise ConfigError("--pool word: the tokenizer's bytes do not spell the text; no word offsets")
    ends = np.cumsum(lengths)
    return ids, [(int(char_of_byte[e - n]), int(char_of_byte[e])) for e, n in zip(ends, lengths, strict=True)]


def word_index(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """For each token, the index of the whitespace word holding its first non-space character
    (-1 when none: special tokens, whitespace-only tokens)."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    starts = np.array([s for s, _ in spans] + [len(text) + 1])
    out = []
    for start, end in offsets:
        piece = text[start:end]
        first = start + (len(piece) - len(piece.lstrip())) if end > start else -1
        w = int(np.searchsorted(starts, first, side="right")) - 1 if first >= 0 and piece.strip() else -1
        out.append(w if 0 <= w < len(spans) and first < spans[w][1] else -1)
    return out


def _encode(wrap: bool, tokenizer, texts: list[str], lines: list[int], limit: int, truncate: bool,
            source: str, with_words: bool) -> list[tuple[list[int], list[int]]]:
    """Per text: (model input ids, word index per position (-1 for none))."""
    rows = []
    for text, line in zip(texts, lines, strict=True):
        if with_words:
            ids, offsets = token_offsets(tokenizer, text)
            words = word_index(text, offsets)
        else:
            ids = tokenizer.encode(text)
            words = [-1] * len(ids)
        extra = 2 if wrap else 0
        if len(ids) + extra > limit:
            if not truncate:
                raise DataError(f"{source}:{line}: {len(ids) + extra} tokens, more than the model's "
                                f"{limit} positions; pass --max-len to truncate")
            ids, words = ids[: limit - extra], words[: limit - extra]
        if not ids and extra == 0:
            raise DataError(f"{source}:{line}: the text gives no tokens")
        if wrap:
            ids, words = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id], [-1, *words, -1]
        rows.append((ids, words))
    return rows


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], layers: str | list[int] | None = "all",
                pool: str = "none", batch_size: int = 16, max_len: int | None = None,
                lines: list[int] | None = None, source: str = "input",
                stateful: bool = False) -> dict[str, torch.Tensor]:
    """The tensors `lmlab embed` writes (see the module docstring), float32 on the CPU."""
    model, spec = _network(model)
    wrap = spec.kind == "masked_lm"  # BERT reads [CLS] text [SEP]
    if pool not in POOLS:
        raise ConfigError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if spec.kind == "bilm":
        chosen = parse_layers(layers, model.config.n_layers + 1)
        return bilm_embed_texts(model, tokenizer, texts, chosen, pool, batch_size, max_len,
                                lines or list(range(1, len(texts) + 1)), source, stateful)
    if stateful:
        raise ConfigError(f"--stateful carries a recurrent state from batch to batch; {spec.name} has none")
    positions = model.config.max_seq_len
    if max_len is not None and not 1 <= max_len <= positions:
        raise ConfigError(f"--max-len must be in [1, {positions}] (the model's positions), got {max_len}")
    chosen = parse_layers(layers, model.config.n_layers + 1)
    lines = lines or list(range(1, len(texts) + 1))
    rows = _encode(wrap, tokenizer, texts, lines, max_len or positions, max_len is not None, source,
                   pool == "word")
    device = next(model.parameters()).device
    model.eval()
    out: dict[str, torch.Tensor] = {}
    pooled: dict[int, list[torch.Tensor]] = {j: [] for j in chosen}
    for b in range(0, len(rows), batch_size):
        chunk = rows[b : b + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, (row, _) in enumerate(chunk):
            ids[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), 1
        if wrap:
            ids[mask == 0] = tokenizer.pad_token_id
        out_b = model(ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        states = out_b.hidden_states  # n_layers + 1 of (b, width, D)
        for r, (row, words) in enumerate(chunk):
            i, n = b + r, len(row)
            if pool == "none":
                out[f"text.{i}.input_ids"] = torch.tensor(row, dtype=torch.long)
            if pool == "word":
                kept, member = _word_members(words)
                out[f"text.{i}.words"] = torch.tensor(kept, dtype=torch.long)
            for j in chosen:
                h = states[j][r, :n].float().cpu()  # (T_i, D): real positions only
                if pool == "mean":
                    pooled[j].append(h.mean(0))
                elif pool == "word":
                    out[f"text.{i}.layer.{j}"] = (member @ h) / member.sum(1, keepdim=True)  # (W_i, D)
                else:
                    out[f"text.{i}.layer.{j}"] = h.contiguous()
    if pool == "mean":
        out.update({f"layer.{j}": torch.stack(v) for j, v in pooled.items()})
    return out


def _word_members(words: list[int]) -> tuple[list[int], torch.Tensor]:
    """(word indices with at least one token, (W, T) 0/1 matrix of their tokens)."""
    kept = sorted({w for w in words if w >= 0})
    member = torch.zeros(len(kept), len(words))
    where = {w: k for k, w in enumerate(kept)}
    for t, w in enumerate(words):
        if w >= 0:
            member[where[w], t] = 1.0
    return kept, member


def embed_command(model_dir: str, input: str, out: str, layers: str = "-1", pool: str = "none",
                  batch_size: int = 16, max_len: int | None = None, device: str = "auto",
                  stateful: bool = False) -> dict:
    """Read `input`, embed every line with the model in `model_dir`, write `out` (safetensors).
    `stateful` (biLMs): each batch row carries its state into the next batch (lmlab.eval.embed_bilm)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from lmlab.checkpoints.atomic import io_reason
    from lmlab.checkpoints.io import load

    out = output_file(out, "--out")
    texts, lines = read_lines(input)
    model, tokenizer = load(model_dir, device=device)
    if tokenizer is None:
        raise DataError(f"{model_dir}: the model dir holds no tokenizer")
    net, _ = _network(model)
    tensors = embed_texts(model, tokenizer, texts, layers, pool, batch_size, max_len, lines, str(input),
                          stateful)
    chosen = parse_layers(layers, net.config.n_layers + 1)
    meta = {"layers": chosen, "pool": pool, "model_dir": str(model_dir), "family": net.family,
            "line_numbers": lines, "texts": len(texts), "stateful": stateful, "batch_size": batch_size}
    try:  # safetensors writes a temp file beside `out` and renames it: `out` was checked to be a file
        save_file(tensors, str(out), metadata={k: json.dumps(v) for k, v in meta.items()})
    except (OSError, SafetensorError) as e:
        raise OutputError(f"--out {out}: cannot write ({io_reason(e)})") from None
    return meta


def embed(model, tokenizer, sentences, stateful: bool | EmbeddingState = False) -> list[torch.Tensor]:
    """Per sentence, the features of every layer at every token: (n_layers + 1, n_tokens, dim).

    `sentences` is a list of token lists (words) or of strings (split on whitespace). Layer 0 is
    the embedding output. A word that the model's tokenizer cuts into pieces gets the mean of its
    pieces' states (`--pool word`); BERT's [CLS] and [SEP] are left out.

    A biLM (ELMo) reads every token's characters; layer 0 is the token representation duplicated to
    the biLSTM width, the sentence boundaries are left out. `stateful` (biLMs only): sentence i of
    the call continues the state row i left at the previous call; True keeps the rows in
    `embedding_state(model)`, or pass an `EmbeddingState`; `.reset()` clears it (see
    lmlab.eval.embed_bilm for when to use which mode).
    """
    net, spec = _network(model)
    if spec.kind == "bilm":
        return embed_sentences(net, tokenizer, sentences, stateful)
    if stateful:
        raise ConfigError(f"stateful embedding carries a recurrent state from call to call; {spec.name} "
                          f"has no such state")
    texts = [s if isinstance(s, str) else " ".join(s) for s in sentences]
    for i, text in enumerate(texts):
        if not text.split():
            raise DataError(f"sentence {i} is empty")
    tensors = embed_texts(model, tokenizer, texts, "all", "word", source="sentences")
    out = []
    for i, text in enumerate(texts):
        kept = tensors[f"text.{i}.words"].tolist()
        if len(kept) != len(text.split()):
            lost = sorted(set(range(len(text.split()))) - set(kept))
            raise DataError(f"sentence {i}: word {lost[0]} ({text.split()[lost[0]]!r}) gives no token")
        out.append(torch.stack([tensors[f"text.{i}.layer.{j}"] for j in range(net.config.n_layers + 1)]))
    return out
