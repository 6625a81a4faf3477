"""GLUE metrics over a whole dev set, computed by scikit-learn and scipy.

Every metric is ``metric(preds, labels) -> float`` on 1-D arrays (multi-label accuracy: 2-D, exact
match). Task kinds (``pal_adapters.tasks``) choose which of them apply and build their inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn import metrics as skm

from pal_adapters.config import check_choice

Metric = Callable[[Any, Any], float]


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16; float32 holds every half-precision value exactly.
        x = (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def accuracy(preds: Any, labels: Any) -> float:
    """Fraction of exact matches (multi-label: all labels of an example must match)."""
    return float(skm.accuracy_score(_to_numpy(labels), _to_numpy(preds)))


def f1(preds: Any, labels: Any) -> float:
    """Binary F1 with class 1 as the positive class (MRPC, QQP)."""
    return float(skm.f1_score(_to_numpy(labels), _to_numpy(preds), pos_label=1, average="binary"))


def matthews_corrcoef(preds: Any, labels: Any) -> float:
    """Matthews correlation coefficient (CoLA)."""
    return float(skm.matthews_corrcoef(_to_numpy(labels), _to_numpy(preds)))


def pearson(preds: Any, labels: Any) -> float:
    """Pearson correlation (STS-B); NaN when either side is constant."""
    return float(stats.pearsonr(_to_numpy(preds).astype(np.float64), _to_numpy(labels).astype(np.float64))[0])


def spearman(preds: Any, labels: Any) -> float:
    """Spearman rank correlation (STS-B); NaN when either side is constant."""
    return float(stats.spearmanr(_to_numpy(preds), _to_numpy(labels))[0])


METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}

# The metrics reported for each GLUE task (as in GLUE and the PALs paper).
GLUE_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


def metrics_for_task(task: str) -> tuple[str, ...]:
    """Default metric names of a GLUE task (``"sst2"``, ``"stsb"``, ...)."""
    check_choice("GLUE task", task, tuple(GLUE_TASK_METRICS))
    return GLUE_TASK_METRICS[task]


def compute_metrics(names: Iterable[str], preds: Any, labels: Any) -> dict[str, float]:
    """``{name: value}`` for each metric name over ``preds`` and ``labels`` of equal length."""
    names = list(names)
    if not names:
        raise ValueError(f"no metric names given; valid metrics: {sorted(METRICS)}")
    for name in names:
        check_choice("metric", name, tuple(METRICS))
    preds, labels = _to_numpy(preds), _to_numpy(labels)
    if preds.shape[:1] != labels.shape[:1] or len(labels) == 0:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} must be non-empty and "
                         "of equal length")
    return {name: METRICS[name](preds, labels) for name in names}
