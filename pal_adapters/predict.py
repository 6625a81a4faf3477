"""Predictions for raw input rows: which tasks can read them, one forward per group, each kind's answer.

Shared by ``pal-adapters predict``, the Python API and the server, so that each gives the same
answer for the same task and input. An input row is ``{"text": ...}``, ``{"text": ..., "text_b":
...}`` or ``{"question": ..., "context": ...}`` (``tasks/rows.py``); each task's kind says whether
it can read a row (``TaskKind.input_problem``), encodes the rows itself with the task's own
``max_length`` and options, and describes its logits (``TaskKind.describe``):

- classification: ``{"label": name (or class id), "probabilities": {name (or id): p}}`` (softmax);
- multi_label: ``{"labels": [names with p > 0.5], "probabilities": {...}}`` (sigmoid per label);
- regression and ranking: ``{"score": float}``;
- token classification: the entities as character spans of the text; extractive QA: the answer
  text and its character span in the context (see those kinds' modules).

Tasks whose encoded inputs are equal run together through ``predict_all``, which runs the layers
below the lowest adapted depth once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .model import MultiTaskModel
from .tasks.rows import row_problem

Logits = Callable[[MultiTaskModel, list[str], dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def task_logits(model: MultiTaskModel, tasks: list[str], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{task: logits}`` for one encoded batch: one forward for one task, ``predict_all`` for several."""
    with torch.no_grad():
        if len(tasks) == 1:
            return {tasks[0]: model(**inputs, task=tasks[0]).logits}
        return model.predict_all(tasks, **inputs)


def check_rows(rows: Sequence[Any]) -> None:
    """Raise ``ValueError`` naming the first row no task can read (blank text, a non-string, ...)."""
    if not rows:
        raise ValueError("no inputs given: pass at least one input row")
    for i, row in enumerate(rows):
        problem = row_problem(row)
        if problem:
            raise ValueError(f"input {i}: {problem}")


def readable_tasks(model: MultiTaskModel, rows: Sequence[Mapping[str, Any]],
                   tasks: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """The tasks that read ``rows``, and ``{task: reason}`` for those left out.

    ``tasks=None`` means every task of the model, and leaves out (with the reason) each task that
    cannot read every row; a named task that cannot is an error that gives the reason. No task at
    all is an error too: an input is answered or refused, never met with silence.
    """
    named = tasks is not None
    tasks = list(tasks) if named else model.task_names
    for t in tasks:
        model.check_task(t)
    ok, skipped = [], {}
    for t in tasks:
        problem = next((p for p in map(model.heads[t].kind.input_problem, rows) if p), None)
        if problem and named:
            raise ValueError(f"task {t!r} cannot read these inputs: {problem}")
        if problem:
            skipped[t] = problem
        else:
            ok.append(t)
    if not ok:
        reasons = "; ".join(f"{t}: {why}" for t, why in skipped.items())
        raise ValueError(f"no task of this model can read these inputs ({reasons})")
    return ok, skipped


def predict_rows(model: MultiTaskModel, tokenizer: Any, rows: Sequence[Mapping[str, Any]],
                 tasks: Sequence[str] | None = None, max_length: int | None = None,
                 logits_fn: Logits = task_logits) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Each task's kind of prediction for every row: ``([{task: prediction} per row], skipped)``.

    Args:
        rows: input rows (see the module docstring); a row no task can read raises.
        tasks: the tasks to answer; ``None`` = every task that can read the rows (the others are
            returned in ``skipped``, task -> reason).
        max_length: truncate inputs to this many tokens instead of each task's own ``max_length``.
        logits_fn: ``(model, tasks, inputs) -> {task: logits}``; another backend (ONNX Runtime) may
            compute the logits, the kinds still encode and describe.
    """
    rows = list(rows)
    check_rows(rows)
    tasks, skipped = readable_tasks(model, rows, tasks)
    device = next(model.parameters()).device
    groups: list[tuple[dict[str, torch.Tensor], list[str]]] = []
    contexts = {}
    for t in tasks:
        limit = max_length if max_length is not None else model.tasks[t].max_length
        inputs, contexts[t] = model.heads[t].kind.encode_for_predict(rows, tokenizer, limit)
        same = next((g for g in groups if _same_inputs(g[0], inputs)), None)
        if same:
            same[1].append(t)
        else:
            groups.append((inputs, [t]))
    out: list[dict[str, Any]] = [{} for _ in rows]
    for inputs, group in groups:
        logits = logits_fn(model, group, {k: v.to(device) for k, v in inputs.items()})
        for t in group:
            for row, prediction in zip(out, model.heads[t].kind.describe(logits[t].cpu(), contexts[t]), strict=True):
                row[t] = prediction
    return out, skipped


def _same_inputs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
