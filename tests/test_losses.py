from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pal_adapters.config import TaskConfig
from pal_adapters.tasks import kind_of
from pal_adapters.training.losses import LossWeighting, mixed_loss, soft_targets

CLASSES = kind_of(TaskConfig(num_labels=3))
REGRESSION = kind_of(TaskConfig(type="regression"))

LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
SOFT = [[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]]


def hand_log_softmax(row: list[float]) -> list[float]:
    log_z = math.log(sum(math.exp(z) for z in row))
    return [z - log_z for z in row]


def hand_soft_ce(logits: list[list[float]], targets: list[list[float]]) -> float:
    per_example = [-sum(q * lp for q, lp in zip(t, hand_log_softmax(z), strict=True))
                   for z, t in zip(logits, targets, strict=True)]
    return sum(per_example) / len(per_example)


def test_uncertainty_weighting_matches_hand_computation() -> None:
    weighting = LossWeighting(["a", "b"], mode="uncertainty")
    with torch.no_grad():
        weighting.log_variances["a"].fill_(0.5)
        weighting.log_variances["b"].fill_(-1.0)
    total = weighting({"a": torch.tensor(2.0), "b": torch.tensor(0.3)})
    expected = math.exp(-0.5) * 2.0 + 0.5 + math.exp(1.0) * 0.3 - 1.0
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert weighting.task_weights() == pytest.approx({"a": math.exp(-0.5), "b": math.exp(1.0)})


def test_uncertainty_weighting_starts_as_plain_sum() -> None:
    weighting = LossWeighting(["a", "b"], mode="uncertainty")
    total = weighting({"a": torch.tensor(2.0), "b": torch.tensor(0.3)})
    assert total.item() == pytest.approx(2.3)


def test_uncertainty_gradients_reach_log_variances() -> None:
    weighting = LossWeighting(["a", "b"], mode="uncertainty")
    with torch.no_grad():
        weighting.log_variances["a"].fill_(0.5)
    loss_a = torch.tensor(2.0, requires_grad=True)
    weighting({"a": loss_a}).backward()
    # d/ds [exp(-s)·L + s] = 1 - exp(-s)·L ; d/dL = exp(-s)
    assert weighting.log_variances["a"].grad.item() == pytest.approx(1 - math.exp(-0.5) * 2.0, rel=1e-6)
    assert loss_a.grad.item() == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert weighting.log_variances["b"].grad is None  # task b did not take part in this step


def test_no_decay_names_cover_exactly_the_log_variances_inside_a_parent() -> None:
    parent = nn.Module()
    parent.encoder = nn.Linear(2, 2)
    parent.loss_weighting = LossWeighting(["a", "b"], mode="uncertainty")
    names = parent.loss_weighting.no_decay_parameter_names(prefix="loss_weighting.")
    all_names = {n for n, _ in parent.named_parameters()}
    assert set(names) <= all_names
    assert set(names) == {"loss_weighting.log_variances.a", "loss_weighting.log_variances.b"}
    assert LossWeighting(["a"], mode="sum").no_decay_parameter_names() == []


def test_fixed_weights_and_sum() -> None:
    losses = {"a": torch.tensor(1.5), "b": torch.tensor(4.0)}
    fixed = LossWeighting(["a", "b"], mode="fixed", weights={"a": 0.25, "b": 2.0})
    assert fixed(losses).item() == pytest.approx(0.25 * 1.5 + 2.0 * 4.0)
    assert LossWeighting(["a", "b"])(losses).item() == pytest.approx(5.5)
    assert LossWeighting(["a", "b"])({"b": losses["b"]}).item() == pytest.approx(4.0)
    assert list(fixed.parameters()) == []


def test_weighting_rejects_bad_tasks_and_weights() -> None:
    with pytest.raises(ValueError, match=r"unknown tasks \['c'\].*valid tasks"):
        LossWeighting(["a", "b"], mode="fixed", weights={"a": 1.0, "b": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match=r"lacks tasks \['b'\]"):
        LossWeighting(["a", "b"], mode="fixed", weights={"a": 1.0})
    with pytest.raises(ValueError, match=r"weights\['a'\]=-1"):
        LossWeighting(["a"], mode="fixed", weights={"a": -1.0})
    with pytest.raises(ValueError, match="mode='mean'.*'uncertainty'"):
        LossWeighting(["a"], mode="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown tasks \['z'\]"):
        LossWeighting(["a"])({"z": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="expected a scalar"):
        LossWeighting(["a"])({"a": torch.ones(3)})


def test_soft_targets_are_the_mean_of_teachers() -> None:
    teachers = [[[0.2, 0.8], [0.6, 0.4]], [[0.4, 0.6], [0.9, 0.1]], [[0.3, 0.7], [0.3, 0.7]]]
    expected = [[sum(t[i][c] for t in teachers) / 3 for c in range(2)] for i in range(2)]
    result = soft_targets([torch.tensor(t) for t in teachers])
    assert result.tolist() == pytest.approx([pytest.approx(row) for row in expected])
    with pytest.raises(ValueError, match="different shapes"):
        soft_targets([torch.zeros(2, 2), torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="empty"):
        soft_targets([])


def test_distillation_loss_matches_hand_cross_entropy() -> None:
    loss = CLASSES.distillation_loss(torch.tensor(LOGITS), torch.tensor(SOFT))
    assert loss.item() == pytest.approx(hand_soft_ce(LOGITS, SOFT), rel=1e-6)


def test_distillation_gradient_is_softmax_minus_targets() -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    CLASSES.distillation_loss(logits, torch.tensor(SOFT)).backward()
    for row, target, grad in zip(LOGITS, SOFT, logits.grad.tolist(), strict=True):
        probs = [math.exp(lp) for lp in hand_log_softmax(row)]
        expected = [(p - q) / len(LOGITS) for p, q in zip(probs, target, strict=True)]
        assert grad == pytest.approx(expected, abs=1e-6)


def test_regression_distillation_is_mse_to_teacher_mean() -> None:
    student = torch.tensor([[1.0], [2.5], [4.0]])
    teachers = [torch.tensor([[1.5], [2.0], [3.0]]), torch.tensor([[0.5], [3.0], [4.0]])]
    mean = [(1.5 + 0.5) / 2, (2.0 + 3.0) / 2, (3.0 + 4.0) / 2]
    expected = sum((s - m) ** 2 for s, m in zip([1.0, 2.5, 4.0], mean, strict=True)) / 3
    loss = REGRESSION.distillation_loss(student, soft_targets(teachers))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_mixed_loss_interpolates_between_distillation_and_the_heads_gold_loss() -> None:
    logits, targets, labels = torch.tensor(LOGITS), torch.tensor(SOFT), torch.tensor([1, 0])
    kd_hand = hand_soft_ce(LOGITS, SOFT)
    ce_hand = -sum(hand_log_softmax(row)[y] for row, y in zip(LOGITS, [1, 0], strict=True)) / 2
    kd, gold = CLASSES.distillation_loss(logits, targets), CLASSES.loss(logits, labels)
    assert mixed_loss(kd, None, alpha=1.0).item() == pytest.approx(kd_hand, rel=1e-6)
    assert mixed_loss(kd, gold, alpha=0.0).item() == pytest.approx(ce_hand, rel=1e-6)
    assert mixed_loss(kd, gold, alpha=0.3).item() == pytest.approx(0.3 * kd_hand + 0.7 * ce_hand, rel=1e-6)
    with pytest.raises(ValueError, match="alpha=1.5"):
        mixed_loss(kd, gold, alpha=1.5)
    with pytest.raises(ValueError, match="needs labels"):
        mixed_loss(kd, None, alpha=0.5)


def test_distillation_rejects_mismatched_shapes_and_kinds() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 2\)"):
        CLASSES.distillation_loss(torch.zeros(2, 3), torch.zeros(2, 2))
    ranking = kind_of(TaskConfig(type="ranking", num_candidates=2))
    with pytest.raises(ValueError, match="'ranking' cannot be distilled.*classification.*regression"):
        ranking.distillation_loss(torch.zeros(2), torch.zeros(2))
