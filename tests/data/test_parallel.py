"""Parallel text for CoVe's translation pretraining (lmlab.data.parallel, lmlab.data.lohelp): local
files (TSV, two aligned files) and their one-line errors, the help pages' alignment by (page, id,
occurrence), the split by page (no page in two splits) and the batches (every pair once per epoch, the
same batches after a resume)."""

import numpy as np
import pytest
import torch

from lmlab.data import lohelp, parallel
from lmlab.data.parallel import ParallelBatches, builtin_splits, collate, page_split, read_parallel
from lmlab.errors import DataError


def test_two_aligned_files_and_a_tsv_give_the_same_pairs(tmp_path):
    (tmp_path / "en.txt").write_text("the cat\n\nsat  down\n", encoding="utf-8")
    (tmp_path / "de.txt").write_text("die Katze\n\nsetzte sich\n", encoding="utf-8")
    (tmp_path / "p.tsv").write_text("the cat\tdie Katze\n\nsat  down\tsetzte sich\n", encoding="utf-8")
    files = parallel.read_local(f"{tmp_path / 'en.txt'},{tmp_path / 'de.txt'}")
    tsv = parallel.read_local(str(tmp_path / "p.tsv"))
    assert [(p.source, p.target) for p in files] == [(p.source, p.target) for p in tsv] == \
        [("the cat", "die Katze"), ("sat down", "setzte sich")]  # blank lines skipped, spaces collapsed
    assert files[1].where.endswith("en.txt:3")


def test_misaligned_files_are_named_with_their_line_counts(tmp_path):
    (tmp_path / "en.txt").write_text("a\nb\nc\n")
    (tmp_path / "de.txt").write_text("x\ny\n")
    with pytest.raises(DataError) as e:
        parallel.read_local(f"{tmp_path / 'en.txt'},{tmp_path / 'de.txt'}")
    assert str(e.value).startswith(f"{tmp_path / 'en.txt'} has 3 lines but {tmp_path / 'de.txt'} has 2;")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("en, de, message", [("a\nb\n", "x\n \n", "en.txt:2: the target side is empty"),
                                             ("a\n\n", "x\ny\n", "en.txt:2: the source side is empty")])
def test_an_empty_side_names_its_line(tmp_path, en, de, message):
    (tmp_path / "en.txt").write_text(en)
    (tmp_path / "de.txt").write_text(de)
    with pytest.raises(DataError, match=message):
        parallel.read_local(f"{tmp_path / 'en.txt'},{tmp_path / 'de.txt'}")


def test_tsv_errors_and_an_empty_file(tmp_path):
    (tmp_path / "bad.tsv").write_text("a\tb\nno tab here\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected 'source<TAB>target'"):
        parallel.read_local(str(tmp_path / "bad.tsv"))
    (tmp_path / "half.tsv").write_text("a\t \n")
    with pytest.raises(DataError, match=r"half.tsv:1: the target side is empty"):
        parallel.read_local(str(tmp_path / "half.tsv"))
    (tmp_path / "empty.tsv").write_text("\n\n")
    with pytest.raises(DataError, match="no sentence pairs"):
        parallel.read_local(str(tmp_path / "empty.tsv"))
    with pytest.raises(DataError, match="train and valid splits only"):
        read_parallel(str(tmp_path / "bad.tsv"), "test")


def test_local_valid_split_is_the_last_pairs(tmp_path):
    (tmp_path / "p.tsv").write_text("".join(f"s{i}\tt{i}\n" for i in range(40)))
    train, valid = (read_parallel(str(tmp_path / "p.tsv"), s) for s in ("train", "valid"))
    assert [p.source for p in valid] == ["s38", "s39"] and len(train) == 38


PAGE_EN = """<html><body><h1 id="hd_id1">Tools Menu</h1>
<p id="bm_id9">hidden bookmark</p>
<p id="par_id2">Choose <span hidden="true">macOS path</span><b>Tools - Options</b>.</p>
<p id="par_id2">Second one.</p><p id="par_id3">Same text</p><p id="par_id4">Only here</p></body></html>"""
PAGE_DE = """<html><body><h1 id="hd_id1">Menü Extras</h1>
<p id="bm_id9">verstecktes Lesezeichen</p>
<p id="par_id2">Wählen Sie <b>Extras - Optionen</b>.</p>
<p id="par_id2">Der zweite.</p><p id="par_id3">Same text</p><p id="par_id5">Nur hier</p></body></html>"""


def test_help_pages_align_by_page_id_and_occurrence(tmp_path):
    for lang, page in (("en", PAGE_EN), ("de", PAGE_DE)):
        (tmp_path / lang / "shared").mkdir(parents=True)
        (tmp_path / lang / "shared" / "menu.html").write_text(page, encoding="utf-8")
    (tmp_path / "en" / "only-english.html").write_text(PAGE_EN, encoding="utf-8")
    pairs = lohelp.align(tmp_path / "en", tmp_path / "de")
    assert [(p["key"], p["source"], p["target"]) for p in pairs] == [
        ("hd_id1#0", "Tools Menu", "Menü Extras"),
        ("par_id2#0", "Choose Tools - Options.", "Wählen Sie Extras - Optionen."),  # hidden subtree left out
        ("par_id2#1", "Second one.", "Der zweite."),
    ]  # bm_ ids, untranslated (identical) and one-sided paragraphs dropped; a page in one language too
    assert {p["page"] for p in pairs} == {"shared/menu.html"}


def fake_pairs(pages: int = 200) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(pages):
        for j in range(3):
            s = f"sentence {rng.integers(0, 400)}"  # repeats across pages, as the help's menu paths do
            out.append({"page": f"text/page{k}.html", "key": f"par_id{j}#0", "source": s,
                        "target": s.upper()})
    return out


def test_builtin_splits_are_by_page_deduplicated_and_unseen(monkeypatch):
    monkeypatch.setattr(lohelp, "lohelp_pairs", lambda *langs: fake_pairs())
    builtin_splits.cache_clear()
    try:
        splits = builtin_splits("lohelp-en-de")
    finally:
        builtin_splits.cache_clear()
    pages = {s: {p.where.split("#")[0] for p in pairs} for s, pairs in splits.items()}
    assert all(pages[s] for s in parallel.SPLITS)
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not pages[a] & pages[b]
    for s, pairs in splits.items():
        assert all(page_split(page) == s for page in pages[s])
        assert len({(p.source, p.target) for p in pairs}) == len(pairs)  # deduplicated
    trained = {p.source for p in splits["train"]}
    assert not any(p.source in trained for p in (*splits["valid"], *splits["test"]))


def test_page_split_is_a_fixed_function_of_the_path():
    counts = {s: 0 for s in parallel.SPLITS}
    for k in range(4000):
        counts[page_split(f"text/p{k}.html")] += 1
    assert page_split("text/shared/main0108.html") == page_split("text/shared/main0108.html")
    assert 0.03 < counts["test"] / 4000 < 0.07 and 0.03 < counts["valid"] / 4000 < 0.07


def examples(n: int = 50):
    rng = np.random.default_rng(1)
    return [(list(rng.integers(4, 30, rng.integers(1, 9))), list(rng.integers(4, 30, rng.integers(1, 7))))
            for _ in range(n)]


def test_collate_pads_right_and_shifts_the_target():
    src, mask, tgt_in, tgt_out = collate([([5, 6, 7], [8]), ([9], [10, 11])], bos=2, eos=3)
    assert src.tolist() == [[5, 6, 7], [9, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert tgt_in.tolist() == [[2, 8, 0], [2, 10, 11]]
    assert tgt_out.tolist() == [[8, 3, -100], [10, 11, 3]]


def test_batches_cover_every_pair_once_per_epoch_and_resume_the_same():
    data = examples()
    batches = ParallelBatches(data, 8, seed=3, bos=2, eos=3)
    epoch = batches.batches_of(0)
    seen = np.concatenate(epoch)
    assert len(seen) == len(set(seen.tolist())) == 48  # 6 batches of 8 (the last 2 pairs wait)
    it = iter(batches)
    for _ in range(9):  # into the second epoch
        next(it)
    state = batches.state_dict()
    rest = [next(it) for _ in range(4)]
    again = ParallelBatches(data, 8, seed=3, bos=2, eos=3)
    again.load_state_dict(state)
    it2 = iter(again)
    for a, b in zip(rest, (next(it2) for _ in range(4)), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(DataError, match="fewer than --batch-size 64"):
        ParallelBatches(data, 64, seed=0, bos=2, eos=3)
