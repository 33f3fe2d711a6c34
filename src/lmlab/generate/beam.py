"""Greedy and beam-search decoding for sequence-to-sequence models (kind `seq2seq`, e.g. CoVe's MT-LSTM),
through the decoding-state protocol:

    state = model(source, attention_mask=mask).state       # the encoded source, decoder at <bos>
    out = model(decoder_input_ids=y, state=state)           # out.logits (B, 1, V), out.state

Greedy: every sentence takes its most likely word at each step until `<eos>` (or `max_len` words).

Beam search (Sutskever et al. 2014; Wu et al. 2016 §7 for the length normalisation): each sentence keeps
`beam_size` live hypotheses. A step scores every continuation of every live hypothesis by its summed
log-probability and takes the best 2·beam_size; a continuation ending in `<eos>` is finished (its
score normalised by lp(y) = ((5 + |y|) / 6)^α, |y| counting `<eos>`; α = `length_penalty`, 0 = the raw
log-probability, which favours short translations), the best `beam_size` others stay live. A
sentence is done when `beam_size` hypotheses have finished (fairseq's and OpenNMT's rule); at
`max_len` its live hypotheses finish as they are. The answer is the finished hypothesis of the best
normalised score.
With beam_size 1 this is greedy decoding: the one live hypothesis takes the best word, and `<eos>`
finishes it.

Unknown-word replacement (Luong et al. 2015, "Addressing the rare word problem"; OpenNMT's
-replace_unk, the MT-LSTM's training code): with `replace_unk`, `translate` writes each `<unk>` of a
translation as the source word the attention weighted most when `<unk>` was chosen. Names, numbers
and API identifiers, which the help text keeps untranslated and a word vocabulary lacks, are then
copied. `greedy` and `beam_search` give those positions with `positions=True` (models whose output
has no `attention` give -1).
"""

from __future__ import annotations

import torch

from lmlab.errors import GenerationError
from lmlab.models.registry import FAMILIES, spec_of
from lmlab.nn.state import map_state


def check_seq2seq(model) -> None:
    if spec_of(model).kind != "seq2seq":
        names = ", ".join(n for n, f in FAMILIES.items() if f.kind == "seq2seq")
        raise GenerationError(f"{spec_of(model).name} is not a sequence-to-sequence model ({names})")


def _start(model, source, attention_mask):
    out = model(source, attention_mask=attention_mask)
    return out.state, out.hidden.shape[1]


def _step(model, words: torch.Tensor, state):
    """(log-probabilities (N, V) of the next word after `words` (N,), the new state, the source
    position attended most (N,) or -1 without attention)."""
    with torch.inference_mode():
        out = model(decoder_input_ids=words[:, None], state=state)
    where = out.attention[:, -1].argmax(-1) if out.attention is not None else torch.full_like(words, -1)
    return out.logits[:, -1].float().log_softmax(-1), out.state, where.tolist()


def _limit(max_len: int | None, source_len: int) -> int:
    limit = 2 * source_len + 10 if max_len is None else max_len
    if limit < 1:
        raise GenerationError(f"max_len must be at least 1, got {limit}")
    return limit


@torch.no_grad()
def greedy(model, source: torch.Tensor, attention_mask=None, bos: int = 2, eos: int = 3,
           max_len: int | None = None, positions: bool = False):
    """Per source row, the greedy translation's ids (without <bos> and <eos>); `max_len` words at most
    (default 2 · source length + 10). With `positions`: (ids, the source position attended most at
    each word)."""
    check_seq2seq(model)
    state, S = _start(model, source, attention_mask)
    limit = _limit(max_len, S)
    B = source.shape[0]
    words = torch.full((B,), bos, dtype=torch.long, device=source.device)
    done = torch.zeros(B, dtype=torch.bool, device=source.device)
    out: list[list[int]] = [[] for _ in range(B)]
    at: list[list[int]] = [[] for _ in range(B)]
    for _ in range(limit):
        logp, state, where = _step(model, words, state)
        words = logp.argmax(-1)
        for r in (~done).nonzero().flatten().tolist():
            if int(words[r]) != eos:
                out[r].append(int(words[r]))
                at[r].append(where[r])
        done |= words == eos
        if bool(done.all()):
            break
    return (out, at) if positions else out


def length_norm(length: int, alpha: float) -> float:
    """lp(y) = ((5 + |y|) / 6)^α (Wu et al. 2016, eq. 14)."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(model, source: torch.Tensor, attention_mask=None, beam_size: int = 5, bos: int = 2,
                eos: int = 3, max_len: int | None = None, length_penalty: float = 1.0,
                positions: bool = False):
    """Per source row, the best hypothesis's ids (without <bos> and <eos>); see the module docstring.
    With `positions`: (ids, the source position attended most at each word)."""
    check_seq2seq(model)
    if not isinstance(beam_size, int) or beam_size < 1:
        raise GenerationError(f"beam size must be a positive integer, got {beam_size!r}")
    if not length_penalty >= 0:
        raise GenerationError(f"length_penalty must be >= 0, got {length_penalty}")
    state, S = _start(model, source, attention_mask)
    limit = _limit(max_len, S)
    B, k, device = source.shape[0], beam_size, source.device
    # Every row starts with one live hypothesis (its copies are masked to -inf until the first step).
    state = map_state(lambda t: t.repeat_interleave(k, 0), state)
    scores = torch.full((B, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    words = torch.full((B * k,), bos, dtype=torch.long, device=device)
    history = [[[] for _ in range(k)] for _ in range(B)]
    at = [[[] for _ in range(k)] for _ in range(B)]  # the attended source position of each word
    finished: list[list[tuple[float, list[int], list[int]]]] = [[] for _ in range(B)]
    active = [True] * B
    for step in range(limit):
        logp, state, where = _step(model, words, state)
        V = logp.shape[-1]
        total = (scores[:, :, None] + logp.view(B, k, V)).view(B, k * V)  # (B, k·V)
        best, index = total.topk(min(2 * k, k * V), dim=-1)
        rows, new_words, new_scores, new_history, new_at = [], [], [], [], []
        for b in range(B):
            keep = []
            if active[b]:
                for s, i in zip(best[b].tolist(), index[b].tolist(), strict=True):
                    if s == float("-inf"):
                        break
                    beam, word = divmod(i, V)
                    if word == eos:
                        path = history[b][beam]
                        score = s / length_norm(len(path) + 1, length_penalty)
                        finished[b].append((score, path, at[b][beam]))
                    else:
                        keep.append((s, beam, word))
                    if len(keep) == k:
                        break
                active[b] = bool(keep) and len(finished[b]) < k
                if active[b] and step == limit - 1:  # out of words: the live ones finish as they are
                    finished[b] += [(sc / length_norm(len(history[b][beam]) + 1, length_penalty),
                                     history[b][beam] + [word], at[b][beam] + [where[b * k + beam]])
                                    for sc, beam, word in keep]
                    active[b] = False
            if not active[b] or not keep:
                keep = [(float("-inf"), 0, eos)] * k
            keep += [(float("-inf"), keep[0][1], keep[0][2])] * (k - len(keep))
            for s, beam, word in keep:
                rows.append(b * k + beam)
                new_words.append(word)
                new_scores.append(s)
                live = s > float("-inf")
                new_history.append(history[b][beam] + [word] if live else [])
                new_at.append(at[b][beam] + [where[b * k + beam]] if live else [])
        if not any(active):
            break
        select = torch.tensor(rows, device=device)
        state = map_state(lambda t, index=select: t.index_select(0, index), state)
        words = torch.tensor(new_words, device=device)
        scores = torch.tensor(new_scores, device=device).view(B, k)
        history = [new_history[b * k:(b + 1) * k] for b in range(B)]
        at = [new_at[b * k:(b + 1) * k] for b in range(B)]
    best = [max(f, key=lambda x: x[0]) if f else (0.0, [], []) for f in finished]
    return ([b[1] for b in best], [b[2] for b in best]) if positions else [b[1] for b in best]


def translate(model, tokenizer, sentences: list[str], beam_size: int = 1, max_len: int | None = None,
              length_penalty: float = 1.0, batch_size: int = 32, device=None,
              replace_unk: bool = False) -> list[str]:
    """The translations of `sentences` (source text) as target text: greedy with beam_size 1, else beam
    search. `replace_unk`: each `<unk>` becomes the source word attended most (module docstring)."""
    both = translations(model, tokenizer, sentences, beam_size, max_len, length_penalty, batch_size, device)
    return [b[1] if replace_unk else b[0] for b in both]


def translations(model, tokenizer, sentences: list[str], beam_size: int = 1, max_len: int | None = None,
                 length_penalty: float = 1.0, batch_size: int = 32, device=None) -> list[tuple[str, str]]:
    """Per sentence (the translation as decoded, the same with `<unk>` replaced), from one decoding.
    The tokenizer gives source ids (`encode_source`), the source words they are of (`source_words`,
    one id each) and target text (`decode`)."""
    check_seq2seq(model)
    device = device or next(model.parameters()).device
    ids = [tokenizer.encode_source(s) for s in sentences]
    for i, row in enumerate(ids):
        if not row:
            raise GenerationError(f"sentence {i} has no words to translate")
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            width = max(len(r) for r in chunk)
            source = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, row in enumerate(chunk):
                source[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
            source, mask = source.to(device), mask.to(device)
            bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
            if beam_size == 1:
                found, at = greedy(model, source, mask, bos, eos, max_len, positions=True)
            else:
                found, at = beam_search(model, source, mask, beam_size, bos, eos, max_len, length_penalty,
                                        positions=True)
            for r, (f, a) in enumerate(zip(found, at, strict=True)):
                out.append((tokenizer.decode(f), _with_source_words(tokenizer, f, a, sentences[start + r])))
    finally:
        model.train(was_training)
    return out


def _with_source_words(tokenizer, ids: list[int], at: list[int], source: str) -> str:
    """The decoded words, each `<unk>` written as the source word at its attended position."""
    words = tokenizer.source_words(source)
    unk = tokenizer.unk_token_id
    out = [words[p] if i == unk and 0 <= p < len(words) else tokenizer.decode([i])
           for i, p in zip(ids, at, strict=True)]
    return " ".join(w for w in out if w)
