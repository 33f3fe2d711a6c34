"""The official OpenAI Python client, pointed at `lmlab serve`, works unchanged: models, completions
(whole and streamed), embeddings (its default base64 encoding), and its error classes."""

from __future__ import annotations

import io

import pytest
import torch
from serve_helpers import served

from lmlab.generate.cli import generate_command

openai = pytest.importorskip("openai", reason="the OpenAI client is a dev extra: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def client(gpt2_chars_dir):
    with served(gpt2_chars_dir, api_key="sekrit") as (url, _):
        yield openai.OpenAI(base_url=url + "/v1", api_key="sekrit", max_retries=0, timeout=60)


def test_models(client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "lmlab"


def test_completions_whole_and_streamed(client, gpt2_chars_dir):
    want = generate_command(str(gpt2_chars_dir), "the cat", max_new_tokens=30, do_sample=False, device="cpu",
                            out=io.StringIO())[0][len("the cat"):]
    out = client.completions.create(model="tiny", prompt="the cat", max_tokens=30, temperature=0)
    assert out.choices[0].text == want and out.usage.prompt_tokens == 7
    assert out.choices[0].finish_reason in ("stop", "length")
    pieces = [chunk.choices[0].text for chunk in client.completions.create(
        model="tiny", prompt="the cat", max_tokens=30, temperature=0, stream=True) if chunk.choices]
    assert len(pieces) > 1 and "".join(pieces) == want
    sampled = client.completions.create(model="tiny", prompt="the cat", max_tokens=10, n=2, seed=4,
                                        logprobs=2, top_p=0.9)
    assert [c.index for c in sampled.choices] == [0, 1]
    assert all(len(c.logprobs.token_logprobs) == len(c.logprobs.tokens) for c in sampled.choices)


def test_embeddings_base64_and_float_agree(client):
    default = client.embeddings.create(model="tiny", input=["the cat", "a dog"])  # the client asks for base64
    floats = client.embeddings.create(model="tiny", input=["the cat", "a dog"], encoding_format="float")
    for a, b in zip(default.data, floats.data, strict=True):
        torch.testing.assert_close(torch.tensor(a.embedding), torch.tensor(b.embedding))
    assert len(default.data[0].embedding) == 48 and default.usage.prompt_tokens == 12


def test_errors_map_to_the_clients_classes(client, gpt2_chars_dir):
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        client.completions.create(model="tiny", prompt="a", temperature=7)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="a")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0).models.list()
