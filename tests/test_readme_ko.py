"""README.ko.md, the README in Korean for the lecture's readers (issue 24), stays in step with README.md:
the same commands in the same order, byte for byte (so they run as written), the same tables, the two
opening commands first, and each file links the other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.S | re.M)
HANGUL = re.compile(r"[\uac00-\ud7a3]")
CODE = re.compile(r"`[^`]*`")


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def fences(text: str, lang: str | None = None) -> list[str]:
    return [body for info, body in FENCE.findall(text) if lang is None or info.strip() == lang]


def tables(text: str) -> list[list[list[str]]]:
    """Each markdown table as rows of stripped cells (an escaped \\| stays inside its cell)."""
    found, rows = [], []
    for line in FENCE.sub("", text).splitlines() + [""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows:
            found.append(rows)
            rows = []
    return found


def test_bash_blocks_match_in_count_order_and_bytes():
    en, ko = fences(read("README.md"), "bash"), fences(read("README.ko.md"), "bash")
    assert len(en) >= 2
    assert ko == en


def test_every_other_code_block_is_kept_verbatim_too():
    assert fences(read("README.ko.md")) == fences(read("README.md"))


def test_both_open_with_make_demo_and_make_test():
    for name in ("README.md", "README.ko.md"):
        text = read(name)
        first = FENCE.search(text)
        assert first is not None and first.group(1).strip() == "bash", name
        assert "\n## " not in text[:first.start()], f"{name}: a section comes before the two commands"
        commands = [line.split("#")[0].strip() for line in first.group(2).splitlines()]
        assert commands == ["make demo", "make test"], name


def test_each_readme_links_the_other():
    assert "[README.ko.md](README.ko.md)" in read("README.md")
    assert "(README.md)" in read("README.ko.md")


def test_tables_have_the_same_rows_and_keep_names_and_numbers():
    en, ko = tables(read("README.md")), tables(read("README.ko.md"))
    assert [len(t) for t in ko] == [len(t) for t in en]
    for t_en, t_ko in zip(en, ko, strict=True):
        for r_en, r_ko in zip(t_en, t_ko, strict=True):
            assert len(r_ko) == len(r_en), r_en
            for c_en, c_ko in zip(r_en, r_ko, strict=True):
                # Flags, family names and paths are code spans: kept as they are, in the same order.
                assert CODE.findall(c_ko) == CODE.findall(c_en), (c_en, c_ko)
                if not HANGUL.search(c_ko):  # an untranslated cell (a number, a paper) is unchanged
                    assert c_ko == c_en


def test_korean_readme_names_the_lecture_and_lmlab_zoo():
    head = read("README.ko.md").split("\n## ")[0]
    assert "lmlab zoo" in head and "요약표" in head and HANGUL.search(head)
