"""The CVT tagger (lmlab.models.cvt): what each view sees (bitwise), the shifted views written out, the
primary module over every layer, padding, several tag sets, the prediction modules on a pretrained
biLM (ELMo's [→h; ←h] layers split per direction), and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.errors import ConfigError, LmlabError
from lmlab.models.cvt import VIEWS, CrossViewHead, view_inputs
from lmlab.models.heads import TaskSpec, build_task_model

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")

B, T, C = 3, 9, 16
LEFT = ("forward", "future")  # the views that read only the words to the left (future: not even w_t)
RIGHT = ("backward", "past")


def tagger(**fields):
    torch.manual_seed(0)
    return lmlab.build("cvt", "tiny", **fields).eval()


def inputs(seed: int = 0, vocab: int = 256):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g), torch.randint(1, 200, (B, T, C), generator=g)


def perturbed(ids, chars, where: slice, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    ids, chars = ids.clone(), chars.clone()
    ids[:, where] = (ids[:, where] + torch.randint(1, 255, ids[:, where].shape, generator=g)) % 256
    chars[:, where] = torch.randint(1, 200, chars[:, where].shape, generator=g)
    return ids, chars


@torch.no_grad()
@pytest.mark.parametrize("t", [0, 4, T - 2])
def test_each_view_sees_only_its_side_bitwise(t):
    model = tagger()
    ids, chars = inputs()
    base = model(ids, chars=chars, views=True)
    # Every word right of t changes: the left views at positions <= t stay bit-identical.
    right = model(*perturbed(ids, chars, slice(t + 1, None)), views=True)
    for name in LEFT:
        assert torch.equal(right.views[name][:, :t + 1], base.views[name][:, :t + 1]), name
    for name in RIGHT:
        assert not torch.equal(right.views[name][:, t], base.views[name][:, t]), name
    assert not torch.equal(right.logits[:, t], base.logits[:, t])  # the primary module sees everything
    # Every word left of t changes: the right views at positions >= t stay bit-identical.
    left = model(*perturbed(ids, chars, slice(0, t)), views=True)
    if t > 0:
        for name in RIGHT:
            assert torch.equal(left.views[name][:, t:], base.views[name][:, t:]), name
        for name in LEFT:
            assert not torch.equal(left.views[name][:, t], base.views[name][:, t]), name
    # future never sees w_t, past never sees it either: word t itself changes, their outputs at t do not.
    own = model(*perturbed(ids, chars, slice(t, t + 1)), views=True)
    for name in ("future", "past"):
        assert torch.equal(own.views[name][:, t], base.views[name][:, t]), name
    for name in ("forward", "backward"):
        assert not torch.equal(own.views[name][:, t], base.views[name][:, t]), name


def test_view_inputs_are_the_first_layer_states_shifted():
    fwd, bwd = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    v = view_inputs(fwd, bwd)
    assert torch.equal(v["forward"], fwd) and torch.equal(v["backward"], bwd)
    for t in range(5):
        assert torch.equal(v["future"][:, t], fwd[:, t - 1] if t > 0 else torch.zeros(2, 3))
        assert torch.equal(v["past"][:, t], bwd[:, t + 1] if t < 4 else torch.zeros(2, 3))


@torch.no_grad()
def test_modules_read_what_section_3_1_says():
    """The primary module reads [→h_1; ←h_1; →h_2; ←h_2], the views the first layer, written out here."""
    model = tagger()
    ids, chars = inputs(1)
    out = model(ids, chars=chars, views=True, output_hidden_states=True)
    x, h1, h2 = out.hidden_states
    d = model.config.d_lstm
    modules = model.tasks[0]

    def nn_(module, h):
        return module.out(F.relu(module.hidden(h)))

    torch.testing.assert_close(out.logits, nn_(modules.primary, torch.cat([h1, h2], -1)), rtol=0, atol=1e-6)
    fwd, bwd = h1[..., :d], h1[..., d:]
    zero = torch.zeros(B, 1, d)
    expected = {"forward": fwd, "backward": bwd, "future": torch.cat([zero, fwd[:, :-1]], 1),
                "past": torch.cat([bwd[:, 1:], zero], 1)}
    for module, name in zip(modules.aux, VIEWS, strict=True):
        torch.testing.assert_close(out.views[name], nn_(module, expected[name]), rtol=0, atol=1e-6)
    assert torch.equal(out.hidden, h2)


@torch.no_grad()
def test_padding_and_other_rows_change_nothing():
    model = tagger()
    ids, chars = inputs(2)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 5:] = 0
    full = model(ids, chars=chars, attention_mask=mask, views=True)
    alone = model(ids[1:2, :5], chars=chars[1:2, :5], views=True)
    torch.testing.assert_close(full.logits[1, :5], alone.logits[0], rtol=1e-5, atol=1e-6)
    # past at the last word reads ←h after the sentence: zeros, as for a row without padding
    torch.testing.assert_close(full.views["past"][1, :5], alone.views["past"][0], rtol=1e-5, atol=1e-6)
    assert torch.equal(full.mask[1], mask[1].bool())
    with pytest.raises(LmlabError, match="right-padded"):
        model(ids, chars=chars, attention_mask=1 - mask)


def test_several_tag_sets_share_the_encoder():
    model = tagger(n_labels=(3, 5))
    ids, chars = inputs(3)
    out = model(ids, chars=chars, task=1, views=True, every_task=True)
    assert out.logits.shape == (B, T, 5) and out.views["past"].shape == (B, T, 5)
    assert [t["primary"].shape[-1] for t in out.tasks] == [3, 5]
    assert torch.equal(out.tasks[1]["primary"], out.logits)
    with pytest.raises(LmlabError, match="task 2 does not exist"):
        model(ids, task=2)


def test_targets_give_per_token_cross_entropy():
    model = tagger()
    ids, chars = inputs(4)
    targets = torch.randint(0, 8, (B, T))
    targets[0, -3:] = -100
    out = model(ids, chars=chars, targets=targets, views=True)
    keep = targets != -100
    by_hand = -out.logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0] * keep
    torch.testing.assert_close(out.nll, by_hand, rtol=1e-6, atol=1e-6)
    assert set(out.view_nll) == set(VIEWS) and bool((out.view_nll["past"][~keep] == 0).all())


def test_bad_inputs_are_one_line_errors():
    model = tagger()
    ids, chars = inputs(5)
    with pytest.raises(LmlabError, match=r"word ids must be in \[0, 256\)"):
        model(ids + 300)
    with pytest.raises(LmlabError, match="chars have shape"):
        model(ids, chars=chars[..., :4])
    with pytest.raises(ConfigError, match="n_labels"):
        lmlab.build("cvt", "tiny", n_labels=())


# ---------------------------------------------------------------- on a pretrained biLM (ELMo)


def elmo_tagger(n_labels: int = 4):
    torch.manual_seed(0)
    elmo = lmlab.build("elmo", "tiny", dropout=0.0)
    with torch.no_grad():  # wider than LSTMP's init, so that the states visibly move
        for p in [*elmo.forward_lm.parameters(), *elmo.backward_lm.parameters()]:
            p.mul_(4)
    extra = {"encoder_kind": "bilm", "encoder_dim": elmo.config.d_model,
             "encoder_layers": elmo.config.n_layers,
             "d_pm": 8, "tasks": [{"name": "main", "labels": [str(i) for i in range(n_labels)]}]}
    spec = TaskSpec("tag", labels=tuple(str(i) for i in range(n_labels)), reader="directions", dropout=0.0,
                    extra=extra)
    return build_task_model(elmo, spec).eval()


@torch.no_grad()
def test_views_on_elmo_split_its_layers_per_direction():
    model = elmo_tagger()
    chars = model.backbone.word_chars[inputs(6)[0]].long()  # (B, T, C) characters of random words
    batch = {"score_mask": torch.ones(B, T, dtype=torch.long), "views": True}
    base = model(chars, **batch)
    t = 4
    right = chars.clone()
    right[:, t + 1:] = model.backbone.word_chars[(inputs(7)[0][:, t + 1:])].long()
    changed = model(right, **batch)
    for name in LEFT:
        assert torch.equal(changed.views[name][:, :t + 1], base.views[name][:, :t + 1]), name
    for name in RIGHT:
        assert not torch.equal(changed.views[name][:, t], base.views[name][:, t]), name
    left = chars.clone()
    left[:, :t] = model.backbone.word_chars[(inputs(8)[0][:, :t])].long()
    changed = model(left, **batch)
    for name in RIGHT:
        assert torch.equal(changed.views[name][:, t:], base.views[name][:, t:]), name
    # the views read the top layer's halves, the primary module every layer
    states = model.backbone(chars, output_hidden_states=True, with_logits=False).hidden_states
    d = model.backbone.config.d_model
    head = model.head.tasks[0]
    top = states[-1]
    def nn_(module, h):
        return module.out(F.relu(module.hidden(h)))

    torch.testing.assert_close(base.views["backward"], nn_(head.aux[1], top[..., d:]), rtol=0, atol=1e-6)
    torch.testing.assert_close(base.logits, nn_(head.primary, torch.cat(states[1:], -1)), rtol=0, atol=1e-6)


def test_the_head_reads_only_per_direction_kinds():
    spec = TaskSpec("tag", labels=("a",), reader="directions",
                    extra={"encoder_kind": "causal_lm", "tasks": [{"name": "main", "labels": ["a"]}]})
    with pytest.raises(ConfigError, match="bilm or a tagger"):
        CrossViewHead(spec)
    with pytest.raises(ConfigError, match="task spec extra"):
        CrossViewHead(TaskSpec("tag", labels=("a",), reader="directions", extra={}))
