"""SQuAD exact match and F1, as the official v1.1 and v2.0 evaluation scripts define them.

Answers are compared after normalisation: lower-case, drop every ASCII punctuation character,
replace the whole words a/an/the by a space, collapse whitespace. Exact match is 1 when the
normalised strings are equal; F1 is the bag-of-tokens overlap of the normalised whitespace tokens
(multiset intersection; precision over the prediction, recall over the gold answer). A question
scores the maximum over its gold answers; the totals are means ×100.

The two versions differ where the official scripts do:
* v1.1: F1 is 0 when no token is shared (so also for two empty answers); a question missing from
  the predictions scores 0 and counts in the total.
* v2.0: a question is unanswerable when none of its gold answers normalises to a non-empty
  string; its only gold answer is then "" and the right prediction is "" (F1 1 when both token
  lists are empty, 0 when one is). A question missing from the predictions is left out of the
  totals (the official script skips it). `HasAns_*` and `NoAns_*` break the scores down by
  whether the question is answerable; the optional no-answer-probability threshold search of the
  official script is not reproduced.
The version is v2.0 when the file says `"version": "v2.0"` or any question has `is_impossible`.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path

from lmlab.data.corpora import json_problem
from lmlab.errors import DataError

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower-case, no punctuation, no articles, single spaces (the official normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str, version: str = "v1.1") -> float:
    """Bag-of-tokens F1 of the normalised strings; v2.0 scores two empty answers as a match."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version == "v2.0" and (not pred or not ref):
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def load_dataset(dataset_json: dict | str | Path) -> dict:
    """A SQuAD dataset object, given as a dict or a path to the JSON file."""
    if isinstance(dataset_json, dict):
        return dataset_json
    path = Path(dataset_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # bytes, a 5000-digit number, deep nesting
        raise DataError(f"{path}: not a UTF-8 JSON file lmlab can read ({json_problem(e)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f'{path}: expected a SQuAD object with a "data" list')
    return data


def squad_version(dataset: dict) -> str:
    """"v2.0" when the file says so or any question carries is_impossible, else "v1.1"."""
    if str(dataset.get("version", "")).lstrip("v").startswith("2"):
        return "v2.0"
    for article in dataset["data"]:
        for para in article["paragraphs"]:
            if any("is_impossible" in qa for qa in para["qas"]):
                return "v2.0"
    return "v1.1"


def _question_scores(predictions: dict, dataset: dict, version: str) -> tuple[dict, dict, dict]:
    """qid -> exact, qid -> f1, qid -> answerable (only the questions that are scored)."""
    exact, f1, has_answer = {}, {}, {}
    for article in dataset["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                qid = qa["id"]
                golds = [a["text"] for a in qa.get("answers", [])]
                if version == "v2.0":
                    golds = [g for g in golds if normalize_answer(g)] or [""]
                    if qid not in predictions:
                        continue
                elif not golds:
                    raise DataError(f"question {qid}: a v1.1 question needs at least one answer")
                pred = predictions.get(qid, None)
                if pred is None:  # v1.1: an unanswered question scores 0
                    exact[qid], f1[qid] = 0, 0.0
                else:
                    exact[qid] = max(exact_match(pred, g) for g in golds)
                    f1[qid] = max(token_f1(pred, g, version) for g in golds)
                has_answer[qid] = golds != [""]
    return exact, f1, has_answer


def _means(exact: dict, f1: dict, qids: list, prefix: str = "") -> dict:
    n = len(qids)
    return {f"{prefix}exact_match": 100.0 * sum(exact[q] for q in qids) / n if n else 0.0,
            f"{prefix}f1": 100.0 * sum(f1[q] for q in qids) / n if n else 0.0,
            f"{prefix}total": n}


def squad_scores(predictions: dict[str, str], dataset_json: dict | str | Path,
                 version: str | None = None) -> dict:
    """{"exact_match", "f1", "total"} ×100 of `predictions` (qid -> answer text) on a SQuAD dataset.

    `dataset_json` is the parsed JSON object or a path to it; `version` ("v1.1" or "v2.0")
    defaults to what the data says; the result names it under "version". v2.0 adds
    HasAns_exact_match / HasAns_f1 / HasAns_total and the same NoAns_ keys.
    """
    dataset = load_dataset(dataset_json)
    version = version or squad_version(dataset)
    if version not in ("v1.1", "v2.0"):
        raise DataError(f"unknown SQuAD version {version!r}; expected v1.1 or v2.0")
    exact, f1, has_answer = _question_scores(predictions, dataset, version)
    out = _means(exact, f1, list(exact))
    if version == "v2.0":
        out.update(_means(exact, f1, [q for q in exact if has_answer[q]], "HasAns_"))
        out.update(_means(exact, f1, [q for q in exact if not has_answer[q]], "NoAns_"))
    out["version"] = version
    return out
