from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pal_adapters.config import TaskConfig
from pal_adapters.tasks import kind_of
from pal_adapters.training.metrics import (
    GLUE_TASK_METRICS,
    METRICS,
    compute_metrics,
    metrics_for_task,
)

PREDS = [1, 1, 0, 1, 0, 0, 1, 0]
LABELS = [1, 0, 0, 1, 1, 0, 1, 1]


def confusion(preds: list[int], labels: list[int]) -> tuple[int, int, int, int]:
    tp = sum(p == 1 and y == 1 for p, y in zip(preds, labels, strict=True))
    tn = sum(p == 0 and y == 0 for p, y in zip(preds, labels, strict=True))
    fp = sum(p == 1 and y == 0 for p, y in zip(preds, labels, strict=True))
    fn = sum(p == 0 and y == 1 for p, y in zip(preds, labels, strict=True))
    return tp, tn, fp, fn


def test_accuracy_counts_matches() -> None:
    assert METRICS["accuracy"]([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(3 / 4)


def test_f1_uses_class_one_as_positive() -> None:
    tp, _, fp, fn = confusion(PREDS, LABELS)
    assert METRICS["f1"](PREDS, LABELS) == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_mcc_matches_textbook_formula() -> None:
    tp, tn, fp, fn = confusion(PREDS, LABELS)
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert METRICS["mcc"](PREDS, LABELS) == pytest.approx(expected)


def test_pearson_of_linear_data_is_one_and_matches_formula() -> None:
    x = [0.5, 1.0, 2.0, 3.5, 4.0]
    assert METRICS["pearson"]([3 * v + 2 for v in x], x) == pytest.approx(1.0)
    assert METRICS["pearson"]([-2 * v for v in x], x) == pytest.approx(-1.0)
    y = [1.0, 0.5, 2.5, 3.0, 5.0]
    mx, my = sum(x) / 5, sum(y) / 5
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    expected = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert METRICS["pearson"](x, y) == pytest.approx(expected)


def test_spearman_of_monotone_nonlinear_data_is_one() -> None:
    x = [0.1, 0.7, 1.5, 2.0, 4.0]
    preds = [math.exp(v) for v in x]
    assert METRICS["spearman"](preds, x) == pytest.approx(1.0)
    assert METRICS["pearson"](preds, x) < 0.99  # not linear: only the rank correlation is perfect


def test_spearman_matches_rank_difference_formula() -> None:
    preds = [0.3, 2.0, 1.1, 5.0, 4.2, 0.9]
    labels = [1.0, 3.0, 0.5, 4.0, 6.0, 2.0]

    def ranks(v: list[float]) -> list[int]:
        return [sorted(v).index(a) for a in v]  # no ties, so ranks are positions in sorted order

    n = len(preds)
    d2 = sum((a - b) ** 2 for a, b in zip(ranks(preds), ranks(labels), strict=True))
    assert METRICS["spearman"](preds, labels) == pytest.approx(1 - 6 * d2 / (n * (n**2 - 1)))


def test_compute_metrics_for_glue_tasks() -> None:
    result = compute_metrics(metrics_for_task("mrpc"), np.array(PREDS), torch.tensor(LABELS))
    tp, tn, fp, fn = confusion(PREDS, LABELS)
    assert result == pytest.approx({"f1": 2 * tp / (2 * tp + fp + fn), "accuracy": (tp + tn) / len(PREDS)})
    assert metrics_for_task("cola") == ("mcc",)
    assert set(metrics_for_task("stsb")) == {"pearson", "spearman"}
    for task in ("sst2", "rte", "qnli", "wnli"):
        assert GLUE_TASK_METRICS[task] == ("accuracy",)


def test_unknown_names_and_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="metric='bleu'.*'accuracy'.*'spearman'"):
        compute_metrics(["accuracy", "bleu"], PREDS, LABELS)
    with pytest.raises(ValueError, match="GLUE task='squad'.*'sst2'"):
        metrics_for_task("squad")
    with pytest.raises(ValueError, match="equal length"):
        compute_metrics(["accuracy"], [1, 0], [1, 0, 1])


def test_kinds_turn_batch_outputs_into_predictions() -> None:
    """What evaluation does per task: batch_outputs per batch, finish over all of them."""
    classes = kind_of(TaskConfig(num_labels=3))
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    out = classes.batch_outputs(logits, {"labels": torch.tensor([1, 2])})
    preds, refs = classes.finish([out, out])
    assert preds.tolist() == [1, 0, 1, 0] and refs.tolist() == [1, 2, 1, 2]
    regression = kind_of(TaskConfig(type="regression"))
    scores = torch.tensor([1.5, 4.25], dtype=torch.bfloat16)
    preds, refs = regression.finish([regression.batch_outputs(scores, {"labels": torch.tensor([1.0, 2.0])})])
    assert preds.tolist() == [1.5, 4.25] and refs.tolist() == [1.0, 2.0]
    multi = kind_of(TaskConfig(type="multi_label", num_labels=3))
    logits = torch.tensor([[0.3, -0.2, 0.0], [-1.0, 2.0, 1e-3]])
    preds, _ = multi.finish([multi.batch_outputs(logits, {"labels": torch.ones(2, 3)})])
    assert preds.tolist() == (torch.sigmoid(logits) > 0.5).long().tolist()
    with pytest.raises(ValueError, match="no 'labels'"):
        classes.batch_outputs(logits, {"input_ids": torch.zeros(2, 3)})
