"""Fixtures of the server tests: tiny model dirs and one torch thread."""

from __future__ import annotations

import pytest
import torch

TEXT = "the cat sat on the mat. the dog ran to the house, é ü 你好!\n"


@pytest.fixture(scope="session")
def byte_bpe():
    from lmlab.tokenizers.byte_bpe import ByteBPETokenizer

    return ByteBPETokenizer.train([TEXT * 30], vocab_size=300)


@pytest.fixture(scope="session")
def chars():
    from lmlab.tokenizers.chars import CharTokenizer

    return CharTokenizer.train([TEXT * 5])


@pytest.fixture(scope="session")
def gpt2_dir(tiny_model_dir, byte_bpe):
    """A tiny GPT-2 with a byte-level BPE (its random continuations are mostly parts of characters)."""
    return tiny_model_dir("gpt2", byte_bpe)


@pytest.fixture(scope="session")
def gpt2_chars_dir(tiny_model_dir, chars):
    """A tiny GPT-2 over characters (every token is whole text); weights drawn wide (std 0.4) so that even
    its greedy continuations vary instead of repeating one character."""
    return tiny_model_dir("gpt2", chars, init_std=0.4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
