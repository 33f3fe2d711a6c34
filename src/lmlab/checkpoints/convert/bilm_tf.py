"""The released ELMo weights (allenai/bilm-tf: `options.json` + `weights.hdf5`, as dumped by
`bilm.dump_weights`) -> lmlab's `elmo`.

options.json (inference fields; the training fields next to them are ignored):

    lstm:     dim (H), projection_dim (D), use_skip_connections (required); n_layers (default 1),
              cell_clip, proj_clip (default none)
    char_cnn: filters [[width, number] ...], activation (relu | tanh), embedding.dim (E),
              n_characters (262 at inference, 261 in training), max_characters_per_token (C);
              n_highway (default 0)

HDF5 datasets (F = Σ number), each checked by name and shape before any value is read:

    char_embed (261, E)                              -> token_encoder.embed.weight (262, E): a zero row
                                                        first (id 0 = padding token), then char_embed
    CNN/W_cnn_{i} (1, w, E, n), CNN/b_cnn_{i} (n,)   -> token_encoder.convs.{i}: W[0] transposed to (n, E, w)
    CNN_high_{k}/W_carry, b_carry (F, F), (F,)       -> token_encoder.highway.layers.{k}.gate (W.T): bilm-tf's
                                                        "carry" sigmoid gates the relu branch
    CNN_high_{k}/W_transform, b_transform            -> ...layers.{k}.nonlinear (W.T)
    CNN_proj/W_proj (F, D), b_proj (D,)  (F != D)    -> token_encoder.proj (W.T)
    RNN_{d}/RNN/MultiRNNCell/Cell{k}/LSTMCell/       d = 0 forward_lm, 1 backward_lm; layer k:
        W_0 (D + D, 4H)                              -> weight_ih = W[:D].T, weight_hh = W[D:].T
        B (4H,)                                      -> bias
        W_P_0 (H, D)  (D < H)                        -> weight_hr = W.T
    (gate blocks along 4H: TF (i, j, f, o) -> lmlab (i, f, g, o); the forget bias 1.0 stays a run-time
    addition, config forget_bias = 1.0, as TF computes it)

The file holds no softmax (`dump_weights` skips it): the model has vocab_size 0 and the tokenizer no
word vocabulary; both give features (`lmlab.embed`). The conventions are written up, with the
check against TensorFlow's outputs, in the model file and docs/elmo.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lmlab.checkpoints.convert.common import build_loaded, check_names, copy_into
from lmlab.checkpoints.files import JSON_CAP, checked_path, read_json
from lmlab.checkpoints.sizes import check_finite
from lmlab.errors import ConversionError
from lmlab.nn.char_ids import N_CHARS
from lmlab.tokenizers.word_chars import WordCharTokenizer

CELL = "RNN_{d}/RNN/MultiRNNCell/Cell{k}/LSTMCell/"


def read_options(path: Path) -> dict:
    """lmlab config fields of an options.json; one-line ConversionErrors naming the field."""
    try:
        options = read_json(path, JSON_CAP, ConversionError)
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing") from None
    if not isinstance(options, dict):
        raise ConversionError(f"{path}: expected a JSON object with 'lstm' and 'char_cnn'")
    field = _Fields(options, path)
    filters = field.get("char_cnn.filters", list)
    if not filters or not all(isinstance(f, list) and len(f) == 2 and all(type(v) is int and v > 0 for v in f)
                              for f in filters):
        raise ConversionError(f"{path}: field char_cnn.filters must be a list of [width, number] pairs of "
                              f"positive integers, got {filters!r}")
    n_chars = field.get("char_cnn.n_characters", int)
    if n_chars not in (N_CHARS - 1, N_CHARS):
        raise ConversionError(f"{path}: field char_cnn.n_characters must be 261 (training) or 262 "
                              f"(inference), got {n_chars}")
    d_lstm, d_model = field.get("lstm.dim", int), field.get("lstm.projection_dim", int)
    if d_model > d_lstm:
        raise ConversionError(f"{path}: lstm.projection_dim {d_model} > lstm.dim {d_lstm} is not supported "
                              f"(the LSTM output would be narrower than the token representation)")
    clips = {name: field.get(f"lstm.{name}", (int, float), None) for name in ("cell_clip", "proj_clip")}
    return dict(vocab_size=0, d_model=d_model, d_lstm=d_lstm, n_layers=field.get("lstm.n_layers", int, 1),
                char_dim=field.get("char_cnn.embedding.dim", int), char_filters=[list(f) for f in filters],
                n_highway=field.get("char_cnn.n_highway", int, 0),
                char_activation=field.get("char_cnn.activation", str),
                max_chars=field.get("char_cnn.max_characters_per_token", int),
                cell_clip=clips["cell_clip"], proj_clip=clips["proj_clip"] if d_model < d_lstm else None,
                residual=field.get("lstm.use_skip_connections", bool), forget_bias=1.0,
                dropout=field.get("dropout", (int, float), 0.0))


class _Fields:
    """Dotted-path access to options.json with type checks and one-line errors."""

    def __init__(self, options: dict, path: Path):
        self.options, self.path = options, path

    def get(self, dotted: str, kind, default=...):
        node = self.options
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is not ...:
                    return default
                raise ConversionError(f"{self.path}: field {dotted} is missing")
            node = node[part]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if node is None and default is None:
            return None
        if not isinstance(node, kinds) or (bool not in kinds and isinstance(node, bool)):
            names = " or ".join(k.__name__ for k in kinds)
            raise ConversionError(f"{self.path}: field {dotted} must be {names}, "
                                  f"got {node!r}")
        if kinds != (str,) and kinds != (bool,) and kinds != (list,) and not node >= 0:
            raise ConversionError(f"{self.path}: field {dotted} must not be negative, got {node!r}")
        return node


def key_map(model) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """lmlab tensor name -> (HDF5 dataset, how its array becomes the lmlab tensor)."""
    c, enc = model.config, model.token_encoder
    out = {"token_encoder.embed.weight": ("char_embed", lambda a: np.concatenate([np.zeros_like(a[:1]), a]))}
    for i in range(len(enc.convs)):
        out[f"token_encoder.convs.{i}.weight"] = (f"CNN/W_cnn_{i}", lambda a: a[0].transpose(2, 1, 0))
        out[f"token_encoder.convs.{i}.bias"] = (f"CNN/b_cnn_{i}", _same)
    for k in range(c.n_highway):
        for ours, theirs in (("gate", "carry"), ("nonlinear", "transform")):
            out[f"token_encoder.highway.layers.{k}.{ours}.weight"] = (f"CNN_high_{k}/W_{theirs}", _t)
            out[f"token_encoder.highway.layers.{k}.{ours}.bias"] = (f"CNN_high_{k}/b_{theirs}", _same)
    if enc.proj is not None:
        out["token_encoder.proj.weight"] = ("CNN_proj/W_proj", _t)
        out["token_encoder.proj.bias"] = ("CNN_proj/b_proj", _same)
    for d, stack in enumerate(("forward_lm", "backward_lm")):
        for k, layer in enumerate(getattr(model, stack).layers):
            cell, D = CELL.format(d=d, k=k), layer.input_size
            out[f"{stack}.layers.{k}.weight_ih"] = (cell + "W_0", lambda a, D=D: _gates(a[:D].T))
            out[f"{stack}.layers.{k}.weight_hh"] = (cell + "W_0", lambda a, D=D: _gates(a[D:].T))
            out[f"{stack}.layers.{k}.bias"] = (cell + "B", _gates)
            if layer.weight_hr is not None:
                out[f"{stack}.layers.{k}.weight_hr"] = (cell + "W_P_0", _t)
    return out


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _t(a: np.ndarray) -> np.ndarray:
    return a.T


def _gates(a: np.ndarray) -> np.ndarray:
    """TF's gate blocks (i, j, f, o) along dim 0 -> lmlab's (i, f, g, o)."""
    i, j, f, o = np.split(a, 4, axis=0)
    return np.concatenate([i, f, j, o], axis=0)


class HDF5Weights:
    """read_weights(meta) for common.build_loaded: the datasets' shapes as meta tensors, or their values
    (read once, checked finite). The file is open only while it is read."""

    def __init__(self, path: Path):
        try:
            self.real = checked_path(path, ConversionError)
        except FileNotFoundError:
            raise ConversionError(f"{path}: missing") from None
        self.path, self.values = path, None
        self.shapes = self._read(lambda name, ds: tuple(ds.shape))

    def _read(self, take) -> dict:
        """{name: take(name, dataset)} over every dataset of the file."""
        import h5py

        out = {}
        try:
            with h5py.File(self.real, "r") as f:
                f.visititems(lambda name, item: out.__setitem__(name, take(name, item))
                             if isinstance(item, h5py.Dataset) else None)
        except OSError as e:
            raise ConversionError(f"{self.path}: not a readable HDF5 file ({e})") from None
        return out

    def _value(self, name: str, ds) -> torch.Tensor:
        if ds.dtype.kind != "f":
            raise ConversionError(f"{self.path}: dataset {name} has dtype {ds.dtype}, expected "
                                  f"floating point")
        return torch.from_numpy(np.asarray(ds[...], dtype=np.float32))

    def __call__(self, meta: bool = False) -> dict[str, torch.Tensor]:
        if meta:
            return {name: torch.empty(shape, device="meta") for name, shape in self.shapes.items()}
        if self.values is None:
            values = self._read(self._value)
            check_finite(values, str(self.path), ConversionError)
            self.values = values
        return self.values


def dataset_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every dataset the released layout holds for `config`, with its shape."""
    c = config
    E, D, H, F = c.char_dim, c.d_model, c.d_lstm, sum(n for _, n in c.char_filters)
    shapes = {"char_embed": (N_CHARS - 1, E)}
    for i, (w, n) in enumerate(c.char_filters):
        shapes |= {f"CNN/W_cnn_{i}": (1, w, E, n), f"CNN/b_cnn_{i}": (n,)}
    for k in range(c.n_highway):
        for name in ("carry", "transform"):
            shapes |= {f"CNN_high_{k}/W_{name}": (F, F), f"CNN_high_{k}/b_{name}": (F,)}
    if F != D:
        shapes |= {"CNN_proj/W_proj": (F, D), "CNN_proj/b_proj": (D,)}
    for d in range(2):
        for k in range(c.n_layers):
            cell = CELL.format(d=d, k=k)
            shapes |= {cell + "W_0": (D + D, 4 * H), cell + "B": (4 * H,)}  # input D, recurrent D
            if D < H:
                shapes[cell + "W_P_0"] = (H, D)
    return shapes


def load_into(model, weights: dict[str, torch.Tensor], where: str, options: str) -> None:
    """Check every dataset's name and shape against what the options ask for, then (on the real
    pass) copy the converted values into `model`."""
    want = dataset_shapes(model.config)
    check_names(weights, set(want), where)
    for name, shape in want.items():
        if tuple(weights[name].shape) != shape:
            raise ConversionError(f"{where}: dataset {name} has shape {tuple(weights[name].shape)}; "
                                  f"{options} asks for {shape}")
    if any(t.is_meta for t in weights.values()):
        return
    converted = {name: torch.from_numpy(np.ascontiguousarray(convert(weights[source].numpy())))
                 for name, (source, convert) in key_map(model).items()}
    copy_into(model.state_dict(), converted, where)


def elmo_from_bilm_tf(options_json: str | Path, weights_hdf5: str | Path):
    """(model, tokenizer) of the released layout: options.json + the weights HDF5."""
    options_path, weights_path = Path(options_json), Path(weights_hdf5)
    fields = read_options(options_path)
    weights = HDF5Weights(weights_path)
    where = str(weights_path)
    model = build_loaded("elmo", fields, str(options_path), weights,
                         lambda m, state: load_into(m, state, where, options_path.name))
    model.family = "elmo"
    return model.eval(), WordCharTokenizer([], max_chars=fields["max_chars"])

