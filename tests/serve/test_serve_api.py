"""The API answers what lmlab computes: completions equal `lmlab generate` (greedy and sampled, alone and
beside 15 other requests), logprobs are the model's, embeddings are `lmlab embed`'s mean-pooled layers,
inspect is `lmlab inspect`'s numbers; every family with a decoding state is served."""

from __future__ import annotations

import io
import json
import threading

import pytest
import torch
from serve_helpers import post, request, served, served_model, stream, wait_until

import lmlab
from lmlab.eval.embed import embed_texts
from lmlab.eval.inspect import inspect_text
from lmlab.generate.cli import generate_command

PROMPT = "the cat"


def lmlab_generate(model_dir, prompt=PROMPT, **options) -> list[str]:
    """`lmlab generate`'s continuations (the command's own function, prompt removed)."""
    texts = generate_command(str(model_dir), prompt, device="cpu", out=io.StringIO(), **options)
    return [t[len(prompt):] for t in texts]


@pytest.fixture(scope="module")
def server(gpt2_chars_dir):
    with served(gpt2_chars_dir) as (url, app):
        yield url, app


def complete(url, **body):
    status, out, _ = post(url + "/v1/completions", {"prompt": PROMPT, **body})
    assert status == 200, out
    return out


def test_models_and_health(server):
    url, _ = server
    status, out, _ = request(url + "/v1/models")
    assert status == 200 and [m["id"] for m in out["data"]] == ["tiny"]
    card = out["data"][0]["lmlab"]
    assert card["kind"] == "causal_lm" and card["state"] == "kv_cache" and card["midi"] is None
    assert card["endpoints"] == ["completions", "inspect", "embeddings"] and card["context"] == 128
    assert request(url + "/v1/models/tiny")[0] == 200
    status, health, _ = request(url + "/healthz")
    assert status == 200 and health["status"] == "ok" and health["rss_bytes"] > 0


def test_greedy_equals_lmlab_generate(server, gpt2_chars_dir):
    url, _ = server
    want = lmlab_generate(gpt2_chars_dir, max_new_tokens=40, do_sample=False)
    out = complete(url, max_tokens=40, temperature=0)
    assert out["choices"][0]["text"] == want[0]
    assert out["usage"]["prompt_tokens"] == len(PROMPT)
    # Streamed: the same text, in several chunks.
    events = stream(url + "/v1/completions", {"prompt": PROMPT, "max_tokens": 40, "temperature": 0,
                                              "stream": True, "stream_options": {"include_usage": True}})
    usage = events[-2]["usage"]
    assert events[-1] == "[DONE]" and usage["completion_tokens"] == out["usage"]["completion_tokens"]
    chunks = [e["choices"][0] for e in events[:-2]]
    assert len(chunks) > 3 and "".join(c["text"] for c in chunks) == want[0]
    assert chunks[-1]["finish_reason"] == out["choices"][0]["finish_reason"]


@pytest.mark.parametrize("options", [dict(temperature=0.8, top_k=5, seed=3),
                                     dict(temperature=1.3, top_p=0.9, seed=11, repetition_penalty=1.4),
                                     dict(temperature=1.0, seed=5, n=3)])
def test_sampling_equals_lmlab_generate(server, gpt2_chars_dir, options):
    url, _ = server
    o = dict(options)
    want = lmlab_generate(gpt2_chars_dir, max_new_tokens=30, do_sample=True, temperature=o["temperature"],
                          top_k=o.get("top_k", 0), top_p=o.get("top_p", 1.0), seed=o["seed"],
                          repetition_penalty=o.get("repetition_penalty", 1.0),
                          num_return_sequences=o.get("n", 1))
    out = complete(url, max_tokens=30, **options)
    assert [c["text"] for c in out["choices"]] == want


def test_stop_strings_end_the_text_before_them(server, gpt2_chars_dir):
    url, _ = server
    free = lmlab_generate(gpt2_chars_dir, max_new_tokens=40, do_sample=False)[0]
    stop = free[10:12]  # a string the greedy continuation is known to reach
    want = lmlab_generate(gpt2_chars_dir, max_new_tokens=40, do_sample=False, stop=[stop])[0]
    out = complete(url, max_tokens=40, temperature=0, stop=[stop, "never-there"])
    choice = out["choices"][0]
    assert choice["text"] == want[:want.index(stop)] and choice["finish_reason"] == "stop"
    events = stream(url + "/v1/completions", {"prompt": PROMPT, "max_tokens": 40, "temperature": 0,
                                              "stop": stop, "stream": True})
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == choice["text"]


def test_logprobs_are_the_models_own(server, gpt2_chars_dir):
    url, _ = server
    out = complete(url, max_tokens=12, temperature=0, logprobs=3)
    lp = out["choices"][0]["logprobs"]
    model, tok = lmlab.load(gpt2_chars_dir)
    ids = tok.encode(PROMPT + out["choices"][0]["text"])
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)  # (N-1, V)
    n = len(PROMPT)
    expected = [float(logp[n - 1 + i, ids[n + i]]) for i in range(len(ids) - n)]
    assert lp["tokens"] == [tok.decode([i]) for i in ids[n:]]
    assert lp["token_logprobs"] == pytest.approx(expected, abs=1e-4)
    assert all(len(top) == 3 and max(top.values()) >= chosen - 1e-6
               for top, chosen in zip(lp["top_logprobs"], lp["token_logprobs"], strict=True))


def test_greedy_equals_lmlab_generate_beside_15_other_requests(server, gpt2_chars_dir):
    """15 streaming requests (sampled, different prompts and lengths) run; the greedy one joins them and
    still gets `lmlab generate`'s text, sharing their decoding steps."""
    url, app = server
    want = lmlab_generate(gpt2_chars_dir, max_new_tokens=40, do_sample=False)[0]
    engine = app.state.served.engine
    sizes, step = [], engine.batch.step

    def recording(feed):
        sizes.append(sum(len(v) for v in feed.values()))
        return step(feed)

    engine.batch.step = recording
    results = [None] * 15

    def other(i):
        results[i] = stream(url + "/v1/completions", {"prompt": "the dog " * (1 + i % 4), "max_tokens": 80,
                                                      "temperature": 1.0, "seed": i, "ignore_eos": True,
                                                      "stream": True})
    threads = [threading.Thread(target=other, args=(i,)) for i in range(15)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: engine.status()["running"] == 15, what="15 running requests")
        out = complete(url, max_tokens=40, temperature=0)
        for t in threads:
            t.join(60)
    finally:
        del engine.batch.step
    assert out["choices"][0]["text"] == want
    assert max(sizes) == 16  # it decoded in the same batch as the 15
    assert all(r[-1] == "[DONE]" and r[-2]["choices"][0]["finish_reason"] == "length" for r in results)
    assert len(sizes) < 15 * 80 / 4  # continuous batching: far fewer forwards than tokens


def test_inspect_is_lmlab_inspect(server, gpt2_chars_dir):
    url, _ = server
    status, out, _ = post(url + "/v1/inspect", {"prompt": "the cat", "text": " sat on the mat"})
    assert status == 200
    model, tok = lmlab.load(gpt2_chars_dir)
    want = inspect_text(model, tok, "the cat sat on the mat")
    assert out["tokens"] == want["tokens"] and out["ids"] == want["ids"] and out["prompt_tokens"] == 7
    for key in ("loss", "entropy"):
        assert out[key][0] is None and out[key][1:] == pytest.approx(want[key][1:], abs=1e-5)
    assert out["rank"] == want["rank"]
    bits = post(url + "/v1/inspect", {"text": "the cat sat", "unit": "bits"})[1]
    assert bits["unit"] == "bits" and bits["mean_loss"] == pytest.approx(
        inspect_text(model, tok, "the cat sat", unit="bits")["mean_loss"], abs=1e-5)


def test_embeddings_are_lmlab_embed_mean_pooled(server, gpt2_chars_dir):
    url, _ = server
    texts = ["the cat sat", "a dog"]
    model, tok = lmlab.load(gpt2_chars_dir)
    for layer in (-1, 0, 1):
        status, out, _ = post(url + "/v1/embeddings", {"input": texts, "layer": layer})
        assert status == 200
        want = embed_texts(model, tok, texts, [layer], pool="mean")[f"layer.{layer % 3}"]
        got = torch.tensor([d["embedding"] for d in out["data"]])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert out["usage"]["prompt_tokens"] == 16 and [d["index"] for d in out["data"]] == [0, 1]
    assert post(url + "/v1/embeddings", {"input": "a", "dimensions": 48})[0] == 200
    status, out, _ = post(url + "/v1/embeddings", {"input": "a", "dimensions": 7})
    assert status == 422 and "dimensions must be 48" in out["error"]["message"]
    status, out, _ = post(url + "/v1/embeddings", {"input": "a", "layer": 3})
    assert status == 422 and "layer must be in [-3, 2]" in out["error"]["message"]


def test_an_encoder_serves_embeddings_only(tiny_model_dir):
    from lmlab.tokenizers.wordpiece import WordPieceTokenizer

    tok = WordPieceTokenizer.train(["the cat sat on the mat", "a dog ran"] * 20, vocab_size=60)
    bert_dir = tiny_model_dir("bert", tok)
    with served(bert_dir) as (url, _):
        card = request(url + "/v1/models")[1]["data"][0]["lmlab"]
        assert card["endpoints"] == ["embeddings"]
        status, out, _ = post(url + "/v1/completions", {"prompt": "the cat"})
        assert status == 400 and "has no completions" in out["error"]["message"]
        status, out, _ = post(url + "/v1/embeddings", {"input": "the cat sat"})
        model, _ = lmlab.load(bert_dir)
        want = embed_texts(model, tok, ["the cat sat"], [-1], pool="mean")["layer.2"][0]
        torch.testing.assert_close(torch.tensor(out["data"][0]["embedding"]), want, rtol=1e-5, atol=1e-5)


def test_transformer_xl_memory_is_served(tiny_model_dir, chars):
    model_dir = tiny_model_dir("transfo-xl", chars)
    with served(model_dir) as (url, _):
        assert request(url + "/v1/models")[1]["data"][0]["lmlab"]["state"] == "memory"
        for options in (dict(temperature=0), dict(temperature=0.9, seed=2)):
            out = complete(url, max_tokens=20, **options)
            t = options["temperature"]
            want = lmlab_generate(model_dir, max_new_tokens=20, do_sample=t > 0, temperature=t or 1, top_k=0,
                                  seed=options.get("seed", 0))
            assert out["choices"][0]["text"] == want[0]


def test_a_recurrent_model_is_served(register_family, chars):
    """Any family with a decoding state: an LSTM LM lmlab does not ship, declared `state="rnn"`."""
    from fakes import LSTMLM, LSTMConfig

    register_family("test-lstm", LSTMLM, config=LSTMConfig, state="rnn")
    torch.manual_seed(0)
    model = LSTMLM(LSTMConfig(vocab_size=chars.vocab_size)).eval()
    model.family = "test-lstm"
    want = lmlab.generate(model, [chars.encode(PROMPT)], max_new_tokens=15, eos_token_id=chars.eos_token_id)
    want_text = chars.decode([t for t in want[0, len(PROMPT):].tolist() if t != chars.eos_token_id])
    with served_model(model, chars) as (url, _):
        out = complete(url, max_tokens=15, temperature=0)
    assert out["choices"][0]["text"] == want_text


def test_chunks_follow_openai_layout(server):
    url, _ = server
    events = stream(url + "/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "stream": True, "n": 2,
                                              "seed": 1})
    for e in events[:-1]:
        assert e["object"] == "text_completion" and e["model"] == "tiny" and e["id"].startswith("cmpl-")
        assert {c["index"] for c in e["choices"]} <= {0, 1}
    finals = [c for e in events[:-1] for c in e["choices"] if c["finish_reason"]]
    assert sorted(c["index"] for c in finals) == [0, 1]
    json.dumps(events[:-1], allow_nan=False)  # strict JSON throughout
