"""Relevance ranking (MT-DNN's QNLI-as-ranking): one score per (query, candidate) row, listwise
softmax over a query's ``num_candidates`` candidates, which sit in consecutive rows.

Data: rows ``text_a`` = query, ``text_b`` = candidate, ``label`` 1 for the relevant candidate and
0 otherwise. ``arrange`` groups the rows of one query (same ``text_a``) together, in the order of
their first appearance, and checks each group has ``num_candidates`` rows with exactly one 1.
Metrics over queries: ``accuracy`` (precision@1: the positive scores highest) and ``mrr`` (mean
reciprocal rank of the positive; ties are counted in its favour).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from .base import TaskKind
from .labels import require_shape, require_tensor
from .metrics import to_numpy


def precision_at_1(scores: Any, positive: Any) -> float:
    """``(q, g)`` scores, ``(q,)`` index of each query's positive -> fraction ranked first."""
    scores, positive = to_numpy(scores), to_numpy(positive)
    return float(np.mean(scores.argmax(-1) == positive))


def mean_reciprocal_rank(scores: Any, positive: Any) -> float:
    """Mean over queries of 1 / rank of the positive (rank 1 + candidates scored strictly higher)."""
    scores, positive = to_numpy(scores), to_numpy(positive)
    pos = scores[np.arange(len(scores)), positive]
    ranks = 1 + (scores > pos[:, None]).sum(-1)
    return float(np.mean(1.0 / ranks))


class RankingKind(TaskKind):
    """``(n,)`` scores, ``n`` a multiple of ``num_candidates``; labels ``(n,)`` 0/1, one 1 per group."""

    name = "ranking"
    fixed_num_labels = 1
    uses_label_names = False
    metrics = MappingProxyType({"accuracy": precision_at_1, "mrr": mean_reciprocal_rank})
    default_metrics = ("accuracy", "mrr")

    @classmethod
    def check_config(cls, task: Any) -> None:
        if task.num_candidates is None or isinstance(task.num_candidates, bool) or task.num_candidates < 2:
            raise ValueError(f"num_candidates={task.num_candidates!r}: a ranking task needs num_candidates >= 2 "
                             "(the candidates of one query)")

    @property
    def group_size(self) -> int:
        return self.task.num_candidates

    def shape_logits(self, logits: Tensor) -> Tensor:
        return logits.squeeze(-1)

    def loss(self, logits: Tensor, labels: Any) -> Tensor:
        """``-log softmax(scores of one query's candidates)[positive]``, averaged over queries."""
        labels = require_tensor(labels, self.name)
        require_shape(labels, logits.shape[:1], self.name, "one 0/1 per candidate row")
        groups = self._groups(labels)
        positives = (groups == 1).sum(-1)
        bad = ((positives != 1) | ((groups != 0) & (groups != 1)).any(-1)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"ranking labels must mark exactly one positive (1, the rest 0) per group of "
                             f"{self.group_size} rows; groups {bad[:5]} have {positives[bad[:5]].tolist()} positives")
        return F.cross_entropy(logits.float().view(-1, self.group_size), groups.argmax(-1))

    def _groups(self, x: Tensor) -> Tensor:
        if x.numel() % self.group_size:
            raise ValueError(f"ranking batch has {x.numel()} rows, not a multiple of num_candidates="
                             f"{self.group_size}; batches must hold whole query groups")
        return x.reshape(-1, self.group_size)

    def label_converter(self, label_map: Mapping[str, int]) -> Callable[[Any], int]:
        return relevance

    def arrange(self, ds: Any) -> Any:
        """Rows of one query (same ``text_a``) made consecutive; each group checked."""
        return ds.select(group_rows(ds["text_a"], ds["label"], self.group_size))

    def finish(self, outputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(q, g)`` scores and ``(q,)`` index of each query's positive."""
        scores = np.concatenate([self._groups(lg).numpy() for lg, _ in outputs])
        positive = np.concatenate([self._groups(y).argmax(-1).numpy() for _, y in outputs])
        return scores, positive

    def describe(self, logits: Tensor, context: Any) -> list[dict[str, Any]]:
        return [{"score": float(x)} for x in logits.detach().float().cpu().reshape(-1)]


def relevance(value: Any) -> int:
    """A raw relevance label -> 0 or 1 (``0``/``1``, ``"0"``/``"1"``, ``true``/``false``)."""
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true"):
        return 1
    if text in ("0", "0.0", "false"):
        return 0
    raise ValueError(f"label {value!r} is not a relevance label; expected 1 (relevant) or 0")


def group_rows(queries: list[Any], labels: list[int], size: int) -> list[int]:
    """Row indices with each query's rows consecutive (queries in order of first appearance).
    Raises naming the first query whose group has not ``size`` rows with exactly one positive."""
    groups: dict[Any, list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(q, []).append(i)
    for q, rows in groups.items():
        positives = sum(labels[i] for i in rows)
        if len(rows) != size or positives != 1:
            raise ValueError(f"query {str(q)[:80]!r} has {len(rows)} candidate rows with {positives} positives; "
                             f"each query needs num_candidates={size} rows with exactly one label 1")
    return [i for rows in groups.values() for i in rows]
