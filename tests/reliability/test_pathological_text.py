"""Pathological text: a 1 MB line without whitespace trains every tokenizer kind in seconds (the
subword trainers see runs of at most 100 characters; nothing is dropped and encoding is
unchanged); every check that needs no tokenizer fails before one is trained; a one-line document
is encoded in pieces with exactly the ids of the whole."""

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmlab.data import prepare
from lmlab.data.prepare import build_tokenizer_for, encode_documents
from lmlab.errors import DataError
from lmlab.tokenizers.byte_bpe import ByteBPETokenizer
from lmlab.tokenizers.chars import CharTokenizer
from lmlab.tokenizers.common import MAX_TRAIN_RUN, training_pieces
from lmlab.tokenizers.wordpiece import WordPieceTokenizer
from lmlab.tokenizers.words import WordTokenizer

KINDS = ("words", "chars", "byte_bpe", "wordpiece")
CLASSES = {"words": WordTokenizer, "chars": CharTokenizer, "byte_bpe": ByteBPETokenizer,
           "wordpiece": WordPieceTokenizer}
SCRIPT = """
import json, resource, sys, time
from lmlab.data.prepare import build_tokenizer_for
path, line = sys.argv[1], open(sys.argv[1], encoding="utf-8").read().split("\\n")[0]
for kind in ("words", "chars", "byte_bpe", "wordpiece"):
    start = time.perf_counter()
    tok = build_tokenizer_for(path, kind, None if kind in ("words", "chars") else 1000)
    seconds = time.perf_counter() - start
    ids = tok.encode(line)
    same = tok.decode(ids) == line if kind != "wordpiece" else ids == [tok.unk_token_id]
    print(json.dumps({"kind": kind, "seconds": seconds, "round_trip": same,
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
"""


def no_space_line(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=n))  # letters only: one GPT-2 pre-token


@pytest.mark.slow
def test_a_1mb_line_without_whitespace_trains_every_kind_in_seconds(tmp_path):
    """It took more than 120 s (byte_bpe, wordpiece): the trainers re-scan a whole pre-token per merge."""
    path = tmp_path / "line.txt"
    path.write_text(no_space_line(1_000_000) + "\n" + "a short last line to hold out\n", encoding="utf-8")
    src = Path(__file__).resolve().parents[2] / "src"
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(src)})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"not done in 120 s; finished: {e.stdout}")
    assert done.returncode == 0, done.stderr
    rows = {r["kind"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(rows) == set(KINDS)
    for row in rows.values():
        assert row["seconds"] < 30, row  # 3.0 s byte_bpe, 3.4 s wordpiece here (two shared cores)
        assert row["round_trip"], row  # byte_bpe/chars/words give the line back; wordpiece: one [UNK]
    assert max(r["max_rss_mb"] for r in rows.values()) < 1500


def test_training_pieces_cap_every_run_and_drop_nothing():
    rng = random.Random(1)
    for _ in range(200):
        runs = [rng.choice("ab.") * rng.randint(1, 350) if k % 2 else
                rng.choice(" \n\t") * rng.randint(1, 250) for k in range(rng.randint(1, 8))]
        text = "".join(runs)
        pieces = list(training_pieces([text]))
        assert "".join(pieces) == text
        for piece in pieces:
            longest = max(len(m) for m in re.findall(r"\S+|\s+", piece))
            assert longest <= MAX_TRAIN_RUN
        if all(len(r) <= MAX_TRAIN_RUN for r in runs):
            assert pieces == [text]  # ordinary text is passed whole


def test_normal_text_trains_as_before():
    """The cap changes nothing for text without runs over 100 characters."""
    text = ["the quick brown fox, it's 2019! " * 40 + "naïve café " * 10] * 5
    assert list(training_pieces(text)) == text


@pytest.fixture
def no_training(monkeypatch):
    for cls in CLASSES.values():
        monkeypatch.setattr(cls, "train", classmethod(lambda *a, **k: pytest.fail("a tokenizer was trained")))


def cases(tmp_path) -> list[tuple[dict, str]]:
    one_line = tmp_path / "one_line.txt"
    one_line.write_text(no_space_line(2_000_000), encoding="utf-8")
    short = tmp_path / "short.txt"
    short.write_text("tiny\ncorpus\n", encoding="utf-8")
    ok = tmp_path / "ok.txt"
    ok.write_text("".join(f"line {i}\n" for i in range(100)), encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n", encoding="utf-8")
    surrogate = tmp_path / "s.jsonl"
    surrogate.write_text('{"text": "fine"}\n{"text": "bad \\ud800 text"}\n', encoding="utf-8")
    return [
        ({"source": one_line}, "one_line.txt: too little text to hold out a validation part"),
        ({"source": short, "seq_len": 64}, "short.txt: the train split has at most 6 tokens"),
        ({"source": ok, "valid": short, "seq_len": 16}, "short.txt: the valid split has at most 13 tokens"),
        ({"source": ok, "valid": latin1}, "latin1.txt:2: not UTF-8 text"),
        ({"source": ok, "valid": blank}, "blank.txt: the valid split holds no text"),
        ({"source": surrogate}, "s.jsonl:2: \"text\" holds a lone surrogate"),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_cheap_checks_fail_before_a_tokenizer_is_trained(tmp_path, no_training, kind):
    for args, message in cases(tmp_path):
        args = {k: str(v) if isinstance(v, Path) else v for k, v in args.items()}
        start = time.perf_counter()
        with pytest.raises(DataError, match=message.replace(".", r"\.")) as info:
            build_tokenizer_for(kind=kind, **args)
        assert "\n" not in str(info.value) and time.perf_counter() - start < 5


@pytest.fixture(scope="module")
def one_line_doc():
    rng = random.Random(2)
    words = ["the", "cat", "sat", "on", "a", "mat", "naïve", "Straße", "it's", "2019,", "<my tok>"]
    return "".join(rng.choice(words) + rng.choice([" ", " ", "  ", "\t", " "]) for _ in range(4000))


@pytest.mark.parametrize("kind", KINDS)
def test_a_one_line_document_is_encoded_in_pieces_with_the_ids_of_the_whole(kind, one_line_doc, monkeypatch):
    tok = CLASSES[kind].train([one_line_doc], **({} if kind in ("words", "chars") else {"vocab_size": 300}))
    tok.add_special_tokens(["<my tok>"])  # a special with a space: never cut inside it
    whole = encode_documents([one_line_doc, "tail"], tok)
    assert len(whole) > 4000
    monkeypatch.setattr(prepare, "_BATCH_CHARS", 500)
    pieces = list(prepare._chunks([one_line_doc]))
    assert len(pieces) > 20 and "".join(p for _, p, _ in pieces) == one_line_doc
    assert max(len(p) for _, p, _ in pieces) < 1100
    np.testing.assert_array_equal(encode_documents([one_line_doc, "tail"], tok), whole)
