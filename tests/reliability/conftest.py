"""Every test in this folder runs with one CPU thread and a private shard cache (tests/conftest.py)."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def isolated(one_thread_private_cache):
    return one_thread_private_cache
