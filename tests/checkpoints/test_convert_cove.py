"""The released CoVe MT-LSTM (salesforce/cove's wmtlstm .pth: the state dict of a 2-layer bidirectional
torch.nn.LSTM, or its split form of two 1-layer LSTMs) -> lmlab's cove encoder. The files here are
written by the test with random values in the released layout; the oracle is torch.nn.LSTM itself,
run on packed sequences with the same weights."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lmlab
from lmlab.checkpoints.convert.cli import convert_command
from lmlab.errors import ConversionError

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")

D, H = 6, 5  # the release: 300 -> 300
LENGTHS = [4, 1, 3]


def released(seed: int = 0) -> torch.nn.LSTM:
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(D, H, num_layers=2, bidirectional=True, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():  # wider than the default init, so that a mistake shows
            p.uniform_(-0.8, 0.8)
    return lstm.eval()


def split_form(lstm: torch.nn.LSTM) -> dict[str, torch.Tensor]:
    """The release's MTLSTM(layer0=True, layer1=True): rnn0 (D -> H) and rnn1 (2H -> H), one layer each."""
    state = {}
    for k in range(2):
        for name, t in lstm.state_dict().items():
            if name.endswith((f"_l{k}", f"_l{k}_reverse")):
                state[f"rnn{k}." + name.replace(f"_l{k}", "_l0")] = t.clone()
    return state


def reference(lstm, x):
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        y, _ = lstm(packed)
    return pad_packed_sequence(y, batch_first=True)[0]  # (B, S, 2H)


def inputs():
    x = torch.randn(len(LENGTHS), max(LENGTHS), D, generator=torch.Generator().manual_seed(3))
    mask = (torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    return x * mask[..., None], mask


@pytest.mark.parametrize("form", ["stacked", "stacked under rnn.", "split"])
def test_released_file_loads_and_equals_torch_lstm_on_packed_sequences(tmp_path, form):
    lstm = released()
    state = {"stacked": lstm.state_dict(), "split": split_form(lstm),
             "stacked under rnn.": {f"rnn.{k}": v for k, v in lstm.state_dict().items()}}[form]
    torch.save(dict(state), tmp_path / "wmtlstm.pth")
    model, tokenizer = lmlab.from_original("cove", tmp_path / "wmtlstm.pth")
    assert tokenizer is None and model.decoder is None
    assert (model.config.d_input, model.config.d_model, model.config.n_layers) == (D, H, 2)
    x, mask = inputs()
    with torch.no_grad():
        ours = model.eval()(x, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(ours.hidden, reference(lstm, x), rtol=1e-5, atol=1e-6)
    # Layer 1 on its own: a one-layer bidirectional LSTM with the first layer's weights.
    first = torch.nn.LSTM(D, H, bidirectional=True, batch_first=True)
    first.load_state_dict({k: v for k, v in lstm.state_dict().items() if "_l0" in k})
    torch.testing.assert_close(ours.hidden_states[0], reference(first, x), rtol=1e-5, atol=1e-6)


def test_convert_from_cove_writes_a_model_dir_that_loads_equal(tmp_path, capsys):
    lstm = released(1)
    torch.save(lstm.state_dict(), tmp_path / "wmtlstm.pth")
    assert convert_command(None, None, str(tmp_path / "out"), from_cove=str(tmp_path / "wmtlstm.pth")) == 0
    assert "cove" in capsys.readouterr().out
    model, _ = lmlab.load(tmp_path / "out")
    x, mask = inputs()
    with torch.no_grad():
        hidden = model(x, attention_mask=mask).hidden
    torch.testing.assert_close(hidden, reference(lstm, x), rtol=1e-5, atol=1e-6)


def broken(state: dict, how: str) -> dict:
    state = dict(state)
    if how == "missing":
        del state["weight_hh_l1_reverse"]
    elif how == "mis-shaped":
        state["bias_ih_l1"] = torch.zeros(4 * H + 1)
    elif how == "unexpected":
        state["decoder.weight"] = torch.zeros(2, 2)
    return state


@pytest.mark.parametrize("how, message", [("missing", "missing tensor.*weight_hh_l1_reverse"),
                                          ("mis-shaped", r"bias_ih_l1 has shape \(21,\); expected \(20,\)"),
                                          ("unexpected", "unexpected tensor.*decoder.weight")])
def test_a_bad_released_file_is_one_line_naming_the_key(tmp_path, how, message):
    torch.save(broken(released().state_dict(), how), tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match=message) as e:
        lmlab.from_original("cove", tmp_path / "bad.pth")
    assert "\n" not in str(e.value) and "bad.pth" in str(e.value)


def test_a_file_with_more_than_tensors_is_refused_unread(tmp_path):
    torch.save({"weight_ih_l0": torch.zeros(1), "note": object()}, tmp_path / "code.pth")
    with pytest.raises(ConversionError, match="more than tensors|readable"):
        lmlab.from_original("cove", tmp_path / "code.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(ConversionError, match="junk.pth"):
        lmlab.from_original("cove", tmp_path / "junk.pth")
