"""Metric formulas the task kinds score with, over a whole dev set.

Every metric is ``metric(preds, labels) -> float`` on 1-D arrays (multi-label accuracy: 2-D, exact
match). scikit-learn and scipy compute them; they are imported when a metric is first computed, not
when ``pal_adapters`` is imported, so a forward (and ``predict``) never loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Metric = Callable[[Any, Any], float]


def to_numpy(x: Any) -> np.ndarray:
    """A tensor or array-like as a numpy array; half-precision tensors become float32 (numpy has no
    bfloat16, and float32 holds every half-precision value exactly)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def accuracy(preds: Any, labels: Any) -> float:
    """Fraction of exact matches (multi-label: all labels of an example must match)."""
    from sklearn import metrics as skm

    return float(skm.accuracy_score(to_numpy(labels), to_numpy(preds)))


def f1(preds: Any, labels: Any) -> float:
    """Binary F1 with class 1 as the positive class (MRPC, QQP)."""
    from sklearn import metrics as skm

    return float(skm.f1_score(to_numpy(labels), to_numpy(preds), pos_label=1, average="binary"))


def matthews_corrcoef(preds: Any, labels: Any) -> float:
    """Matthews correlation coefficient (CoLA)."""
    from sklearn import metrics as skm

    return float(skm.matthews_corrcoef(to_numpy(labels), to_numpy(preds)))


def pearson(preds: Any, labels: Any) -> float:
    """Pearson correlation (STS-B); NaN when either side is constant."""
    from scipy import stats

    return float(stats.pearsonr(to_numpy(preds).astype(np.float64), to_numpy(labels).astype(np.float64))[0])


def spearman(preds: Any, labels: Any) -> float:
    """Spearman rank correlation (STS-B); NaN when either side is constant."""
    from scipy import stats

    return float(stats.spearmanr(to_numpy(preds), to_numpy(labels))[0])


METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}
