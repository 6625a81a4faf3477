"""``/predict_all``: every task that can read an input, through the same ``predict_rows`` as
``pal-adapters predict`` (which runs ``predict_all``: layers below the first adapted one once).

Runs on the model's worker, alone between batches. Rows are split into runs with the same input
fields (as ``predict`` does), so each input's ``skipped`` lists the tasks that could not read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..predict import predict_rows
from ..tasks.rows import runs
from .errors import ServeError
from .payload import Row


def predict_every_task(model: Any, tokenizer: Any,
                       rows: Sequence[Row]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """``([{task: prediction}], [{task: why skipped}])``, one entry per row, in order; 422 naming
    the first input no task can read. Each task encodes with its own ``max_length``."""
    predictions: list[dict[str, Any]] = [{} for _ in rows]
    skipped: list[dict[str, str]] = [{} for _ in rows]
    for positions in runs(rows):
        chunk = [rows[i] for i in positions]
        try:
            out, why = predict_rows(model, tokenizer, chunk, None)
        except ValueError as err:  # no task reads these rows
            raise ServeError(422, f"inputs[{positions[0]}]: {err}", field=f"inputs[{positions[0]}]") from None
        for i, row_predictions in zip(positions, out, strict=True):
            predictions[i], skipped[i] = row_predictions, dict(why)
    return predictions, skipped


def check_lengths(rows: Sequence[Row], catalog: Mapping[str, Any], tokenizer: Any,
                  limits: Mapping[str, int]) -> None:
    """413 naming the first text input longer than the limit of a task that would read it.

    (Extractive QA has no such limit: long contexts become windows.)"""
    for i, row in enumerate(rows):
        if "text" not in row:
            continue
        readers = [t for t, entry in catalog.items() if entry.kind.input_problem(row) is None]
        if not readers:
            continue
        texts = [row["text"]] + ([row["text_b"]] if "text_b" in row else [])
        tokens = len(tokenizer(*texts)["input_ids"])
        tightest = min(readers, key=lambda t: limits[t])
        if tokens > limits[tightest]:
            raise ServeError(413, f"inputs[{i}]: {tokens} tokens, over the limit of {limits[tightest]} of task "
                             f"{tightest!r}; send a shorter text or \"truncate\": true", field=f"inputs[{i}]")
