"""GLUE's metric choices per task, and ``compute_metrics`` over a whole dev set.

The formulas themselves (scikit-learn / scipy, imported lazily) belong to the task kinds and live in
``pal_adapters/tasks/metrics.py``; they are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..tasks.metrics import METRICS, Metric, accuracy, f1, matthews_corrcoef, pearson, spearman
from ..tasks.metrics import to_numpy as _to_numpy
from ..validation import check_choice

__all__ = ["GLUE_TASK_METRICS", "METRICS", "Metric", "accuracy", "compute_metrics", "f1", "matthews_corrcoef",
           "metrics_for_task", "pearson", "spearman"]

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
