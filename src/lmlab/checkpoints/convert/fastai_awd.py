"""fastai AWD-LSTM language models <-> lmlab `ulmfit` models (Howard & Ruder 2018's released code).

The layout is fastai's `SequentialRNN(AWD_LSTM, LinearDecoder)` state dict, the layout of the
published WT-103 model (`lstm_fwd.pth` + `itos_wt103.pkl`), optionally wrapped as {"model": ...,
"opt": ...} by `learn.save`:

    0.encoder.weight (V, D)             -> embed.weight          (0.encoder_dp.emb.weight: the same table)
    0.rnns.{i}.weight_hh_l0_raw         -> layers.{i}.weight_hh   (the raw matrix WeightDropout keeps)
    0.rnns.{i}.module.weight_ih_l0      -> layers.{i}.weight_ih
    0.rnns.{i}.module.bias_ih_l0 / bias_hh_l0 -> layers.{i}.bias_ih / bias_hh
    1.decoder.weight (V, D)             -> tied to embed.weight (must be equal)
    1.decoder.bias (V,)                 -> decoder_bias (zeros when the model had out_bias=False)

fastai v1 files also hold `0.rnns.{i}.module.weight_hh_l0`, the last dropped-out copy of the raw
matrix: it is ignored when the raw one is there (as fastai v2's `clean_raw_keys` does), used
otherwise. The sizes come from the tensors: d_model = D, n_layers = the number of rnns, d_hidden =
the first layer's width. Dropout probabilities are not stored in the file: the model gets fastai's
language-model defaults (lmlab.models.ulmfit.ULMFiTConfig).

The vocabulary is a text file (one token per line, line i = id i) or fastai's pickled token list,
read by an unpickler that admits a list of strings and nothing else (no class is ever looked up, so
a pickle naming any code is refused). Weights are read with `torch.load(weights_only=True)`.
Vocabulary entries the words tokenizer cannot hold (empty, or with whitespace, e.g. spaCy's "\\n")
become unused placeholders `xxunused{i}`: text split at whitespace never produces them.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import torch

from lmlab.checkpoints.atomic import write_bytes_atomic
from lmlab.checkpoints.convert.common import copy_into, same_values, tensor_dict, torch_file
from lmlab.checkpoints.files import checked_path
from lmlab.checkpoints.sizes import check_finite
from lmlab.errors import ConversionError
from lmlab.models.registry import build_from_config
from lmlab.paths import check_outputs
from lmlab.tokenizers.fastai_words import FastaiWordTokenizer

VOCAB_CAP = 64 << 20
WEIGHTS, VOCAB = "lm.pth", "itos.pkl"  # the names `to_fastai` writes
_RNN = re.compile(r"0\.rnns\.(\d+)\.")
# (lmlab's name, fastai's) for the per-layer tensors other than W_hh
NAMES = (("weight_ih", "weight_ih_l0"), ("bias_ih", "bias_ih_l0"), ("bias_hh", "bias_hh_l0"))


class _ListOfStrings(pickle.Unpickler):
    """Builds lists, strings and numbers only: any class or function in the pickle is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def read_vocab(path: str | Path) -> list[str]:
    """Tokens by id from a text file (one per line) or a pickled list of strings."""
    path = Path(path)
    try:
        data = checked_path(path, ConversionError).read_bytes()
    except FileNotFoundError:
        raise ConversionError(f"{path}: vocabulary file not found") from None
    if len(data) > VOCAB_CAP:
        raise ConversionError(f"{path}: {len(data):,} bytes, more than a vocabulary file may hold "
                              f"({VOCAB_CAP:,})")
    if data[:1] == b"\x80":  # a pickle (protocol 2 and later start with PROTO)
        try:
            tokens = _ListOfStrings(io.BytesIO(data)).load()
        except Exception as e:  # UnpicklingError, EOFError, ...: never anything the file asked for
            raise ConversionError(f"{path}: not a pickled list of strings ({e}); expected fastai's "
                                  f"itos.pkl or a text file with one token per line") from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ConversionError(f"{path}: the pickle holds a {type(tokens).__name__}, not a list of "
                                  f"strings")
        return tokens
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path}: neither a pickle nor UTF-8 text (byte {e.start})") from None
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    state = torch_file(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # learn.save(..., with_opt=True)
    tensor_dict(state, path, "a state dict of tensors (or {'model': state dict})")
    check_finite(state, str(path), ConversionError)
    return state


def _need(state: dict, name: str, where: str) -> torch.Tensor:
    if name not in state:
        raise ConversionError(f"{where}: missing tensor {name}; not a fastai AWD-LSTM language model")
    return state[name]


def ulmfit_from_fastai(weights: str | Path, vocab: str | Path):
    """(ulmfit model, fastai_words tokenizer) from a fastai AWD-LSTM LM state dict and its vocabulary."""
    where = str(weights)
    state = read_weights(weights)
    embed = _need(state, "0.encoder.weight", where)
    n_layers = 1 + max((int(m.group(1)) for k in state if (m := _RNN.match(k))), default=-1)
    if embed.dim() != 2 or n_layers < 1:
        raise ConversionError(f"{where}: no 0.encoder.weight (V, D) or no 0.rnns.*: not an AWD-LSTM LM")
    V, D = embed.shape
    tokens = read_vocab(vocab)
    if len(tokens) != V:
        raise ConversionError(f"{vocab}: the vocabulary has {len(tokens):,} tokens but the weights' "
                              f"embedding ({where}: 0.encoder.weight) has {V:,} rows; they belong to "
                              f"different models")
    own = {"embed.weight": embed}
    for name in ("0.encoder_dp.emb.weight", "1.decoder.weight"):
        if name in state and not (state[name].shape == embed.shape and same_values(state[name], embed)):
            raise ConversionError(f"{where}: {name} differs from 0.encoder.weight; only tied AWD-LSTM "
                                  f"language models convert")
    own["decoder_bias"] = state.get("1.decoder.bias", embed.new_zeros(V))
    for i in range(n_layers):
        p = f"0.rnns.{i}."
        hh = state.get(p + "weight_hh_l0_raw", state.get(p + "module.weight_hh_l0"))
        if hh is None:
            raise ConversionError(f"{where}: missing tensor {p}weight_hh_l0_raw")
        own[f"layers.{i}.weight_hh"] = hh
        for ours, theirs in NAMES:
            own[f"layers.{i}.{ours}"] = _need(state, p + "module." + theirs, where)
    d_hidden = own["layers.0.weight_hh"].shape[1] if n_layers > 1 else D
    model = _build({"vocab_size": V, "d_model": D, "d_hidden": d_hidden, "n_layers": n_layers}, where)
    mine = model.state_dict()
    for name, tensor in own.items():
        if tuple(tensor.shape) != tuple(mine[name].shape):
            raise ConversionError(f"{where}: the tensor for {name} has shape {tuple(tensor.shape)}; an "
                                  f"AWD-LSTM with d_model={D}, d_hidden={d_hidden}, {n_layers} layers needs "
                                  f"{tuple(mine[name].shape)}")
    copy_into(mine, own, where)
    return model.eval(), FastaiWordTokenizer(_usable(tokens), source=str(vocab))


def _build(fields: dict, where: str):
    try:
        return build_from_config("ulmfit", fields, where=where)
    except Exception as e:
        raise ConversionError(f"{where}: {e}") from None


def _usable(tokens: list[str]) -> list[str]:
    out, seen = [], set(tokens)
    for i, t in enumerate(tokens):
        if not t or len(t.split()) != 1 or t.strip() != t:
            t = f"xxunused{i}"
            while t in seen:
                t += "_"
        out.append(t)
    return out


def fastai_state(model) -> dict[str, torch.Tensor]:
    """The model's weights named as fastai's SequentialRNN(AWD_LSTM, LinearDecoder) names them."""
    s = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    out = {"0.encoder.weight": s["embed.weight"], "0.encoder_dp.emb.weight": s["embed.weight"].clone()}
    for i in range(model.config.n_layers):
        out[f"0.rnns.{i}.weight_hh_l0_raw"] = s[f"layers.{i}.weight_hh"]
        for ours, theirs in NAMES:
            out[f"0.rnns.{i}.module.{theirs}"] = s[f"layers.{i}.{ours}"]
    out["1.decoder.weight"] = s["embed.weight"].clone()
    out["1.decoder.bias"] = s["decoder_bias"]
    return out


def ulmfit_to_fastai(model, tokenizer, out_dir: str | Path) -> Path:
    """Write `lm.pth` (fastai's state dict layout, torch.save) and `itos.pkl` (the token list) into
    `out_dir`: `learn.load_pretrained(lm.pth, itos.pkl)` reads them, and so does ulmfit_from_fastai."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    check_outputs(out, (WEIGHTS, VOCAB))  # regular files or nothing yet, before anything is written
    buffer = io.BytesIO()
    torch.save(fastai_state(model), buffer)
    write_bytes_atomic(out / WEIGHTS, buffer.getvalue())
    if tokenizer is not None:
        tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
        # fastai's filler words for rows no token uses
        tokens += [f"xxfake{i}" for i in range(len(tokens), model.config.vocab_size)]
        write_bytes_atomic(out / VOCAB, pickle.dumps(tokens, protocol=2))
    return out
