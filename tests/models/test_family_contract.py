"""The family contract (lmlab.models.registry), checked for every registered family.

Parametrized over the registry, so a new family is held to all of this the day it is registered:
a small tiny preset, config round trip, save/load, the output type of its kind, loss at init near
ln V, one batch overfit, a finite gradient for every parameter, layer groups that cover every
parameter once, state stepping equal to recomputation, and causal models blind to the future.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.models.config import config_from_dict, config_to_dict
from lmlab.models.output import OUTPUTS
from lmlab.models.registry import FAMILIES, family_spec
from lmlab.nn.lm_loss import IGNORE_INDEX

FAMILY_NAMES = sorted(FAMILIES)
B, T = 2, 12


def tiny(family: str, **fields):
    torch.manual_seed(0)
    return lmlab.build(family, "tiny", **{"dropout": 0.0, **fields})


def batch(model, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=g)


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Each kind's own language-model loss on `ids`, from the per-token nll the model returns."""
    kind = family_spec(model.family).kind
    if kind == "causal_lm":
        targets = torch.roll(ids, -1, 1)
        targets[:, -1] = IGNORE_INDEX
    elif kind == "masked_lm":  # every third token predicted (the inputs are left as they are)
        targets = torch.full_like(ids, IGNORE_INDEX)
        targets[:, ::3] = ids[:, ::3]
    elif kind == "bilm":  # the forward LM predicts the next token, the backward LM the previous one
        targets, backward = torch.roll(ids, -1, 1), torch.roll(ids, 1, 1)
        targets[:, -1] = backward[:, 0] = IGNORE_INDEX
        out = model(ids, targets=targets, backward_targets=backward)
        return (out.nll.sum() + out.nll_backward.sum()) / (2 * (targets != IGNORE_INDEX).sum())
    else:
        raise NotImplementedError(f"add the language-model loss of kind {kind} to this test")
    out = model(ids, targets=targets)
    loss = out.nll.sum() / (targets != IGNORE_INDEX).sum()
    if kind == "masked_lm":  # the NSP head is part of the network: give it a loss too
        loss = loss + F.cross_entropy(out.nsp_logits, torch.zeros(ids.shape[0], dtype=torch.long))
    return loss


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_tiny_preset_is_small(family):
    assert sum(p.numel() for p in tiny(family).parameters()) <= 100_000


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_config_round_trips_through_plain_values(family):
    config = tiny(family).config
    assert config_from_dict(type(config), config_to_dict(config)) == config


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_save_and_load_give_equal_outputs(family, tmp_path):
    model = tiny(family).eval()
    ids = batch(model)
    lmlab.save(model, None, tmp_path / "m")
    loaded, _ = lmlab.load(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).hidden, model(ids).hidden, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_output_type_and_shapes_follow_the_kind(family):
    model = tiny(family).eval()
    ids = batch(model)
    out = model(ids, output_hidden_states=True)
    assert type(out) is OUTPUTS[family_spec(family).kind]
    assert out.logits.shape == (B, T, model.config.vocab_size)
    assert out.hidden.shape[:2] == (B, T)
    assert torch.equal(out.hidden_states[-1], out.hidden)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_loss_at_init_is_near_ln_vocab(family):
    model = tiny(family).eval()
    with torch.no_grad():
        loss = float(lm_loss(model, batch(model)))
    nsp = math.log(2) if family_spec(family).kind == "masked_lm" else 0.0
    assert abs(loss - nsp - math.log(model.config.vocab_size)) < 0.15 * math.log(model.config.vocab_size)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_one_batch_overfits(family):
    model = tiny(family).train()
    ids = batch(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = lm_loss(model, ids)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first, (first, loss.item())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_parameter_gets_a_finite_gradient(family):
    model = tiny(family).train()
    lm_loss(model, batch(model)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert bool(torch.isfinite(p.grad).all()), name


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_layer_groups_cover_every_parameter_once_bottom_to_top(family):
    model = tiny(family)
    groups = model.layer_groups()
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})
    assert len(groups) >= model.config.n_layers + 1  # at least the embeddings and one group per layer


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if FAMILIES[f].state != "none"])
def test_stepping_with_the_state_equals_recomputation(family):
    # `logits` are the next-token logits of a causal model, and of a biLM's forward LM. A biLM's
    # backward LM reads the tokens after a position, which token-by-token stepping has not seen: its
    # outputs are not compared here (tests/models/test_elmo.py checks how its state carries).
    model = tiny(family).eval()
    ids = batch(model)
    with torch.no_grad():
        full = model(ids).logits
        state = model.init_state(B, T, ids.device)
        steps = []
        for t in range(T):
            out = model(ids[:, t:t + 1], state=state)
            steps.append(out.logits[:, -1])
            state = out.state
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if FAMILIES[f].kind == "causal_lm"])
def test_causal_models_ignore_the_future(family):
    model = tiny(family).eval()
    ids = batch(model)
    changed = ids.clone()
    changed[:, T // 2:] = (changed[:, T // 2:] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :T // 2], b[:, :T // 2], rtol=0, atol=0)
    assert not torch.allclose(a[:, T // 2:], b[:, T // 2:])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_declaration_is_complete(family):
    spec = family_spec(family)
    assert spec.name == family and spec.paper and "tiny" in spec.presets
    model = tiny(family)
    assert model.family == family and model.config.max_seq_len >= 1
    if spec.state != "none":
        assert callable(model.init_state)
