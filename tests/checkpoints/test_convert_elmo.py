"""The released ELMo layout (bilm-tf options.json + weights HDF5) -> lmlab, against an independent NumPy
forward pass of the original equations.

The oracle below is written from bilm-tf's conventions (character ids with the +1 shift, the char
CNN with max-pool then relu, highway layers whose "carry" sigmoid gates the relu branch, TF's
LSTMCell with gate blocks (i, j, f, o), forget bias 1.0 added at run time, cell and projection
clipping, residuals from the second layer on, the backward LM fed the reversed sentence, states
carried from batch to batch), not from lmlab's code: it shares nothing with lmlab but NumPy.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import lmlab
from lmlab.checkpoints.convert.bilm_tf import key_map
from lmlab.checkpoints.convert.cli import convert_command
from lmlab.errors import ConversionError
from lmlab.eval.embed import EmbeddingState

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")

FILTERS = [[1, 4], [2, 6], [3, 6]]  # F = 16 != P: a projection
E, P, H, LAYERS, HIGHWAY, C = 4, 8, 12, 2, 2, 12
CELL_CLIP, PROJ_CLIP = 1.0, 0.6
OPTIONS = {"lstm": {"dim": H, "projection_dim": P, "n_layers": LAYERS, "cell_clip": CELL_CLIP,
                    "proj_clip": PROJ_CLIP, "use_skip_connections": True},
           "char_cnn": {"activation": "relu", "filters": FILTERS, "n_highway": HIGHWAY,
                        "embedding": {"dim": E}, "n_characters": 262, "max_characters_per_token": C}}
BATCHES = [["the cat sat", "a über-long-wordwithmanybytes é .", "x"],
           ["dogs run fast today", "é", "the cat sat"]]  # the second batch continues the first's rows
CELL = "RNN_{d}/RNN/MultiRNNCell/Cell{k}/LSTMCell/"


def released_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors with the names and shapes bilm-tf's dump_weights writes (no softmax)."""
    rng = np.random.default_rng(seed)
    F = sum(n for _, n in FILTERS)
    w = {"char_embed": rng.normal(0, 1, (261, E))}
    for i, (width, n) in enumerate(FILTERS):
        w[f"CNN/W_cnn_{i}"] = rng.normal(0, 0.5, (1, width, E, n))
        w[f"CNN/b_cnn_{i}"] = rng.normal(0, 0.1, (n,))
    for k in range(HIGHWAY):
        for name in ("carry", "transform"):
            w[f"CNN_high_{k}/W_{name}"] = rng.normal(0, 0.3, (F, F))
            w[f"CNN_high_{k}/b_{name}"] = rng.normal(0, 0.5, (F,))
    w["CNN_proj/W_proj"], w["CNN_proj/b_proj"] = rng.normal(0, 0.3, (F, P)), rng.normal(0, 0.1, (P,))
    for d in range(2):
        for k in range(LAYERS):
            cell = CELL.format(d=d, k=k)
            w[cell + "W_0"] = rng.normal(0, 0.6, (P + P, 4 * H))
            w[cell + "B"] = rng.normal(0, 0.5, (4 * H,))
            w[cell + "W_P_0"] = rng.normal(0, 0.6, (H, P))
    return {k: v.astype(np.float32) for k, v in w.items()}


def write_release(directory, weights=None, options=None):
    options_path, weights_path = directory / "options.json", directory / "weights.hdf5"
    options_path.write_text(json.dumps(options or OPTIONS))
    with h5py.File(weights_path, "w") as f:
        for name, value in (weights or released_weights()).items():
            f.create_dataset(name, data=value)
    return options_path, weights_path


# ---------------------------------------------------------------- the oracle (NumPy, float64)


def oracle_char_ids(word: str) -> list[int]:
    if word in ("<S>", "</S>"):
        ids = [258, 256 if word == "<S>" else 257, 259]
    else:
        ids = [258, *word.encode("utf-8")[:C - 2], 259]
    return [i + 1 for i in ids + [260] * (C - len(ids))]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def oracle_tokens(words: list[str], w) -> np.ndarray:
    """(n, P): char embedding, convolutions + max-pool + relu, highway, projection."""
    table = np.concatenate([np.zeros((1, E)), w["char_embed"]])
    e = table[np.array([oracle_char_ids(t) for t in words])]  # (n, C, E)
    pooled = []
    for i, (width, _) in enumerate(FILTERS):
        kernel = w[f"CNN/W_cnn_{i}"][0]  # (width, E, n)
        conv = np.stack([np.einsum("tke,ken->tn", e[:, p:p + width], kernel)
                         for p in range(C - width + 1)], 1)  # (n, positions, filters)
        pooled.append(np.maximum(conv.max(1) + w[f"CNN/b_cnn_{i}"], 0.0))
    x = np.concatenate(pooled, -1)
    for k in range(HIGHWAY):
        carry = sigmoid(x @ w[f"CNN_high_{k}/W_carry"] + w[f"CNN_high_{k}/b_carry"])
        x = carry * np.maximum(x @ w[f"CNN_high_{k}/W_transform"] + w[f"CNN_high_{k}/b_transform"], 0) \
            + (1 - carry) * x
    return x @ w["CNN_proj/W_proj"] + w["CNN_proj/b_proj"]


def oracle_direction(xs: np.ndarray, d: int, state, w, clips: list):
    """One direction over xs (n, P) in reading order; state [(m, c)] per layer; outputs per layer."""
    outputs, new_state = [], []
    for k in range(LAYERS):
        cell = CELL.format(d=d, k=k)
        m, c = state[k]
        ys = []
        for x in xs:
            i, j, f, o = np.split(np.concatenate([x, m]) @ w[cell + "W_0"] + w[cell + "B"], 4)
            c = sigmoid(f + 1.0) * c + sigmoid(i) * np.tanh(j)
            clips[0] += int((np.abs(c) > CELL_CLIP).sum())
            c = np.clip(c, -CELL_CLIP, CELL_CLIP)
            m = (sigmoid(o) * np.tanh(c)) @ w[cell + "W_P_0"]
            clips[1] += int((np.abs(m) > PROJ_CLIP).sum())
            m = np.clip(m, -PROJ_CLIP, PROJ_CLIP)
            ys.append(m)
        ys = np.stack(ys)
        if k > 0:  # ResidualWrapper on every layer but the first
            ys = ys + xs
        outputs.append(ys)
        new_state.append((m, c))
        xs = ys
    return outputs, new_state


def zero_state():
    return [[(np.zeros(P), np.zeros(H)) for _ in range(LAYERS)] for _ in range(2)]


def oracle_sentence(sentence: str, w, state, clips):
    """(LAYERS + 1, n, 2P) lm_embeddings of one sentence and the states it leaves."""
    tokens = ["<S>", *sentence.split(), "</S>"]
    x = oracle_tokens(tokens, w)
    fwd, s_fwd = oracle_direction(x, 0, state[0], w, clips)
    bwd, s_bwd = oracle_direction(x[::-1], 1, state[1], w, clips)  # the sentence reversed
    layers = [np.concatenate([x, x], -1)]
    layers += [np.concatenate([f, b[::-1]], -1) for f, b in zip(fwd, bwd, strict=True)]
    return np.stack(layers)[:, 1:-1], [s_fwd, s_bwd]


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("elmo-release"))


def test_converted_weights_give_the_numpy_forward_pass_stateless_and_stateful(release):
    model, tokenizer = lmlab.from_original("elmo", *release)
    w = {k: v.astype(np.float64) for k, v in released_weights().items()}
    clips, worst = [0, 0], {}
    for mode in ("stateless", "stateful"):
        carry = EmbeddingState() if mode == "stateful" else False
        rows = [zero_state() for _ in BATCHES[0]]
        diffs = []
        for batch in BATCHES:
            got = lmlab.embed(model, tokenizer, batch, stateful=carry)
            for r, sentence in enumerate(batch):
                want, state = oracle_sentence(sentence, w, rows[r] if carry else zero_state(), clips)
                rows[r] = state
                assert got[r].shape == want.shape == (LAYERS + 1, len(sentence.split()), 2 * P)
                diffs.append(np.abs(got[r].double().numpy() - want).max())
        worst[mode] = max(diffs)
    assert clips[0] > 0 and clips[1] > 0  # both clips bind somewhere: the check covers them
    assert worst["stateless"] < 1e-5 and worst["stateful"] < 1e-5, worst
    # The second batch's rows read the first batch's states: the modes must differ there.
    a = lmlab.embed(model, tokenizer, BATCHES[1])
    carry = EmbeddingState()
    lmlab.embed(model, tokenizer, BATCHES[0], stateful=carry)
    b = lmlab.embed(model, tokenizer, BATCHES[1], stateful=carry)
    assert (a[0] - b[0]).abs().max() > 1e-3


def test_every_parameter_comes_from_a_dataset(release):
    model, tokenizer = lmlab.from_original("elmo", *release)
    assert set(key_map(model)) == {name for name, _ in model.named_parameters()}
    assert model.config.vocab_size == 0 and tokenizer.vocab_size == 0  # the file has no softmax
    with pytest.raises(lmlab.errors.LmlabError, match="no softmax"):
        model(torch.from_numpy(tokenizer.char_ids(["a"]))[None], targets=torch.zeros(1, 3, dtype=torch.long))


def test_convert_command_writes_a_model_dir_that_loads_with_the_same_features(release, tmp_path, capsys):
    assert convert_command(None, None, str(tmp_path / "m"), from_elmo=[str(p) for p in release]) == 0
    assert "elmo" in capsys.readouterr().out
    model, tokenizer = lmlab.load(tmp_path / "m")
    direct, direct_tok = lmlab.from_original("elmo", *release)
    for a, b in zip(lmlab.embed(model, tokenizer, BATCHES[0]), lmlab.embed(direct, direct_tok, BATCHES[0]),
                    strict=True):
        assert torch.equal(a, b)


def one_line(e) -> str:
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("path, field", [(("lstm", "projection_dim"), "lstm.projection_dim"),
                                         (("lstm", "use_skip_connections"), "lstm.use_skip_connections"),
                                         (("char_cnn", "embedding", "dim"), "char_cnn.embedding.dim"),
                                         (("char_cnn", "filters"), "char_cnn.filters")])
def test_an_options_file_missing_a_field_is_one_line_naming_it(tmp_path, path, field):
    options = json.loads(json.dumps(OPTIONS))
    node = options
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    files = write_release(tmp_path, options=options)
    with pytest.raises(ConversionError) as e:
        lmlab.from_original("elmo", *files)
    assert one_line(e) == f"{files[0]}: field {field} is missing"


def test_bad_option_values_are_one_line(tmp_path):
    for change, words in ((("lstm", "dim", "4096"), "field lstm.dim must be int"),
                          (("char_cnn", "n_characters", 300), "n_characters must be 261"),
                          (("lstm", "projection_dim", 99), "projection_dim 99 > lstm.dim"),
                          (("char_cnn", "activation", "gelu"), "char_activation must be one of")):
        options = json.loads(json.dumps(OPTIONS))
        options[change[0]][change[1]] = change[2]
        with pytest.raises(ConversionError) as e:
            lmlab.from_original("elmo", *write_release(tmp_path, options=options))
        assert words in one_line(e)


@pytest.mark.parametrize("name, shape", [(CELL.format(d=1, k=0) + "W_0", (2 * P + 1, 4 * H)),
                                         ("CNN/W_cnn_2", (1, 3, E, 7)), ("char_embed", (262, E))])
def test_a_dataset_of_the_wrong_shape_is_one_line_naming_it(tmp_path, name, shape):
    weights = released_weights()
    weights[name] = np.zeros(shape, np.float32)
    options, path = write_release(tmp_path, weights=weights)
    with pytest.raises(ConversionError) as e:
        lmlab.from_original("elmo", options, path)
    want = tuple(released_weights()[name].shape)
    assert one_line(e) == f"{path}: dataset {name} has shape {shape}; options.json asks for {want}"


def test_missing_unexpected_broken_and_foreign_files_are_one_line(tmp_path):
    weights = released_weights()
    del weights["CNN_high_1/b_carry"]
    with pytest.raises(ConversionError) as e:
        lmlab.from_original("elmo", *write_release(tmp_path, weights=weights))
    assert "missing tensor(s) CNN_high_1/b_carry" in one_line(e)
    weights = {**released_weights(), "softmax/W": np.zeros((3, P), np.float32)}
    with pytest.raises(ConversionError) as e:
        lmlab.from_original("elmo", *write_release(tmp_path, weights=weights))
    assert "unexpected tensor(s) softmax/W" in one_line(e)
    weights = released_weights()
    weights["CNN_proj/W_proj"][3, 2] = np.nan
    with pytest.raises(ConversionError) as e:
        lmlab.from_original("elmo", *write_release(tmp_path, weights=weights))
    assert "CNN_proj/W_proj holds NaN" in one_line(e)
    options, path = write_release(tmp_path)
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(ConversionError) as e:
        lmlab.from_original("elmo", options, path)
    assert one_line(e).startswith(f"{path}: not a readable HDF5 file")
    with pytest.raises(ConversionError) as e:
        lmlab.from_original("elmo", options)
    assert "takes 2 files" in one_line(e)
    with pytest.raises(ConversionError) as e:
        lmlab.from_original("ulmfit-nope", options, path)
    assert "no original release reader" in one_line(e)
