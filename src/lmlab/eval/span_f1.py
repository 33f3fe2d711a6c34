"""Chunk (span) precision, recall and F1 with the conlleval definition (CoNLL-2000 shared task).

A tag is `O` or `PREFIX-TYPE` (`B-NP`, `I-PER`, `E-LOC`, `S-MISC`; a bare `B` has the empty type).
Chunks are read with conlleval's boundary rules, applied to each adjacent pair (previous tag,
tag); the same rules read IOB2 (BIO), IOB1 and IOBES (BIOES) tags, so no conversion comes first:

* a chunk ENDS before `tag` when the previous tag is `E` or `S`; when the previous tag is `B` or
  `I` and `tag` is `B`, `S` or `O`; or when the previous tag is not `O` and the types differ.
* a chunk STARTS at `tag` when it is `B` or `S`; when it is `I` or `E` after `O`, `E` or `S`
  (so an `I-` after `O` opens a chunk, as IOB1 needs); or when it is not `O` and its type
  differs from the previous tag's.

The `E`/`S` rules are the IOBES reading that seqeval's default (conlleval-compatible) mode uses;
on IOB tags they never fire, leaving conlleval's own rules. Sentences are scored independently
(a chunk never crosses a sentence break, as if an `O` stood between them). A predicted chunk is
correct only when a gold chunk has the same first token, last token and type. Precision is
correct / predicted chunks, recall correct / gold chunks, F1 their harmonic mean; each is 0 when
its denominator is 0. Values are fractions in [0, 1] (conlleval prints them ×100).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from lmlab.errors import DataError

PREFIXES = {"B", "I", "E", "S"}
SCHEMES = {"auto": PREFIXES, "bio": {"B", "I"}, "iob2": {"B", "I"}, "iob1": {"B", "I"},
           "bioes": PREFIXES, "iobes": PREFIXES}


def split_tag(tag: str) -> tuple[str, str]:
    """`B-NP` -> ("B", "NP"); `O` -> ("O", ""); conlleval splits at the first hyphen."""
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    if prefix not in PREFIXES:
        raise DataError(f"tag {tag!r} is neither O nor B-/I-/E-/S-TYPE")
    return prefix, kind


def chunk_ends(prev: str, prev_type: str, tag: str, kind: str) -> bool:
    """Whether the chunk holding the previous token ends before this token (conlleval endOfChunk)."""
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev != "O" and prev_type != kind


def chunk_starts(prev: str, prev_type: str, tag: str, kind: str) -> bool:
    """Whether a chunk starts at this token (conlleval startOfChunk)."""
    if tag in ("B", "S"):
        return True
    if tag in ("I", "E") and prev in ("O", "E", "S"):
        return True
    return tag != "O" and prev_type != kind


def chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The chunks of one sentence as (type, first index, last index), in order."""
    found = []
    prev, prev_type, start = "O", "", None
    for i, tag in enumerate([*tags, "O"]):  # the trailing O closes a chunk open at the end
        cur, kind = split_tag(tag)
        if start is not None and chunk_ends(prev, prev_type, cur, kind):
            found.append((prev_type, start, i - 1))
            start = None
        if chunk_starts(prev, prev_type, cur, kind):
            start = i
        prev, prev_type = cur, kind
    return found


def _sentences(tags: Sequence) -> list[Sequence[str]]:
    if len(tags) and not isinstance(tags[0], str):
        return list(tags)
    return [tags]


def _prf(correct: int, n_pred: int, n_gold: int) -> dict:
    p = correct / n_pred if n_pred else 0.0
    r = correct / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def span_f1(gold_tags: Sequence, pred_tags: Sequence, scheme: str = "auto") -> dict:
    """conlleval chunk scores of `pred_tags` against `gold_tags`.

    Both are one flat list of tags or a list of sentences (lists of tags) of the same shape.
    `scheme` ("auto", "bio"/"iob2", "iob1", "bioes"/"iobes") only checks which prefixes may occur;
    the boundary rules are the same for all. Returns precision, recall, f1, the counts
    (`n_gold`, `n_pred`, `n_correct`), token `accuracy`, and `per_type`: type -> {precision,
    recall, f1, support} over every type seen in gold or predictions.
    """
    if scheme not in SCHEMES:
        raise DataError(f"unknown tag scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    gold_sents, pred_sents = _sentences(gold_tags), _sentences(pred_tags)
    if len(gold_sents) != len(pred_sents):
        raise DataError(f"span_f1: {len(gold_sents)} gold sentences but {len(pred_sents)} predicted")
    allowed = SCHEMES[scheme]
    gold_n, pred_n, right = Counter(), Counter(), Counter()
    tokens = same = 0
    for k, (gold, pred) in enumerate(zip(gold_sents, pred_sents, strict=True)):
        if len(gold) != len(pred):
            raise DataError(f"span_f1: sentence {k} has {len(gold)} gold tags but {len(pred)} predicted")
        for tag in (*gold, *pred):
            if tag != "O" and split_tag(tag)[0] not in allowed:
                raise DataError(f"tag {tag!r} is not allowed in the {scheme} scheme")
        g, p = set(chunks(gold)), set(chunks(pred))
        gold_n.update(t for t, _, _ in g)
        pred_n.update(t for t, _, _ in p)
        right.update(t for t, _, _ in g & p)
        tokens += len(gold)
        same += sum(a == b for a, b in zip(gold, pred, strict=True))
    out = _prf(sum(right.values()), sum(pred_n.values()), sum(gold_n.values()))
    out.update(n_gold=sum(gold_n.values()), n_pred=sum(pred_n.values()), n_correct=sum(right.values()),
               accuracy=same / tokens if tokens else 0.0)
    out["per_type"] = {t: {**_prf(right[t], pred_n[t], gold_n[t]), "support": gold_n[t]}
                       for t in sorted(set(gold_n) | set(pred_n))}
    return out
