"""Cross-view training's losses and weight average (lmlab.objectives.cvt), checked by hand: the labeled
loss, the KL of every view to the teacher, a teacher without dropout and without gradient (the
primary module learns nothing from unlabeled text), and the moving average's formula step by step."""

from __future__ import annotations

import math

import pytest
import torch

import lmlab
from lmlab.errors import ConfigError
from lmlab.models.cvt import VIEWS
from lmlab.models.heads import TaskSpec, build_task_model
from lmlab.objectives.cvt import (
    CrossViewObjective,
    WeightAverage,
    consistency_loss,
    labeled_loss,
    teacher_probs,
)

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")

B, T, C = 3, 7, 16


def task_model(dropout: float = 0.5, n_labels=(8,)):
    """A tiny CVT tagger as lmlab.tasks.cross_view wraps it (reader `directions`)."""
    torch.manual_seed(0)
    tagger = lmlab.build("cvt", "tiny", dropout=dropout, n_labels=n_labels)
    tasks = [{"name": f"t{k}", "labels": [str(i) for i in range(n)]} for k, n in enumerate(n_labels)]
    spec = TaskSpec("tag", labels=tuple(tasks[0]["labels"]), reader="directions",
                    extra={"encoder_kind": "tagger", "tasks": tasks})
    return build_task_model(tagger, spec).train()


def batch(labeled: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[2, 4:] = 0
    out = {"input_ids": torch.randint(0, 256, (B, T), generator=g) * mask, "attention_mask": mask,
           "chars": torch.randint(1, 200, (B, T, C), generator=g) * mask[..., None], "score_mask": mask,
           "task": torch.zeros(B, dtype=torch.long)}
    if labeled:
        out["labels"] = torch.randint(0, 8, (B, T), generator=g).masked_fill(mask == 0, -100)
    return out


def test_labeled_loss_is_primary_plus_weighted_views():
    logits = {name: torch.randn(B, T, 5) for name in ("primary", *VIEWS)}
    labels = torch.randint(0, 5, (B, T))
    labels[0, :3] = -100
    out = type("Out", (), {"logits": logits["primary"], "views": {v: logits[v] for v in VIEWS}})

    def ce(x):  # the mean negative log-probability of each labelled word, written out
        keep = labels != -100
        logp = x.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        return -(logp * keep).sum() / keep.sum()

    expected = ce(logits["primary"]) + 0.3 * sum(ce(logits[v]) for v in VIEWS)
    torch.testing.assert_close(labeled_loss(out, labels, 0.3), expected)
    torch.testing.assert_close(labeled_loss(out, labels, 0.0), ce(logits["primary"]))


def test_consistency_is_the_kl_of_each_view_to_the_teacher_over_the_words():
    g = torch.Generator().manual_seed(1)
    teacher = [torch.randn(B, T, 4, generator=g).softmax(-1), torch.randn(B, T, 6, generator=g).softmax(-1)]
    student = [{"primary": torch.randn(B, T, 4), **{v: torch.randn(B, T, 4, generator=g) for v in VIEWS}},
               {v: torch.randn(B, T, 6, generator=g) for v in VIEWS}]
    mask = torch.rand(B, T, generator=g) > 0.3
    total = 0.0
    for p, views in zip(teacher, student, strict=True):
        for v in VIEWS:
            q = views[v].softmax(-1)
            kl = (p * (p.log() - q.log())).sum(-1)  # KL(p || q) per position
            total += float(kl[mask].sum()) / int(mask.sum())
    assert math.isclose(float(consistency_loss(teacher, student, mask)), total, rel_tol=1e-5)
    same = [{v: t.log() for v in VIEWS} for t in teacher]
    assert float(consistency_loss(teacher, same, mask)) == pytest.approx(0.0, abs=1e-6)


def test_the_teacher_runs_without_dropout_and_the_mode_comes_back():
    model = task_model(dropout=0.5)
    b = batch(False)
    first, second = teacher_probs(model, b), teacher_probs(model, b)
    assert model.training and torch.equal(first[0], second[0])  # no dropout: the same twice
    with torch.no_grad():
        inference = model.eval()(**b).logits.softmax(-1)
    model.train()
    torch.testing.assert_close(first[0], inference, rtol=0, atol=0)
    assert not first[0].requires_grad


def test_the_unlabeled_loss_uses_the_inference_teacher_and_a_dropout_student():
    model = task_model(dropout=0.5)
    b = batch(False, seed=2)
    objective = CrossViewObjective(model)
    torch.manual_seed(5)
    loss = objective(model, b)
    # by hand: the teacher in eval mode (it draws no random numbers), then the student in train mode
    torch.manual_seed(5)
    teacher = teacher_probs(model, b)
    student = model(**b, views=True, every_task=True)
    torch.testing.assert_close(loss, consistency_loss(teacher, student.tasks, student.mask), rtol=0, atol=0)
    # a teacher with dropout would give another loss
    torch.manual_seed(5)
    with torch.no_grad():
        noisy = [model(**b, every_task=True).tasks[0]["primary"].softmax(-1)]
    student = model(**b, views=True, every_task=True)
    assert not torch.equal(loss, consistency_loss(noisy, student.tasks, student.mask))


def test_the_primary_module_gets_no_gradient_from_unlabeled_text():
    model = task_model(dropout=0.1, n_labels=(8, 5))
    objective = CrossViewObjective(model)
    objective(model, batch(False, seed=3)).backward()
    tagger = model.backbone
    for modules in tagger.tasks:
        assert all(p.grad is None for p in modules.primary.parameters())
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in modules.aux.parameters())
    # the shared encoder learns from the views (its first layer and the token representation)
    assert float(tagger.forward_layers[0].layers[0].weight_ih.grad.abs().sum()) > 0
    assert float(tagger.words.weight.grad.abs().sum()) > 0
    model.zero_grad(set_to_none=True)
    objective(model, batch(True, seed=3)).backward()  # a labeled batch trains the primary module
    assert float(tagger.tasks[0].primary.out.weight.grad.abs().sum()) > 0


def test_the_weight_average_follows_its_formula():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    average = WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for k in range(25):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update(model)
        d = min(0.9, (1 + k) / (10 + k))  # TensorFlow's ExponentialMovingAverage with a step count
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters(), strict=True)]
    for got, want in zip(average.averaged(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert int(average.updates) == 25
    live = [p.detach().clone() for p in model.parameters()]
    with average.applied(model):
        assert all(torch.equal(p, e) for p, e in zip(model.parameters(), average.averaged(), strict=True))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), live, strict=True))
    average.catch_up(model, 25)  # nothing pending: nothing changes
    assert int(average.updates) == 25
    with pytest.raises(ConfigError, match="ema-decay"):
        WeightAverage(model, decay=1.0)


def test_set_step_and_finish_step_apply_each_update_once():
    model = task_model(dropout=0.0)
    objective = CrossViewObjective(model, ema_decay=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        objective.set_step(step)
        objective(model, batch(step % 2 == 0, seed=step)).backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 1:
            objective.finish_step()  # an evaluation after step 1
    objective.finish_step()
    assert int(objective.module.updates) == 3
    objective.set_step(3)  # the loop's next step finds the update done
    assert int(objective.module.updates) == 3
