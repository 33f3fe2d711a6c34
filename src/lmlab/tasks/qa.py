"""Extractive question answering on SQuAD v1.1 / v2.0 (BERT, Devlin et al. 2018, §4.2 and §4.3).

Data: SQuAD JSON (`data` -> `paragraphs` -> `context`, `qas` -> `id`, `question`, `answers`
[{`text`, `answer_start`}], v2.0 `is_impossible`). Every answer must sit at its offset:
`context[answer_start:answer_start + len(text)] == text`, else DataError names the question.
A v1.1 question needs an answer; in v2.0 a question has answers exactly when its is_impossible
(a JSON boolean) is false; ids are unique. Errors name the file, the question's line and its id.
Training uses each question's first answer, as BERT's run_squad.py does.

Features (BERT's run_squad.py windowing over WordPiece character offsets): the question is cut
to `max_query_len` tokens; the context is tokenized once with offsets and read in windows of at
most `max_len - len(question) - 3` tokens that start `doc_stride` tokens apart, each window an
input `[CLS] question [SEP] context window [SEP]` (segments 0 then 1). A window's target is the
answer's first and last token when the whole answer lies inside it, else position 0 ([CLS]),
which also stands for "no answer" in v2.0.

A context token seen by several windows is scored only in the window where it has the most
context: the largest min(tokens to its left, tokens to its right) + 0.01·window length, the
first window on a tie (run_squad.py's "max context" rule).

Head: a linear layer to 2 values per position (start and end logits, §4.2). Loss: the mean of
the start and end cross-entropies. Prediction: over a question's windows, the `n_best` highest
start and end logits give candidate spans (start at a max-context context token, end at a
context token, end >= start, at most `max_answer_len` tokens), scored start + end logit; the
answer is the context's characters from the start token's first to the end token's last. v2.0
(§4.3): the null score is the lowest start+end logit at [CLS] over the windows; the answer is ""
when null score - best span score > `null_threshold`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from lmlab.data.corpora import is_builtin, json_problem
from lmlab.errors import ConfigError, DataError
from lmlab.eval.squad import squad_scores
from lmlab.models.heads import TaskOutput, TaskSpec
from lmlab.tasks.base import pad_2d, run_model

N_BEST, MAX_ANSWER_LEN = 20, 30
# spec.extra of a qa model (CLI: --doc-stride, --max-query-len, --null-threshold, --version-2)
DEFAULTS = {"doc_stride": 128, "max_query_len": 64, "null_threshold": 0.0, "version_2": None,
            "n_best": N_BEST, "max_answer_len": MAX_ANSWER_LEN}


@dataclass(eq=False)
class QAExample:
    qid: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, character offset in context)
    impossible: bool = False
    version: str = "v1.1"  # of the file it came from


# ---------------------------------------------------------------- reading


def _field(obj, key, kind, where):
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise DataError(f"{where}: expected a {kind.__name__} field {key!r}")
    return value


def _id_lines(text: str) -> dict[str, list[int]]:
    """question id -> the line of each `"id": ...` in a SQuAD file's text, in order."""
    lines: dict[str, list[int]] = {}
    pos, line = 0, 1
    for m in re.finditer(r'"id"\s*:\s*("(?:[^"\\]|\\.)*")', text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        try:
            lines.setdefault(json.loads(m.group(1)), []).append(line)
        except ValueError:
            continue
    return lines


def _answers(qa: dict, context: str, where) -> list[tuple[str, int]]:
    """A question's (text, answer_start) answers, each checked to sit at its offset; `where()`
    names the question in an error."""
    raw = qa.get("answers", [])
    if not isinstance(raw, list):
        raise DataError(f"{where()}: 'answers' must be a list of {{'text', 'answer_start'}} objects")
    answers = []
    for a in raw:
        a = a if isinstance(a, dict) else {}
        text, start = a.get("text"), a.get("answer_start")
        if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
            raise DataError(f"{where()}: an answer needs a string 'text' and an int 'answer_start'")
        if not text.strip():
            raise DataError(f"{where()}: an answer's text is empty (a question without an answer "
                            f"has 'answers': [] in SQuAD v2.0)")
        if start < 0 or context[start:start + len(text)] != text:  # no Python negative index
            found = context[start:start + len(text)]
            raise DataError(f"{where()}: answer {text!r} is not at answer_start {start} "
                            f"(the context has {found!r} there)")
        answers.append((text, start))
    return answers


def parse_squad(data: dict, where: str = "SQuAD data", text: str | None = None) -> list[QAExample]:
    """The questions of a SQuAD object, answers checked against their offsets and the version.

    v1.1: every question has an answer. v2.0: a question has an answer exactly when its
    is_impossible (true or false) is false. Ids are unique (the official script keys on them).
    `text`, the file's text, lets errors name the question's line.
    """
    line_index: list[dict] = []

    def line(qid: str, nth: int = 0) -> int | None:
        if text is None:
            return None
        if not line_index:  # built only when there is an error to report
            line_index.append(_id_lines(text))
        lines = line_index[0].get(qid, [])
        return lines[nth] if nth < len(lines) else None

    def at(qid: str, nth: int = 0) -> str:
        n = line(qid, nth)
        return f"{where}:{n}: question {qid}" if n else f"{where}: question {qid}"

    examples, flagged, seen = [], False, {}
    for article in _field(data, "data", list, where):
        for para in _field(article, "paragraphs", list, where):
            context = _field(para, "context", str, where)
            for qa in _field(para, "qas", list, where):
                qid = qa.get("id") if isinstance(qa, dict) else None
                if not isinstance(qid, str):
                    raise DataError(f"{where}: a question has no string 'id'")
                nth = seen[qid] = seen.get(qid, -1) + 1
                if nth:
                    earlier = f"at line {line(qid)}" if line(qid) else "earlier in the file"
                    raise DataError(f"{at(qid, nth)}: question id {qid!r} also {earlier}; ids must be "
                                    f"unique (answers are scored by id)")
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise DataError(f"{at(qid)}: is_impossible must be true or false, got {impossible!r}")
                question = qa.get("question")
                if not isinstance(question, str):
                    raise DataError(f"{at(qid)}: expected a str field 'question'")
                answers = _answers(qa, context, lambda qid=qid: at(qid))
                flagged = flagged or "is_impossible" in qa
                examples.append(QAExample(qid, question, context, answers, impossible))
    # v2.0 as the official script tells it: the file says so or a question carries is_impossible
    v2 = flagged or str(data.get("version", "")).lstrip("v").startswith("2")
    for ex in examples:
        ex.version = "v2.0" if v2 else "v1.1"
        if not v2 and not ex.answers:
            raise DataError(f"{at(ex.qid)}: has no answer (SQuAD v1.1 needs one; a question without "
                            f"one is SQuAD v2.0's \"is_impossible\": true)")
        if v2 and not ex.impossible and not ex.answers:
            raise DataError(f"{at(ex.qid)}: has no answer and is_impossible is false")
        if v2 and ex.impossible and ex.answers:
            raise DataError(f"{at(ex.qid)}: is_impossible is true but it has an answer (SQuAD v2.0 puts "
                            f"those in 'plausible_answers')")
    return examples


def read_squad(source: dict | str | Path) -> tuple[list[QAExample], dict, str]:
    """(examples, the JSON object, "v1.1" or "v2.0") of a SQuAD file or object."""
    text = None
    if isinstance(source, dict):
        data, where = source, "SQuAD data"
    else:
        path = Path(source).expanduser()
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a UTF-8 JSON file ({e})") from None
        except (ValueError, RecursionError) as e:  # an integer too long for Python, too deep a nesting
            raise DataError(f"{path}: not a JSON file lmlab can read ({json_problem(e)})") from None
    if not isinstance(data, dict):
        raise DataError(f'{where}: expected a SQuAD object with a "data" list')
    examples = parse_squad(data, where, text)
    if not examples:
        raise DataError(f"{where}: holds no questions")
    return examples, data, examples[0].version


def read(source: str, split: str, options: dict) -> list[QAExample]:
    """The task-module reader: a SQuAD v1.1/v2.0 JSON file (no built-in QA data ships)."""
    if is_builtin(source):
        raise DataError(f"{source}: there is no built-in QA data; pass a SQuAD v1.1/v2.0 JSON file")
    return read_squad(source)[0]


def label_set(train: list[QAExample], options: dict) -> tuple[tuple[str, ...], bool]:
    return (), False


def spec_extra(train: list[QAExample], options: dict) -> dict:
    """The windowing and answer options saved with the model (spec.extra); version_2 defaults to
    the training data's version."""
    extra = {key: options.get(key) if options.get(key) is not None else value
             for key, value in DEFAULTS.items()}
    if extra["version_2"] is None:
        extra["version_2"] = any(ex.version == "v2.0" for ex in train)
    for key in ("doc_stride", "max_query_len", "n_best", "max_answer_len"):
        if not isinstance(extra[key], int) or extra[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be a positive integer, got {extra[key]!r}")
    extra["null_threshold"] = float(extra["null_threshold"])
    extra["version_2"] = bool(extra["version_2"])
    return extra


# ---------------------------------------------------------------- features


@dataclass(eq=False)
class QAFeature:
    example: QAExample
    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]  # character span in the context; None off the context
    max_context: list[bool]  # whether this window is where the token has the most context
    start_position: int = 0
    end_position: int = 0
    doc_span: tuple[int, int] = field(default=(0, 0))  # (first context token, token count)


def doc_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of the context windows: `window` tokens, starts `stride` apart, the last
    one reaching the end of the context (run_squad.py); one empty window for an empty context."""
    spans, start = [], 0
    while True:
        length = min(n_tokens - start, window)
        spans.append((start, length))
        if start + length >= n_tokens:
            return spans
        start += min(length, stride)


def best_windows(spans: list[tuple[int, int]], n_tokens: int) -> list[int]:
    """Per context token, the index of the window where it has the most context."""
    best, score = [-1] * n_tokens, [float("-inf")] * n_tokens
    for k, (start, length) in enumerate(spans):
        for pos in range(start, start + length):
            s = min(pos - start, start + length - 1 - pos) + 0.01 * length
            if s > score[pos]:  # strictly greater: the first window wins a tie
                best[pos], score[pos] = k, s
    return best


def answer_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """(first, last) token overlapping the characters [start, end); None when no token does."""
    first = next((i for i, (_, e) in enumerate(offsets) if e > start), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < end), None)
    if first is None or last is None or last < first:
        return None
    return first, last


def build_features(tokenizer, examples: list[QAExample], max_len: int = 384, doc_stride: int = 128,
                   max_query_len: int = 64) -> list[QAFeature]:
    """The windows of every example, targets from each example's first answer."""
    if not hasattr(tokenizer, "encode_with_offsets") or getattr(tokenizer, "cls_token_id", None) is None:
        raise ConfigError("the qa task needs a WordPiece (BERT) tokenizer: it maps answers through "
                          "character offsets and builds [CLS] question [SEP] context [SEP]")
    if doc_stride < 1 or max_query_len < 1:
        raise ConfigError(f"doc_stride and max_query_len must be >= 1, got {doc_stride}, {max_query_len}")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    features, contexts = [], {}
    for ex in examples:
        q_ids = tokenizer.encode(ex.question)[:max_query_len]
        window = max_len - len(q_ids) - 3
        if window < 1:
            raise ConfigError(f"max_len={max_len} leaves no room for the context after a "
                              f"{len(q_ids)}-token question; raise max_len or lower max_query_len")
        if ex.context not in contexts:  # paragraphs are shared by their questions
            contexts[ex.context] = tokenizer.encode_with_offsets(ex.context)
        doc_ids, doc_offsets = contexts[ex.context]
        target = None
        if ex.answers and not ex.impossible:
            text, start = ex.answers[0]
            target = answer_tokens(doc_offsets, start, start + len(text))
        spans = doc_windows(len(doc_ids), window, doc_stride)
        best = best_windows(spans, len(doc_ids))
        head = len(q_ids) + 2
        for k, (s, n) in enumerate(spans):
            f = QAFeature(ex, [cls_id, *q_ids, sep_id, *doc_ids[s:s + n], sep_id],
                          [0] * head + [1] * (n + 1),
                          [None] * head + [tuple(o) for o in doc_offsets[s:s + n]] + [None],
                          [False] * head + [best[p] == k for p in range(s, s + n)] + [False],
                          doc_span=(s, n))
            if target is not None and s <= target[0] and target[1] < s + n:
                f.start_position, f.end_position = head + target[0] - s, head + target[1] - s
            features.append(f)
    return features


def featurize(examples: list[QAExample], tokenizer, spec: TaskSpec,
              truncate: bool = False) -> list[QAFeature]:
    """The task-module featurizer: windows of spec.max_len tokens (`truncate` does not apply)."""
    extra = {**DEFAULTS, **spec.extra}
    return build_features(tokenizer, examples, spec.max_len, int(extra["doc_stride"]),
                          int(extra["max_query_len"]))


def collate(features: list[QAFeature], spec: TaskSpec) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask, token_type_ids; labels (B, 2) = (start, end)."""
    return {"input_ids": pad_2d([f.input_ids for f in features], spec.pad_id),
            "attention_mask": pad_2d([[1] * len(f.input_ids) for f in features], 0),
            "token_type_ids": pad_2d([f.token_type_ids for f in features], 0),
            "labels": torch.tensor([[f.start_position, f.end_position] for f in features], dtype=torch.long)}


# ---------------------------------------------------------------- loss


def loss(out: TaskOutput, batch: dict, spec: TaskSpec | None = None) -> torch.Tensor:
    """(CE(start) + CE(end)) / 2; unanswerable and out-of-window targets point at [CLS]."""
    labels = batch["labels"]
    return (F.cross_entropy(out.start_logits.float(), labels[:, 0])
            + F.cross_entropy(out.end_logits.float(), labels[:, 1])) / 2


# ---------------------------------------------------------------- prediction


def _top(values: list[float], n: int) -> list[int]:
    return sorted(range(len(values)), key=lambda i: -values[i])[:n]


def _candidates(f: QAFeature, start: list[float], end: list[float], n_best: int, max_answer_len: int):
    """(score, first char, last char) of every allowed span of one window."""
    for i in _top(start, n_best):
        if f.offsets[i] is None or not f.max_context[i]:
            continue
        for j in _top(end, n_best):
            if f.offsets[j] is None or j < i or j - i + 1 > max_answer_len:
                continue
            yield start[i] + end[j], f.offsets[i][0], f.offsets[j][1]


def postprocess(features: list[QAFeature], start_logits: list[list[float]], end_logits: list[list[float]],
                n_best: int = N_BEST, max_answer_len: int = MAX_ANSWER_LEN, version_2: bool = False,
                null_threshold: float = 0.0) -> tuple[dict, dict]:
    """(qid -> answer text, qid -> {"nbest": [(text, score)], "null_score_diff"}) from the logits
    of every feature (lists over each feature's own positions), questions in feature order."""
    by_example: dict[int, list[int]] = {}
    for k, f in enumerate(features):
        by_example.setdefault(id(f.example), []).append(k)
    predictions, details = {}, {}
    for ks in by_example.values():
        ex = features[ks[0]].example
        spans, null = [], float("inf")
        for k in ks:
            s, e = start_logits[k], end_logits[k]
            null = min(null, s[0] + e[0])
            spans.extend(_candidates(features[k], s, e, n_best, max_answer_len))
        nbest, seen = [], set()
        for score, a, b in sorted(spans, key=lambda c: -c[0]):
            text = ex.context[a:b]
            if text not in seen:
                seen.add(text)
                nbest.append((text, score))
            if len(nbest) == n_best:
                break
        best_text, best_score = nbest[0] if nbest else ("", float("-inf"))
        diff = null - best_score  # v2.0: how much more the model believes in "no answer"
        predictions[ex.qid] = "" if version_2 and diff > null_threshold else best_text
        details[ex.qid] = {"nbest": nbest, "null_score_diff": diff if version_2 else None}
    return predictions, details


def scoring_dataset(examples: list[QAExample]) -> dict:
    """A SQuAD object holding just what the official scoring reads (ids, answers, is_impossible)."""
    v2 = any(ex.version == "v2.0" for ex in examples)
    qas = [{"id": ex.qid, "answers": [{"text": t} for t, _ in ex.answers],
            **({"is_impossible": ex.impossible} if v2 else {})} for ex in examples]
    return {"version": "v2.0" if v2 else "v1.1", "data": [{"paragraphs": [{"qas": qas}]}]}


def predict(model: torch.nn.Module, features: list[QAFeature], spec: TaskSpec,
            batch_size: int = 64) -> tuple[dict, dict, float]:
    """(qid -> answer, qid -> details, mean loss over the windows) of a model on `features`."""
    extra = {**DEFAULTS, **spec.extra}
    version_2 = extra["version_2"]
    if version_2 is None:  # decided by the data the model is evaluated on
        version_2 = any(f.example.version == "v2.0" for f in features)
    starts, ends, total = [], [], 0.0
    for out, batch in run_model(model, features, lambda f: collate(f, spec), batch_size):
        total += float(loss(out, batch)) * len(batch["labels"])
        widths = batch["attention_mask"].sum(-1).tolist()
        rows = zip(out.start_logits.float().tolist(), out.end_logits.float().tolist(), widths, strict=True)
        for s, e, w in rows:
            starts.append(s[:w])
            ends.append(e[:w])
    predictions, details = postprocess(features, starts, ends, int(extra["n_best"]),
                                       int(extra["max_answer_len"]), bool(version_2),
                                       float(extra["null_threshold"]))
    return predictions, details, total / max(1, len(features))


def evaluate(model: torch.nn.Module, features: list[QAFeature], spec: TaskSpec, batch_size: int = 64) -> dict:
    """Dev metrics: exact_match and f1 (official SQuAD, ×100; HasAns_/NoAns_ for v2.0), loss, n."""
    predictions, _, mean_loss = predict(model, features, spec, batch_size)
    examples = list({id(f.example): f.example for f in features}.values())
    scores = squad_scores(predictions, scoring_dataset(examples))
    scores.pop("version")
    return {**scores, "loss": mean_loss, "n": len(examples)}
