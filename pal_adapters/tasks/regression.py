"""Regression (STS-B similarity scores): one output over the pooled vector, MSE."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import metrics as m
from .base import TaskKind
from .labels import require_tensor


class RegressionKind(TaskKind):
    """``(n,)`` predictions; labels ``(n,)`` floats. Labels of shape ``(n, 1)`` are accepted and
    flattened (the common HF layout); any other shape is an error naming it, never a broadcast."""

    name = "regression"
    fixed_num_labels = 1
    uses_label_names = False
    metrics = MappingProxyType({"pearson": m.pearson, "spearman": m.spearman})
    default_metrics = ("pearson", "spearman")
    distillable = True

    def shape_logits(self, logits: Tensor) -> Tensor:
        return logits.squeeze(-1)  # (n, 1) -> (n,)

    def loss(self, logits: Tensor, labels: Any) -> Tensor:
        return F.mse_loss(logits.float(), self.checked_labels(logits, labels))

    def checked_labels(self, logits: Tensor, labels: Any) -> Tensor:
        """``labels`` as float ``(n,)`` matching ``logits`` ``(n,)``; ``(n, 1)`` is flattened."""
        labels = require_tensor(labels, self.name)
        n = logits.shape[0]
        if labels.dim() == 2 and tuple(labels.shape) == (n, 1):
            labels = labels[:, 0]
        if tuple(labels.shape) != (n,):
            raise ValueError(f"{self.name} labels have shape {tuple(labels.shape)}; expected ({n},) or ({n}, 1), "
                             f"one score per row (a mismatched shape would broadcast to a wrong loss)")
        return labels.float()

    def init_head(self, out: nn.Linear, labels: Sequence[Any]) -> None:
        """Bias = the mean training label. With a zero bias the first few hundred AdamW steps (each
        moves the bias by about the learning rate) go to reaching the labels' offset (STS-B: 2.7),
        and the weights chase that offset instead of the ranking the metric scores."""
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        y = y[np.isfinite(y)]
        if y.size:
            with torch.no_grad():
                out.bias.fill_(float(y.mean()))

    def label_converter(self, label_map: Mapping[str, int]) -> Callable[[Any], float]:
        return to_float

    def finish(self, outputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([lg.reshape(-1).numpy() for lg, _ in outputs]),
                np.concatenate([y.float().reshape(-1).numpy() for _, y in outputs]))

    def describe(self, logits: Tensor, context: Any) -> list[dict[str, Any]]:
        return [{"score": float(x)} for x in logits.detach().float().cpu().reshape(-1)]

    @property
    def target_width(self) -> None:
        return None

    def teacher_targets(self, logits: Tensor) -> Tensor:
        return logits.float().reshape(-1)

    def distillation_loss(self, student_logits: Tensor, targets: Tensor) -> Tensor:
        """MSE to the teachers' mean prediction; ``(n,)`` or ``(n, 1)`` both."""
        student, targets = student_logits.reshape(-1), targets.reshape(-1)
        if student.shape != targets.shape:
            raise ValueError(f"regression student {tuple(student_logits.shape)} and targets "
                             f"{tuple(targets.shape)} hold different numbers of predictions")
        return F.mse_loss(student.float(), targets.float())


def to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"label {value!r} is not a number (regression labels are floats)") from None
