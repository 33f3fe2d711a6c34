"""text8-style corpora (lmlab.data.text8): the filter, the 90/5/5 split, and builtin:text8-kjv."""

import pytest

from lmlab.data import corpora
from lmlab.data.corpora import read_corpus
from lmlab.data.text8 import text8_filter, text8_split
from lmlab.errors import DataError


def test_filter_keeps_lowercase_letters_and_single_spaces():
    docs = ["Genesis 1\n\n  1 In the beginning, God created...", "  THE END;\tÉtude  42 "]
    assert text8_filter(docs) == "genesis in the beginning god created the end tude"
    assert text8_filter(["!!", "ok"]) == "ok"


def test_split_is_90_5_5_by_characters():
    text = "abcdefghij" * 10  # 100 characters
    parts = {s: text8_split(text, s) for s in ("train", "valid", "test")}
    assert [len(p) for p in parts.values()] == [90, 5, 5]
    assert "".join(parts.values()) == text


@pytest.mark.skipif(not corpora._BIBLE.exists(),
                    reason="bible-kjv not installed (make data installs it as root)")
def test_text8_kjv():
    splits = {s: read_corpus("builtin:text8-kjv", s) for s in ("train", "valid", "test")}
    assert all(len(docs) == 1 for docs in splits.values())
    train, valid, test = (docs[0] for docs in splits.values())
    assert set(train + valid + test) == set("abcdefghijklmnopqrstuvwxyz ")
    assert train.startswith("genesis in the beginning god created the heaven and the earth")
    total = len(train) + len(valid) + len(test)
    assert abs(len(valid) - 0.05 * total) <= 1 and abs(len(test) - 0.05 * total) <= 1
    assert corpora.fingerprint("builtin:text8-kjv")["filter"]


def test_text8_gcide_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(corpora, "_GCIDE", tmp_path / "missing.dict.dz")
    with pytest.raises(DataError, match="builtin:gcide needs the Debian package dict-gcide"):
        read_corpus("builtin:text8-gcide", "valid")
