"""Readers of the zero-shot task files; every problem is one DataError naming the file and line.

* lambada: JSONL `{"text": passage ending in the target word}` (OpenAI's GPT-2 release), or the
  LAMBADA plain text: one passage per line, its last whitespace-separated word the target.
* cloze: JSONL `{"context": str or [str], "question": "... XXXXX ...", "candidates": [...],
  "answer": ...}`, or the Children's Book Test files: per example 20 lines "N sentence", then
  "21 question<TAB>answer<TAB><TAB>cand1|cand2|...", examples separated by blank lines.
* summarize: JSONL `{"article", "summary"}`.
* translate: TSV `source<TAB>target` per line, or two aligned files (the target side given as
  `references`), one sentence per line.
A file whose name ends in .jsonl/.json, or whose first non-blank character is "{", is JSONL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.corpora import jsonl_records
from lmlab.errors import DataError

BLANK = "XXXXX"  # the Children's Book Test placeholder


@dataclass(frozen=True)
class Passage:
    text: str
    where: str  # "file:line"

    @property
    def word_start(self) -> int:
        """Index of the first character of the final word."""
        return len(self.text) - len(self.text.split()[-1])


@dataclass(frozen=True)
class Cloze:
    context: str
    question: str
    candidates: tuple[str, ...]
    answer: str
    where: str


@dataclass(frozen=True)
class Summary:
    article: str
    summary: str
    where: str


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    where: str


def _lines(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _is_jsonl(path: str | Path, lines: list[str]) -> bool:
    if str(path).endswith((".jsonl", ".json")):
        return True
    first = next((line.strip() for line in lines if line.strip()), "")
    return first.startswith("{")


def _records(path: str | Path, lines: list[str]):
    """(where, dict) per non-blank JSONL line."""
    return jsonl_records(path, "\n".join(lines))


def _text(record: dict, name: str, where: str) -> str:
    if name not in record:
        raise DataError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {name!r} is blank")
    return value.strip()


def _nonempty(items: list, path) -> list:
    if not items:
        raise DataError(f"{path}: no examples")
    return items


def _passage(text: str, where: str) -> Passage:
    text = text.strip()
    if not text:
        raise DataError(f"{where}: blank passage")
    if len(text.split()) < 2:
        raise DataError(f"{where}: a passage needs context before its final word, got {text!r}")
    return Passage(text, where)


def read_lambada(path: str | Path) -> list[Passage]:
    lines = _lines(path)
    if _is_jsonl(path, lines):
        items = [_passage(_text(r, "text", where), where) for where, r in _records(path, lines)]
        return _nonempty(items, path)
    while lines and not lines[-1].strip():  # trailing blank lines end the file, they are no passage
        lines.pop()
    return _nonempty([_passage(line, f"{path}:{n}") for n, line in enumerate(lines, start=1)], path)


def _cloze(context, question: str, candidates, answer: str, where: str) -> Cloze:
    if isinstance(context, list):
        if not all(isinstance(s, str) for s in context):
            raise DataError(f"{where}: field 'context' must be a string or a list of strings")
        context = " ".join(s.strip() for s in context)
    if not isinstance(context, str) or not context.strip():
        raise DataError(f"{where}: field 'context' is blank")
    if BLANK not in question:
        raise DataError(f"{where}: the question has no {BLANK} placeholder: {question[:60]!r}")
    if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
        raise DataError(f"{where}: field 'candidates' must be a list of strings")
    candidates = [c.strip() for c in candidates]
    if not candidates:
        raise DataError(f"{where}: empty candidate list")
    if any(not c for c in candidates):
        raise DataError(f"{where}: a blank candidate")
    if answer not in candidates:
        raise DataError(f"{where}: the answer {answer!r} is not among the candidates")
    return Cloze(context.strip(), question.strip(), tuple(candidates), answer, where)


def read_cloze(path: str | Path) -> list[Cloze]:
    lines = _lines(path)
    if not _is_jsonl(path, lines):
        return _nonempty(_read_cbt(path, lines), path)
    items = []
    for where, r in _records(path, lines):
        if "context" not in r:
            raise DataError(f"{where}: missing field 'context'")
        if "candidates" not in r:
            raise DataError(f"{where}: missing field 'candidates'")
        items.append(_cloze(r["context"], _text(r, "question", where), r["candidates"],
                            _text(r, "answer", where), where))
    return _nonempty(items, path)


_NUMBERED = re.compile(r"^(\d+) ?(.*)$")


def _read_cbt(path, lines: list[str]) -> list[Cloze]:
    """Children's Book Test: numbered context lines, then the question line with tabs."""
    items, context = [], []
    for n, line in enumerate(lines, start=1):
        where = f"{path}:{n}"
        if not line.strip():
            if context:
                raise DataError(f"{where}: blank line inside an example (expected the question line "
                                f"'N question<TAB>answer<TAB><TAB>candidates')")
            continue
        m = _NUMBERED.match(line.strip("\r"))
        if not m:
            raise DataError(f"{where}: expected a numbered line 'N text' (Children's Book Test format)")
        if "\t" not in m.group(2):
            context.append(m.group(2).strip())
            continue
        parts = m.group(2).split("\t")
        if len(parts) < 3:
            raise DataError(f"{where}: expected 'question<TAB>answer<TAB><TAB>cand1|cand2|...'")
        question, answer, cands = parts[0], parts[1].strip(), parts[-1]
        if not context:
            raise DataError(f"{where}: a question without context lines before it")
        if not answer:
            raise DataError(f"{where}: missing answer")
        candidates = [c for c in cands.split("|")] if cands.strip() else []
        items.append(_cloze(" ".join(context), question, candidates, answer, where))
        context = []
    if context:
        raise DataError(f"{path}:{len(lines)}: the file ends inside an example (no question line)")
    return items


def read_summaries(path: str | Path) -> list[Summary]:
    lines = _lines(path)
    items = [Summary(_text(r, "article", where), _text(r, "summary", where), where)
             for where, r in _records(path, lines)]
    return _nonempty(items, path)


def read_pairs(path: str | Path, references: str | Path | None = None) -> list[Pair]:
    """TSV source<TAB>target, or (with `references`) two aligned one-sentence-per-line files."""
    lines = _lines(path)
    if references is not None:
        targets = _lines(references)
        if len(targets) != len(lines):
            raise DataError(f"{path} has {len(lines)} lines but {references} has {len(targets)}; "
                            f"aligned files need one line per sentence")
        rows = [(line, t, f"{path}:{n}") for n, (line, t) in enumerate(zip(lines, targets, strict=True), 1)]
    else:
        rows = []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise DataError(f"{path}:{n}: expected 'source<TAB>target'")
            source, target = line.split("\t", 1)
            rows.append((source, target.split("\t")[0], f"{path}:{n}"))
    items = []
    for source, target, where in rows:
        if not source.strip() or not target.strip():
            raise DataError(f"{where}: blank {'source' if not source.strip() else 'target'} sentence")
        items.append(Pair(source.strip(), target.strip(), where))
    return _nonempty(items, path)
