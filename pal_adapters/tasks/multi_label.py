"""Multi-label classification: independent sigmoid per label over the pooled vector, BCE."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from . import metrics as m
from .base import TaskKind
from .classification import class_id_converter
from .labels import require_shape, require_tensor


class MultiLabelKind(TaskKind):
    """``(n, C)`` logits; labels ``(n, C)`` 0/1 (multi-hot). Metric ``accuracy`` = exact match."""

    name = "multi_label"
    metrics = MappingProxyType({"accuracy": m.accuracy})
    default_metrics = ("accuracy",)

    def loss(self, logits: Tensor, labels: Any) -> Tensor:
        labels = require_tensor(labels, self.name)
        require_shape(labels, tuple(logits.shape), self.name, "one 0/1 per row and label")
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def label_converter(self, label_map: Mapping[str, int]) -> Callable[[Any], list[float]]:
        """``"a,b"`` or ``["a", "b"]`` (names or ids) -> a multi-hot float list of length C."""
        to_id, num_labels = class_id_converter(self.task.num_labels, label_map), self.task.num_labels

        def convert(value: Any) -> list[float]:
            names = value.split(",") if isinstance(value, str) else value
            hot = [0.0] * num_labels
            for name in names:
                hot[to_id(name.strip() if isinstance(name, str) else name)] = 1.0
            return hot

        return convert

    def finish(self, outputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(N, C)`` 0/1 predictions (logit > 0, i.e. sigmoid > 0.5) and gold as ints."""
        logits = np.concatenate([lg.numpy() for lg, _ in outputs])
        labels = np.concatenate([y.float().round().long().numpy() for _, y in outputs])
        return (logits > 0).astype(np.int64), labels

    def describe(self, logits: Tensor, context: Any) -> list[dict[str, Any]]:
        names = list(self.task.labels) if self.task.labels else list(range(self.task.num_labels))
        out = []
        for probs in logits.detach().float().cpu().sigmoid():
            out.append({"labels": [n for n, p in zip(names, probs.tolist(), strict=True) if p > 0.5],
                        "probabilities": dict(zip(map(str, names), probs.tolist(), strict=True))})
        return out
