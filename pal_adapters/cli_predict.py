"""``pal-adapters predict``: texts in, one JSON line of per-task predictions out.

Each output line is the input object plus ``"predictions": {task: prediction}`` where a prediction is

- classification: ``{"label": name (or class id), "probabilities": {name (or id): p}}`` (softmax);
- multi_label: ``{"labels": [names with p > 0.5], "probabilities": {...}}`` (sigmoid per label);
- regression: ``{"score": float}``;
- other types (token classification, ranking, QA): ``{"logits": nested list}``.

One task runs through ``model(task=...)``; several through ``predict_all``, which runs the layers
below the lowest adapted depth once for all of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import TaskConfig
from .model import MultiTaskModel
from .training.report import to_jsonable


def read_inputs(texts: Sequence[str], input_file: str | None) -> list[dict[str, Any]]:
    """``TEXT [TEXT_B]`` from the command line, or the objects of a JSONL file (``text``, ``text_b``)."""
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
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ValueError(f"{input_file}, line {number}: expected an object with a 'text' string, got {line!r}")
        rows.append(row)
    return rows


def _runs(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive batches of at most ``size`` rows that are all single texts or all pairs."""
    batch: list[dict[str, Any]] = []
    for row in rows:
        if batch and (len(batch) == size or ("text_b" in row) != ("text_b" in batch[0])):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def describe(task: TaskConfig, logits: torch.Tensor) -> dict[str, Any]:
    """One example's prediction from its logits (``(C,)``, ``()`` for regression, more for others)."""
    names = list(task.labels) if task.labels else list(range(task.num_labels))
    if task.type == "classification":
        probs = logits.float().softmax(-1)
        return {"label": names[int(probs.argmax())], "probabilities": dict(zip(map(str, names), probs.tolist(),
                                                                               strict=True))}
    if task.type == "multi_label":
        probs = logits.float().sigmoid()
        return {"labels": [n for n, p in zip(names, probs.tolist(), strict=True) if p > 0.5],
                "probabilities": dict(zip(map(str, names), probs.tolist(), strict=True))}
    if task.type == "regression":
        return {"score": float(logits.reshape(()))}
    return {"logits": logits.float().tolist()}


def task_logits(model: MultiTaskModel, tasks: list[str], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if len(tasks) == 1:
        with torch.no_grad():
            return {tasks[0]: model(**inputs, task=tasks[0]).logits}
    return model.predict_all(tasks, **inputs)


def predict_lines(model: MultiTaskModel, tokenizer: Any, rows: list[dict[str, Any]], tasks: list[str] | None,
                  batch_size: int, max_length: int) -> Iterator[str]:
    """One JSON line per row, in order."""
    tasks = tasks or model.task_names
    for t in tasks:
        model.check_task(t)
    device = next(model.parameters()).device
    for batch in _runs(rows, batch_size):
        texts = [[r["text"] for r in batch]] + ([[r["text_b"] for r in batch]] if "text_b" in batch[0] else [])
        enc = tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = task_logits(model, tasks, inputs)
        for i, row in enumerate(batch):
            predictions = {t: describe(model.tasks[t], logits[t][i].cpu()) for t in tasks}
            yield json.dumps(to_jsonable({**row, "predictions": predictions}))
