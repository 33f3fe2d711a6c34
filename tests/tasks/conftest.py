"""Fixtures for the task tests: a tiny word-level GPT-2 saved to disk and synthetic task files.

The synthetic task: a text of random filler words holding exactly one of "good" / "bad"; the label
is that word. One CPU thread (see tests/train/conftest.py for why) and a private cache folder.
"""

import json
import random

import pytest

from lmlab.tokenizers.words import WordTokenizer

FILLER = "the cat sat on a mat and dog ran to big red house with small blue car".split()


def synthetic_records(n: int, seed: int, pair: bool = False) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        label = rng.choice(["good", "bad"])
        words.insert(rng.randrange(len(words) + 1), label)
        record = {"text": " ".join(words), "label": label}
        if pair:
            record["text_b"] = " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 5)))
        out.append(record)
    return out


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def isolated(one_thread_private_cache):
    return one_thread_private_cache  # tests/conftest.py


@pytest.fixture(scope="module")
def word_tokenizer():
    return WordTokenizer.train([" ".join(FILLER + ["good", "bad"])])


@pytest.fixture(scope="module")
def tiny_gpt_dir(tiny_model_dir, word_tokenizer):
    """A saved tiny GPT-2 (random weights) with the word tokenizer."""
    return tiny_model_dir("gpt2", word_tokenizer)


@pytest.fixture(scope="module")
def make_records():
    return synthetic_records


@pytest.fixture(scope="module")
def jsonl():
    return write_jsonl


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    return {"train": write_jsonl(d / "train.jsonl", synthetic_records(256, 0)),
            "dev": write_jsonl(d / "dev.jsonl", synthetic_records(64, 1)),
            "dir": d}
