"""Dev-set evaluation: each task's kind turns its head outputs into metric inputs.

For every dev batch the kind keeps what it needs (``TaskKind.batch_outputs``: by default the
logits and labels; extractive QA also the windows' offsets and example ids), and once all
batches are in, ``TaskKind.finish`` builds ``(predictions, references)`` over the whole dev set
(classification: class ids; ranking: per-query scores; NER: tag sequences; QA: answer texts
after n-best post-processing over every window of an example), which ``TaskKind.score`` feeds
to the kind's metrics. Metrics are computed once over the whole dev set, never averaged over
batches (GUIDE §1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..model import BATCH_KEYS, inference
from ..tasks import TaskKind

Results = Mapping[str, Mapping[str, float]]


def predict_task(model: nn.Module, task: str, batches: Iterable[Mapping[str, Any]],
                 device: torch.device | str | None = None, kind: TaskKind | None = None) -> tuple[Any, Any]:
    """Run ``model`` on ``task``'s dev batches in eval mode; ``(predictions, references)`` over all.

    Each batch holds ``input_ids``/``attention_mask`` (optionally ``token_type_ids``), ``labels``
    and the kind's extra columns. ``kind`` defaults to the task head's (give the task definition's
    to use its options). ``device`` defaults to the model's. The model's mode is restored after.
    """
    model.check_task(task)
    kind = kind or model.heads[task].kind
    device = torch.device(device) if device is not None else next(model.parameters()).device
    outputs = []
    with inference(model):
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k in BATCH_KEYS}
            logits = model(**inputs, task=task).logits
            outputs.append(kind.batch_outputs(logits, batch))
    if not outputs:
        raise ValueError(f"task {task!r}: no dev batches to evaluate")
    return kind.finish(outputs)


def evaluate(model: nn.Module, dev: Mapping[str, Iterable[Mapping[str, Tensor]]],
             metrics: Mapping[str, Sequence[str]], device: torch.device | str | None = None,
             kinds: Mapping[str, TaskKind] | None = None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` over each task's whole dev set (``dev``: task -> batches).

    ``kinds``: task -> kind with the task definition's options (default: each head's kind).
    """
    missing = [task for task in dev if task not in metrics]
    if missing:
        raise ValueError(f"no metrics given for dev tasks {missing}; metrics cover {sorted(metrics)}")
    results = {}
    for task, batches in dev.items():
        model.check_task(task)
        kind = (kinds or {}).get(task) or model.heads[task].kind
        predictions, references = predict_task(model, task, batches, device, kind)
        results[task] = kind.score(metrics[task], predictions, references)
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
