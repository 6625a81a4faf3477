"""Dev-set evaluation: predictions per task type, metrics over the whole dev set, checkpoint score.

``predict_task`` turns a task's head outputs into ``(predictions, labels)`` arrays that the GLUE
metrics of ``metrics.py`` read directly:

| type                 | logits per batch | predictions                     | labels                          |
|----------------------|------------------|---------------------------------|---------------------------------|
| classification       | (n, C)           | (n,) argmax class ids           | (n,) class ids                  |
| regression           | (n,)             | (n,) float scores               | (n,) floats                     |
| multi_label          | (n, C)           | (n, C) 0/1, sigmoid > 0.5       | (n, C) 0/1                      |
| token_classification | (n, T, C)        | (k,) argmax over kept tokens    | (k,) tokens whose label != -100 |
| ranking              | (n,) scores      | (q,) argmax within each group   | (q,) index of the positive      |
| extractive_qa        | (n, T, 2)        | (n,) 1 if (start, end) both hit | (n,) all ones                   |

so ``accuracy`` is token accuracy, ranking precision@1 and QA exact match respectively.
Metrics are computed once over the concatenated dev set, never averaged over batches (GUIDE §1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import TaskConfig
from ..model import BATCH_KEYS, inference
from .metrics import compute_metrics, logits_to_predictions

Results = Mapping[str, Mapping[str, float]]
Arrays = tuple[np.ndarray, np.ndarray]


def predict_task(model: nn.Module, task: str, batches: Iterable[Mapping[str, Tensor]],
                 device: torch.device | str | None = None) -> Arrays:
    """Run ``model`` on ``task``'s batches in eval mode; ``(predictions, labels)`` over all of them.

    Each batch holds ``input_ids``/``attention_mask`` (optionally ``token_type_ids``) and ``labels``.
    ``device`` defaults to the model's. The model's train/eval mode is restored afterwards.
    """
    model.check_task(task)
    config: TaskConfig = model.tasks[task]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    preds, labels = [], []
    with inference(model):
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k in BATCH_KEYS}
            if "labels" not in batch:
                raise ValueError(f"task {task!r}: a dev batch has no 'labels' (keys: {sorted(batch)})")
            logits = model(**inputs, task=task).logits
            p, y = batch_predictions(config, logits, batch["labels"], inputs.get("attention_mask"))
            preds.append(p)
            labels.append(y)
    if not preds:
        raise ValueError(f"task {task!r}: no dev batches to evaluate")
    return np.concatenate(preds), np.concatenate(labels)


def batch_predictions(config: TaskConfig, logits: Tensor, labels: Tensor,
                      attention_mask: Tensor | None = None) -> Arrays:
    """One batch's ``(predictions, labels)`` as numpy arrays, by task type (see the module table)."""
    return _PREDICTORS[config.type](config, logits.detach().float().cpu(), labels.detach().cpu(),
                                    None if attention_mask is None else attention_mask.detach().cpu())


def _classification(config: TaskConfig, logits: Tensor, labels: Tensor, mask: Tensor | None) -> Arrays:
    return logits_to_predictions(logits, "classification"), labels.long().numpy()


def _regression(config: TaskConfig, logits: Tensor, labels: Tensor, mask: Tensor | None) -> Arrays:
    return logits_to_predictions(logits, "regression"), labels.float().numpy()


def _multi_label(config: TaskConfig, logits: Tensor, labels: Tensor, mask: Tensor | None) -> Arrays:
    # Float 0./1. labels become ints so sklearn sees the same multilabel-indicator type on both sides.
    return logits_to_predictions(logits, "multi_label"), labels.round().long().numpy()


def _token_classification(config: TaskConfig, logits: Tensor, labels: Tensor, mask: Tensor | None) -> Arrays:
    """``(n, T, C)`` logits, ``(n, T)`` labels -> the kept tokens, flattened per batch (T varies)."""
    keep = labels != -100
    return logits.argmax(-1)[keep].numpy(), labels[keep].long().numpy()


def _ranking(config: TaskConfig, logits: Tensor, labels: Tensor, mask: Tensor | None) -> Arrays:
    """``(q·g,)`` scores and 0/1 labels -> ``(q,)`` chosen and positive candidate indices."""
    group = config.num_candidates
    if logits.numel() % group:
        raise ValueError(f"ranking batch has {logits.numel()} rows, not a multiple of num_candidates={group}; "
                         "batches must hold whole query groups")
    return logits.view(-1, group).argmax(-1).numpy(), labels.view(-1, group).argmax(-1).numpy()


def _extractive_qa(config: TaskConfig, logits: Tensor, labels: Tensor, mask: Tensor | None) -> Arrays:
    """``(n, T, 2)`` logits, ``(n, 2)`` gold (start, end) -> ``(n,)`` exact-match 0/1 and ones.

    Padding positions (``attention_mask == 0``) cannot be predicted: an answer never lies there.
    """
    if mask is not None:
        logits = logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
    start, end = logits.argmax(1).unbind(-1)  # (n,) each
    labels = labels.long()
    hit = (start == labels[:, 0]) & (end == labels[:, 1])
    return hit.long().numpy(), np.ones(len(hit), dtype=np.int64)


_PREDICTORS: dict[str, Callable[[TaskConfig, Tensor, Tensor, Tensor | None], Arrays]] = {
    "classification": _classification,
    "regression": _regression,
    "multi_label": _multi_label,
    "token_classification": _token_classification,
    "ranking": _ranking,
    "extractive_qa": _extractive_qa,
}


def evaluate(model: nn.Module, dev: Mapping[str, Iterable[Mapping[str, Tensor]]],
             metrics: Mapping[str, Sequence[str]],
             device: torch.device | str | None = None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` over each task's whole dev set (``dev``: task -> batches)."""
    missing = [task for task in dev if task not in metrics]
    if missing:
        raise ValueError(f"no metrics given for dev tasks {missing}; metrics cover {sorted(metrics)}")
    results = {}
    for task, batches in dev.items():
        preds, labels = predict_task(model, task, batches, device)
        results[task] = compute_metrics(metrics[task], preds, labels)
    return results


def combined_score(results: Results, select_by: str = "sum") -> float:
    """The checkpoint-selection score.

    ``"sum"``: the PALs rule, each task's mean metric summed over tasks. ``"<task>.<metric>"``
    (e.g. ``"mrpc.f1"``): that one value. A NaN metric (a correlation over constant predictions)
    counts as 0, so one degenerate task does not make every checkpoint incomparable.
    """
    if not results:
        raise ValueError("no evaluation results to score")
    if select_by == "sum":
        return sum(float(np.mean([_finite(v) for v in m.values()])) for m in results.values() if m)
    task, _, metric = select_by.rpartition(".")
    if metric not in results.get(task, {}):
        valid = ", ".join(repr(f"{t}.{name}") for t, m in results.items() for name in m)
        raise ValueError(f"select_by={select_by!r} is not valid; choose 'sum' or one of {valid}")
    return _finite(results[task][metric])


def _finite(value: Any) -> float:
    value = float(value)
    return 0.0 if math.isnan(value) else value
