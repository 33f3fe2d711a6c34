"""The released CoVe MT-LSTM (salesforce/cove, `wmtlstm-*.pth`) -> lmlab's `cove` (encoder only).

The file is the state dict of `torch.nn.LSTM(300, 300, num_layers=2, bidirectional=True)`, read with
`torch.load(weights_only=True)` (tensors only, never code). Two layouts are accepted:

- stacked, as released: `{weight_ih, weight_hh, bias_ih, bias_hh}_l{k}` and the same with `_reverse`
  (the backward direction), layer k = 0, 1 (optionally under a common prefix `rnn.`, the attribute
  of the release's MTLSTM module);
- split, the release's module with its layers apart (salesforce/cove MTLSTM(layer0=True,
  layer1=True)): two one-layer LSTMs `rnn0.*_l0[_reverse]` (300 -> 300) and `rnn1.*_l0[_reverse]`
  (600 -> 300).

Shapes (H units, D inputs; layer k > 0 reads 2H): weight_ih (4H, D or 2H), weight_hh (4H, H),
bias_ih and bias_hh (4H,). Each is checked by name and shape before anything is built; a missing,
unexpected or mis-shaped tensor is a one-line ConversionError naming it.

Map: layer k's forward direction -> `encoder.layers.{k}.fwd`, backward -> `.bwd`: weight_ih and
weight_hh as they are (torch's gate order i, f, g, o is LSTMP's), bias = bias_ih + bias_hh.

The file holds no decoder and no word vectors: the model has vocab_size 0 (features only), reads
its input as word vectors given directly or as rows of a one-row table (the zero vector), and has
no tokenizer. Its input are 300-d GloVe 840B vectors (`word_vectors` names them); a task model
gives it the task's words' vectors (lmlab finetune --features --word-vectors glove.840B.300d.txt).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lmlab.checkpoints.convert.common import build, copy_into, tensor_dict, torch_file
from lmlab.checkpoints.sizes import check_finite
from lmlab.errors import ConversionError

KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
RELEASED_VECTORS = "glove.840B.300d.txt"


def read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch state dict of tensors only (weights_only=True), checked to be finite."""
    state = tensor_dict(torch_file(path), path, "a state dict of tensors (the MT-LSTM's nn.LSTM)")
    check_finite(state, str(path), ConversionError)
    return state


def layer_names(state: dict, where: str) -> list[dict[str, str]]:
    """Per layer, {lmlab name suffix: file name}: "fwd.weight_ih" -> "weight_ih_l0", ...; the layout
    is told apart by its names (module docstring)."""
    names = set(state)
    split = any(n.startswith(("rnn0.", "rnn1.")) for n in names)
    prefix = "rnn." if not split and names and all(n.startswith("rnn.") for n in names) else ""
    if split:
        count = 1 + max((int(m.group(1)) for n in names if (m := re.match(r"rnn(\d+)\.", n))), default=0)
        name = lambda kind, k, rev: f"rnn{k}.{kind}_l0{rev}"  # noqa: E731
    else:
        count = 1 + max((int(m.group(1)) for n in names if (m := re.search(r"_l(\d+)(_reverse)?$", n))),
                        default=0)
        name = lambda kind, k, rev: f"{prefix}{kind}_l{k}{rev}"  # noqa: E731
    layers = [{f"{d}.{kind}": name(kind, k, rev) for d, rev in (("fwd", ""), ("bwd", "_reverse"))
               for kind in KINDS} for k in range(count)]
    wanted = {n for layer in layers for n in layer.values()}
    missing, unexpected = sorted(wanted - names), sorted(names - wanted)
    if missing:
        raise ConversionError(f"{where}: missing tensor(s) {', '.join(missing[:4])} of the MT-LSTM "
                              f"(a 2-layer bidirectional torch.nn.LSTM state dict)")
    if unexpected:
        raise ConversionError(f"{where}: unexpected tensor(s) {', '.join(unexpected[:4])}; expected only the "
                              f"MT-LSTM's LSTM weights")
    return layers


def check_shapes(state: dict, layers: list[dict[str, str]], where: str) -> tuple[int, int]:
    """(D inputs, H units), every tensor's shape checked against them."""
    w_ih, w_hh = state[layers[0]["fwd.weight_ih"]], state[layers[0]["fwd.weight_hh"]]
    if w_hh.dim() != 2 or w_hh.shape[0] != 4 * w_hh.shape[1] or w_ih.dim() != 2:
        raise ConversionError(f"{where}: tensor {layers[0]['fwd.weight_hh']} has shape {tuple(w_hh.shape)}; "
                              f"expected (4H, H)")
    H, D = w_hh.shape[1], w_ih.shape[1]
    for k, layer in enumerate(layers):
        expect = {"weight_ih": (4 * H, D if k == 0 else 2 * H), "weight_hh": (4 * H, H),
                  "bias_ih": (4 * H,), "bias_hh": (4 * H,)}
        for ours, theirs in layer.items():
            shape = expect[ours.split(".")[1]]
            if tuple(state[theirs].shape) != shape:
                raise ConversionError(f"{where}: tensor {theirs} has shape {tuple(state[theirs].shape)}; "
                                      f"expected {shape} (D={D} inputs, H={H} units)")
    return D, H


def cove_from_mtlstm(path: str | Path):
    """(model, None): the released MT-LSTM as an encoder-only lmlab CoVe model."""
    path = Path(path)
    where = str(path)
    state = read_pth(path)
    layers = layer_names(state, where)
    D, H = check_shapes(state, layers, where)
    fields = dict(vocab_size=0, source_vocab_size=1, d_input=D, d_model=H, n_layers=len(layers), d_embed=H,
                  dropout=0.0, word_vectors=RELEASED_VECTORS if D == 300 else None)
    model = build("cove", fields, where)
    converted = {}
    for k, layer in enumerate(layers):
        for d in ("fwd", "bwd"):
            base = f"encoder.layers.{k}.{d}."
            converted[base + "weight_ih"] = state[layer[f"{d}.weight_ih"]]
            converted[base + "weight_hh"] = state[layer[f"{d}.weight_hh"]]
            converted[base + "bias"] = state[layer[f"{d}.bias_ih"]] + state[layer[f"{d}.bias_hh"]]
    copy_into(model.state_dict(), converted, where)
    with torch.no_grad():
        model.source_vectors.zero_()
    return model, None
