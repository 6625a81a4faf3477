"""``pal-adapters predict``: inputs in, one JSON line of per-task predictions out.

Each output line is the input object plus ``"predictions": {task: prediction}``; each task's kind
says what a prediction is (``TaskKind.describe``):

- classification: ``{"label": name (or class id), "probabilities": {name (or id): p}}`` (softmax);
- multi_label: ``{"labels": [names with p > 0.5], "probabilities": {...}}`` (sigmoid per label);
- regression and ranking: ``{"score": float}``;
- token classification: the entities as character spans of the text; extractive QA: the answer
  text and its character span in the context (see those kinds' modules).

An input row is ``{"text": ..., "text_b": ...}`` (QA: ``{"question": ..., "context": ...}``). Each
kind encodes the rows itself; tasks whose encoded inputs are equal run together through
``predict_all``, which runs the layers below the lowest adapted depth once for all of them. When
no task is named, tasks whose kind cannot read the rows (QA without a question, ...) are left out
and listed under ``"skipped"`` with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .model import MultiTaskModel
from .training.report import to_jsonable

INPUT_KEYS = ("text", "text_b", "question", "context")


def read_inputs(texts: Sequence[str], input_file: str | None) -> list[dict[str, Any]]:
    """``TEXT [TEXT_B]`` from the command line, or the objects of a JSONL file (``text`` [+ ``text_b``],
    or ``question`` + ``context``)."""
    if bool(texts) == bool(input_file):
        raise ValueError("give either TEXT [TEXT_B] or --input FILE.jsonl (one of them)")
    if texts:
        if len(texts) > 2:
            raise ValueError(f"got {len(texts)} texts {list(texts)}; give TEXT or TEXT TEXT_B (quote each text)")
        return [dict(zip(("text", "text_b"), texts, strict=False))]
    path = Path(input_file)
    if not path.is_file():
        raise FileNotFoundError(f"input file {input_file!r} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{input_file}, line {number}: invalid JSON ({err.msg})") from None
        readable = isinstance(row, dict) and (isinstance(row.get("text"), str) or (
            isinstance(row.get("question"), str) and isinstance(row.get("context"), str)))
        if not readable:
            raise ValueError(f"{input_file}, line {number}: expected an object with a 'text' string (or "
                             f"'question' and 'context' strings), got {line!r}")
        rows.append(row)
    return rows


def _runs(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive batches of at most ``size`` rows that all hold the same input fields."""
    batch: list[dict[str, Any]] = []
    for row in rows:
        if batch and (len(batch) == size or _fields(row) != _fields(batch[0])):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def _fields(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(k for k in INPUT_KEYS if k in row)


def task_logits(model: MultiTaskModel, tasks: list[str], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if len(tasks) == 1:
        with torch.no_grad():
            return {tasks[0]: model(**inputs, task=tasks[0]).logits}
    return model.predict_all(tasks, **inputs)


def predict_rows(model: MultiTaskModel, tokenizer: Any, rows: list[dict[str, Any]], tasks: list[str] | None = None,
                 max_length: int = 128) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Each task's kind of prediction for every row: ``([{task: prediction} per row], skipped)``.

    ``tasks=None`` means every task that can read the rows; the others are returned in ``skipped``
    (task -> reason). A named task that cannot read the rows raises its kind's error.
    """
    named = tasks is not None
    tasks = list(tasks) if named else model.task_names
    for t in tasks:
        model.check_task(t)
    device = next(model.parameters()).device
    groups: list[tuple[dict[str, torch.Tensor], list[str]]] = []
    contexts, skipped = {}, {}
    for t in tasks:
        try:
            inputs, contexts[t] = model.heads[t].kind.encode_for_predict(rows, tokenizer, max_length)
        except (KeyError, ValueError) as err:
            if named:
                raise ValueError(f"task {t!r} cannot read these inputs: {err}") from err
            skipped[t] = str(err)
            continue
        same = next((g for g in groups if _same_inputs(g[0], inputs)), None)
        if same:
            same[1].append(t)
        else:
            groups.append((inputs, [t]))
    out: list[dict[str, Any]] = [{} for _ in rows]
    for inputs, group in groups:
        logits = task_logits(model, group, {k: v.to(device) for k, v in inputs.items()})
        for t in group:
            for row, prediction in zip(out, model.heads[t].kind.describe(logits[t].cpu(), contexts[t]), strict=True):
                row[t] = prediction
    return out, skipped


def _same_inputs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def predict_lines(model: MultiTaskModel, tokenizer: Any, rows: list[dict[str, Any]], tasks: list[str] | None,
                  batch_size: int, max_length: int) -> Iterator[str]:
    """One JSON line per row, in order."""
    for batch in _runs(rows, batch_size):
        predictions, skipped = predict_rows(model, tokenizer, batch, tasks, max_length)
        for row, prediction in zip(batch, predictions, strict=True):
            extra = {"skipped": skipped} if skipped else {}
            yield json.dumps(to_jsonable({**row, "predictions": prediction, **extra}))
