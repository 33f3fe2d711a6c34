"""A token shard cached for one file is never served for another: a different file with the same
path, size and mtime (what `cp -p`, `rsync -a` and archive tools leave) is tokenized anew, for a
single file, a folder of files and a separate validation file; an untouched file is hashed once."""

import os
import shutil
import time

import numpy as np
import pytest

from lmlab.data import filehash, prepare
from lmlab.data.prepare import prepare_tokens
from lmlab.tokenizers.chars import CharTokenizer

OLD = "".join(f"the cat sat on mat number {i}\n" for i in range(60))
NEW = OLD.replace("cat", "dog").replace("mat", "rug")  # same length, other text
TOK = CharTokenizer.train([OLD + NEW])


def copy_keeping_mtime(text: str, dst, replace: bool) -> None:
    """`text` into `dst` with dst's old mtime: in place (`cp -p` onto an existing file keeps its
    inode) or through a temporary file renamed over it (`rsync -a`, archive extraction)."""
    st = os.stat(dst)
    if replace:
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_text(text)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, dst)
    else:
        dst.write_text(text)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = os.stat(dst)
    assert (now.st_size, now.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def train_text(shards) -> str:
    return TOK.decode(shards["train"].tokens.tolist())


@pytest.mark.parametrize("replace", [False, True], ids=["cp-p", "rsync-a"])
def test_same_size_and_mtime_file_is_tokenized_again(tmp_path, replace):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(OLD)
    first = prepare_tokens(str(corpus), TOK, tmp_path / "cache", progress=False)
    assert "cat" in train_text(first)
    copy_keeping_mtime(NEW, corpus, replace)
    second = prepare_tokens(str(corpus), TOK, tmp_path / "cache", progress=False)
    assert "cat" not in train_text(second) and "dog" in train_text(second)
    assert second["train"].path != first["train"].path


def test_a_folder_with_one_file_swapped_is_tokenized_again(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(OLD)
    first = prepare_tokens(str(folder), TOK, tmp_path / "cache", progress=False)
    copy_keeping_mtime(NEW, folder / "0.txt", replace=False)
    second = prepare_tokens(str(folder), TOK, tmp_path / "cache", progress=False)
    assert train_text(second).startswith(NEW) and train_text(first).startswith(OLD)


def test_a_separate_valid_file_swapped_is_tokenized_again(tmp_path):
    corpus, valid = tmp_path / "train.txt", tmp_path / "valid.txt"
    corpus.write_text(OLD)
    valid.write_text(OLD)
    first = prepare_tokens(str(corpus), TOK, tmp_path / "cache", valid=str(valid), progress=False)
    copy_keeping_mtime(NEW, valid, replace=False)
    second = prepare_tokens(str(corpus), TOK, tmp_path / "cache", valid=str(valid), progress=False)
    assert TOK.decode(first["valid"].tokens.tolist()).startswith(OLD)
    assert TOK.decode(second["valid"].tokens.tolist()).startswith(NEW)


def test_same_content_elsewhere_is_a_cache_hit(tmp_path, monkeypatch):
    """The key is the content (and the file name, which picks the reader), not the inode."""
    a, b = tmp_path / "a" / "corpus.txt", tmp_path / "b" / "corpus.txt"
    a.parent.mkdir()
    b.parent.mkdir()
    a.write_text(OLD)
    first = prepare_tokens(str(a), TOK, tmp_path / "cache", progress=False)
    shutil.copy(a, b)
    monkeypatch.setattr(prepare, "read_corpus", lambda *a, **k: pytest.fail("a cache hit reads nothing"))
    again = prepare_tokens(str(b), TOK, tmp_path / "cache", progress=False)
    assert again["train"].path == first["train"].path


def later(monkeypatch, seconds: float = 60.0) -> None:
    """The clock moved on: files written now are old enough for their hash to be remembered."""
    now = time.time_ns()
    monkeypatch.setattr(filehash, "_now_ns", lambda: now + int(seconds * 1e9))


def count_hashing(monkeypatch) -> list:
    seen = []
    real = filehash._hash_file

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(filehash, "_hash_file", counting)
    return seen


def test_an_untouched_file_is_hashed_once(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(OLD)
    later(monkeypatch)
    hashed = count_hashing(monkeypatch)
    first = prepare_tokens(str(corpus), TOK, tmp_path / "cache", progress=False)
    again = prepare_tokens(str(corpus), TOK, tmp_path / "cache", progress=False)
    assert hashed == [str(corpus.resolve())]  # the second run used the remembered hash
    np.testing.assert_array_equal(again["train"].tokens, first["train"].tokens)


@pytest.mark.parametrize("replace", [False, True], ids=["cp-p", "rsync-a"])
def test_a_remembered_hash_is_dropped_when_the_inode_or_ctime_changes(tmp_path, monkeypatch, replace):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(OLD)
    later(monkeypatch)
    before = filehash.file_sha256(corpus)
    ctime = os.stat(corpus).st_ctime_ns
    probe = tmp_path / "probe"
    while True:  # wait for the kernel's timestamp tick to move, or the swap would keep the ctime
        probe.write_text("x")
        if os.stat(probe).st_ctime_ns != ctime:
            break
        time.sleep(0.001)
    copy_keeping_mtime(NEW, corpus, replace)
    hashed = count_hashing(monkeypatch)
    assert filehash.file_sha256(corpus) != before and hashed == [str(corpus.resolve())]


def test_a_file_changed_within_the_racy_window_is_not_remembered(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(OLD)  # written just now: a change in the same tick would keep every stat field
    filehash.file_sha256(corpus)
    hashed = count_hashing(monkeypatch)
    filehash.file_sha256(corpus)
    assert hashed == [str(corpus.resolve())]


def test_a_broken_hash_memo_is_ignored_and_rewritten(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(OLD)
    later(monkeypatch)
    memo = filehash.memo_path()
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text("{not json")
    digest = filehash.file_sha256(corpus)
    hashed = count_hashing(monkeypatch)
    assert filehash.file_sha256(corpus) == digest and hashed == []
