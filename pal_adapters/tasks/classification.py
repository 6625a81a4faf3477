"""Single-sentence or sentence-pair classification: cross-entropy over the pooled vector."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from . import metrics as m
from .base import TaskKind
from .labels import IGNORE_INDEX, require_integer, require_shape, require_tensor, zero_loss


class ClassificationKind(TaskKind):
    """``(n, C)`` logits; labels ``(n,)`` integer class ids, ``IGNORE_INDEX`` rows skipped."""

    name = "classification"
    metrics = MappingProxyType({"accuracy": m.accuracy, "f1": m.f1, "mcc": m.matthews_corrcoef})
    default_metrics = ("accuracy",)
    distillable = True

    def loss(self, logits: Tensor, labels: Any) -> Tensor:
        labels = require_tensor(labels, self.name)
        require_integer(labels, self.name)
        require_shape(labels, logits.shape[:1], self.name, "one class id per row")
        labels = labels.long()
        bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= logits.shape[-1]))]
        if bad.numel():
            raise ValueError(f"{self.name} labels hold {sorted(set(bad.tolist()))[:5]}; expected class ids in "
                             f"0..{logits.shape[-1] - 1} (or {IGNORE_INDEX} to skip a row)")
        if (labels == IGNORE_INDEX).all():
            return zero_loss(logits)
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)

    def label_converter(self, label_map: Mapping[str, int]) -> Callable[[Any], int]:
        return class_id_converter(self.task.num_labels, label_map)

    def finish(self, outputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(N,)`` argmax class ids and ``(N,)`` gold ids over the rows whose label is kept."""
        logits = np.concatenate([lg.numpy() for lg, _ in outputs])
        labels = np.concatenate([y.long().numpy() for _, y in outputs])
        keep = labels != IGNORE_INDEX
        return logits.argmax(-1)[keep], labels[keep]

    def describe(self, logits: Tensor, context: Any) -> list[dict[str, Any]]:
        names = [str(n) for n in (self.task.labels or range(self.task.num_labels))]
        out = []
        for probs in logits.detach().float().cpu().softmax(-1):
            out.append({"label": _name(self.task, int(probs.argmax())),
                        "probabilities": dict(zip(names, probs.tolist(), strict=True))})
        return out

    def teacher_targets(self, logits: Tensor) -> Tensor:
        return logits.float().softmax(-1)

    def distillation_loss(self, student_logits: Tensor, targets: Tensor) -> Tensor:
        """Mean over rows of −Σ_c Q(c|x)·log P(c|x); shapes ``(n, C)`` both."""
        if student_logits.shape != targets.shape:
            raise ValueError(f"student logits {tuple(student_logits.shape)} and soft targets "
                             f"{tuple(targets.shape)} must have the same shape (n, C)")
        log_p = F.log_softmax(student_logits.float(), dim=-1)
        return -(targets.to(log_p.dtype) * log_p).sum(dim=-1).mean()


def _name(task: Any, index: int) -> Any:
    return task.labels[index] if task.labels else index


def class_id_converter(num_labels: int, label_map: Mapping[str, int]) -> Callable[[Any], int]:
    """Raw label -> class id: strings through ``label_map`` first, numeric strings and ints as ids."""
    label_map = dict(label_map)

    def convert(value: Any) -> int:
        if isinstance(value, str):
            if value in label_map:
                return label_map[value]
            if not value.strip().lstrip("-").isdigit():
                raise ValueError(f"label {value!r} is not in the label map; known labels: {sorted(label_map)}")
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < num_labels:
            raise ValueError(f"label {value!r} is not a class id in 0..{num_labels - 1} nor a known label "
                             f"{sorted(label_map)}")
        return int(value)

    return convert
